"""Base models for the network end-to-end tests."""

from __future__ import annotations

from pathlib import Path


def boost_eos(directory: Path, factor: float = 12.0) -> None:
    """Scales the <eos> embedding so an untrained model's completions end at varied lengths.

    An untrained model scores 0 on every rule reward, so its honest gradient is exactly zero and
    the global model would never change. With varied lengths, DAPO-style length shaping gives
    groups unequal rewards and gradients are non-zero (and a gradient cheat can be told apart from
    honest work). Gently: a near-certain <eos> makes one-token samples with identical logprobs.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from thinkmesh.node.model.tokenizer import vocabulary

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight[vocabulary()["<eos>"]] *= factor
    model.save_pretrained(str(directory), safe_serialization=True)
