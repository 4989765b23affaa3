"""A character-level tokenizer for the tiny reasoning model, built with `tokenizers`.

Why characters: the task families are arithmetic, and a model that sees each digit as its own
token learns carry and comparison far faster than one whose BPE merges "123" into one symbol.
The four R1 tags are single tokens, so `</answer>` is one sampled id: the rollout engine stops on
it without decoding text, and the length penalty counts tags as one step of thought, not nine.

The vocabulary is fixed (no training), so two nodes that build it get identical ids, and the
result is an ordinary `PreTrainedTokenizerFast` saved with `save_pretrained`: every other part of
thinkmesh loads it with `AutoTokenizer.from_pretrained(dir)`, the code path a real model takes.
"""

from __future__ import annotations

from pathlib import Path

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
# Kept in decoded text (not "special" to HF), because rewards read them.
REASONING_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
CHARACTERS = "\n" + "".join(chr(code) for code in range(32, 127))
# Rounded up so the embedding matrix has a friendly shape; the tail ids are never produced.
VOCAB_SIZE = 128


def vocabulary() -> dict[str, int]:
    """Token -> id. Ids 0-3 are pad/bos/eos/unk, then the R1 tags, then newline and ASCII."""
    tokens = [*SPECIAL_TOKENS, *REASONING_TAGS, *CHARACTERS]
    vocab = {token: index for index, token in enumerate(tokens)}
    for filler in range(len(tokens), VOCAB_SIZE):
        vocab[f"<reserved_{filler}>"] = filler
    return vocab


def build_tokenizer():
    """The tokenizer as a `PreTrainedTokenizerFast`: prepends `<bos>`, pads on the left.

    Left padding is what batched generation needs (every prompt ends at the same column), and
    the verifier's scorer uses the same layout.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary()
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    core.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in REASONING_TAGS])
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B", special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(directory: str | Path) -> None:
    """Writes tokenizer.json and its config into `directory` (created if missing)."""
    build_tokenizer().save_pretrained(str(directory))
