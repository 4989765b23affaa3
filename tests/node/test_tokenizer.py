from transformers import AutoTokenizer

from thinkmesh.node.model.tokenizer import REASONING_TAGS, VOCAB_SIZE, build_tokenizer, save_tokenizer, vocabulary

TEXT = "User: Solve 7*x+4=11 for x.\nAssistant:<think>7*x=7, x=1</think> <answer>1</answer>"


def test_saved_tokenizer_loads_through_autotokenizer_with_identical_ids(tmp_path):
    save_tokenizer(tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded(TEXT)["input_ids"] == build_tokenizer()(TEXT)["input_ids"]
    assert loaded.padding_side == "left"
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token) == ("<pad>", "<bos>", "<eos>")


def test_reasoning_tags_are_single_tokens_and_survive_decoding():
    tokenizer = build_tokenizer()
    for tag in REASONING_TAGS:
        assert tokenizer.encode(tag, add_special_tokens=False) == [vocabulary()[tag]]
    ids = tokenizer(TEXT)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == TEXT


def test_every_printable_character_has_its_own_id():
    tokenizer = build_tokenizer()
    text = "".join(chr(c) for c in range(32, 127)) + "\n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text) and len(set(ids)) == len(text)
    assert max(ids) < VOCAB_SIZE and tokenizer.unk_token_id not in ids
