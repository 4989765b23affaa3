"""Gradient codec: round trips per compression mode, byte ratios, and strict decoding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import thinkmesh.protocol.rules.gradient_codec as codec
import thinkmesh.protocol.rules.gradient_quantization as quantization
from thinkmesh.protocol.rules.messages import GradientPayload, TensorBlob


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI box is 2 shared cores; threads only contend
    yield
    torch.set_num_threads(previous)


def gradients() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "layer.weight": torch.randn(256, 192, generator=generator) * 1e-3,
        "layer.bias": torch.randn(192, generator=generator) * 1e-3,  # small: meanstd16 under 8-bit modes
        "embed.weight": torch.randn(128, 192, generator=generator) * 1e-2,
    }


def shapes(grads):
    return {name: tuple(t.shape) for name, t in grads.items()}


@pytest.mark.parametrize(
    ("mode", "max_ratio", "max_rel_error"),
    [("none", 1.01, 0.0), ("fp16", 0.51, 1e-3), ("uniform8", 0.30, 0.05), ("blockwise8", 0.30, 0.05)],
)
def test_round_trip_ratio_and_error(mode, max_ratio, max_rel_error):
    grads = gradients()
    payload = codec.encode_gradient(grads, mode)
    assert payload.compression == mode
    assert payload.nbytes / codec.dense_nbytes(grads) <= max_ratio
    decoded = codec.decode_gradient(payload, shapes(grads))
    for name, tensor in grads.items():
        assert decoded[name].dtype == torch.float32
        error = ((decoded[name] - tensor).norm() / tensor.norm()).item()
        assert error <= max_rel_error, (name, error)
    if mode == "none":
        assert torch.equal(decoded["layer.bias"], grads["layer.bias"])


def test_encoding_is_deterministic():
    grads = gradients()
    assert codec.encode_gradient(grads, "uniform8") == codec.encode_gradient(grads, "uniform8")


def test_blockwise_codes_match_bitsandbytes_where_it_is_installed():
    """Ours is bitsandbytes' quantizer in plain torch: same absmax, codes off by one at most at a
    few bin edges."""
    functional = pytest.importorskip("bitsandbytes.functional")
    flat = torch.randn(3 * codec.BLOCKWISE_BLOCK + 100, generator=torch.Generator().manual_seed(3)) * 1e-3
    theirs, state = functional.quantize_blockwise(flat, blocksize=codec.BLOCKWISE_BLOCK, nested=False)
    ours, absmax = quantization._blockwise_quantize(flat)
    assert torch.equal(absmax, state.absmax)
    differ = ours.to(torch.int16) - theirs.to(torch.int16)
    assert differ.abs().max() <= 1 and (differ != 0).float().mean() < 0.01


def test_dynamic_codebook_is_bitsandbytes_dynamic_map():
    functional = pytest.importorskip("bitsandbytes.functional")
    assert torch.equal(functional.create_dynamic_map(signed=True), codec.dynamic_codebook())


def test_decoder_refuses_wrong_names_shapes_and_compression():
    grads = gradients()
    payload = codec.encode_gradient(grads, "fp16")
    with pytest.raises(codec.GradientCodecError, match="missing"):
        codec.decode_gradient(payload, {**shapes(grads), "extra.weight": (2, 2)})
    with pytest.raises(codec.GradientCodecError, match="expected shape"):
        codec.decode_gradient(payload, {**shapes(grads), "layer.weight": (192, 256)})
    relabelled = GradientPayload(compression="none", tensors=payload.tensors)
    with pytest.raises(codec.GradientCodecError, match="expected compression 'none'"):
        codec.decode_gradient(relabelled, shapes(grads))


def test_decoder_refuses_truncated_buffers_and_garbage():
    grads = gradients()
    payload = codec.encode_gradient(grads, "uniform8")
    blob = payload.tensors[-1]
    assert blob.name == "layer.weight"
    truncated = dataclasses.replace(payload, tensors=payload.tensors[:-1] + (TensorBlob(blob.name, blob.data[:-7]),))
    with pytest.raises(codec.GradientCodecError):
        codec.decode_gradient(truncated, shapes(grads))
    garbage = dataclasses.replace(payload, tensors=payload.tensors[:-1] + (TensorBlob(blob.name, b"\xff" * 40),))
    with pytest.raises(codec.GradientCodecError):
        codec.decode_gradient(garbage, shapes(grads))


def test_limits_and_non_finite_values_are_refused():
    grads = gradients()
    with pytest.raises(codec.GradientCodecError, match="per-tensor limit"):
        codec.encode_gradient(grads, "none", max_tensor_bytes=1000)
    with pytest.raises(codec.GradientCodecError, match="total limit"):
        codec.encode_gradient(grads, "none", max_total_bytes=10_000)
    payload = codec.encode_gradient(grads, "none")
    with pytest.raises(codec.GradientCodecError, match="over the limit"):
        codec.decode_gradient(payload, shapes(grads), max_total_bytes=10_000)
    bad = dict(grads, **{"layer.bias": torch.full((192,), float("nan"))})
    with pytest.raises(codec.GradientCodecError, match="finite"):
        codec.encode_gradient(bad, "none")
    with pytest.raises(codec.GradientCodecError, match="compression"):
        codec.encode_gradient(grads, "int4")
