"""The tiny base model the devnet and the tests train: a real Qwen2 built locally.

No hub download is possible anywhere thinkmesh runs its own checks, so the project makes its own
causal LM: the character tokenizer from `thinkmesh.node.model.tokenizer` and a standard transformers
Qwen2 architecture of about 1-2M parameters, saved with `save_pretrained` (safetensors). Every
other part of thinkmesh opens it with `AutoModelForCausalLM.from_pretrained(dir)`, the same path
a user's downloaded model takes, so nothing downstream knows it is tiny.

Weights are a pure function of (`TinyModelSpec`, seed): two machines that run
`thinkmesh model init` with the same arguments get byte-identical safetensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from thinkmesh.node.model.tokenizer import VOCAB_SIZE, save_tokenizer, vocabulary


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny Qwen2. Defaults: ~1.6M parameters, a CPU rollout round in seconds."""

    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    intermediate_size: int = 512
    max_positions: int = 1024
    rope_theta: float = 10000.0
    vocab_size: int | None = None  # None: the character tokenizer's; a real architecture's may be larger

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"expected hidden_size divisible by num_heads and num_heads by num_kv_heads, "
                f"got {self.hidden_size}/{self.num_heads}/{self.num_kv_heads}"
            )


# Real architectures, exact in shape (randomly initialised here: no hub access). Qwen2.5-0.5B's
# config.json: hidden 896, 24 layers, 14 query / 2 key-value heads, MLP 4864, vocabulary 151936,
# tied embeddings, rope theta 1e6, 32768 positions (494M parameters, 1.98 GB in fp32). The
# tokenizer written beside it is thinkmesh's character tokenizer, not Qwen's; a GPU user who wants
# the real model points `base_model` at a downloaded checkpoint instead (README).
ARCHITECTURES = {
    "tiny": TinyModelSpec(),
    "qwen2.5-0.5b": TinyModelSpec(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
                                  max_positions=32768, rope_theta=1_000_000.0, vocab_size=151936),
}


def qwen2_config(spec: TinyModelSpec):
    """The transformers `Qwen2Config` for `spec`, wired to the character tokenizer's ids."""
    from transformers import Qwen2Config

    vocab = vocabulary()
    return Qwen2Config(
        vocab_size=spec.vocab_size or VOCAB_SIZE,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_positions,
        rope_theta=spec.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<pad>"],
        torch_dtype="float32",
    )


def init_model_dir(directory: str | Path, spec: TinyModelSpec = TinyModelSpec(), seed: int = 0) -> int:
    """Writes a freshly initialised model + tokenizer to `directory`; returns the parameter count.

    Deterministic: the initialisation runs under a private `torch.Generator`-seeded fork of the
    global RNG, so the caller's random state is untouched.
    """
    import torch
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(qwen2_config(spec), attn_implementation="sdpa")
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.save_pretrained(str(directory), safe_serialization=True)
    save_tokenizer(directory)
    (directory / "thinkmesh_model.json").write_text(
        __import__("json").dumps({"spec": asdict(spec), "seed": seed}, indent=2, sort_keys=True) + "\n"
    )
    return sum(parameter.numel() for parameter in model.parameters())
