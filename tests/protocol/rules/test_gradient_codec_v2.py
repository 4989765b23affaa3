"""Gradient codec wire format 2: per-tensor error bounds at every scale, no shared state between
tensors, and strict refusal of the version-1 layouts it replaced."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import thinkmesh.protocol.rules.gradient_codec as codec
from thinkmesh.protocol.rules.messages import TensorBlob

EIGHT_BIT = ("uniform8", "blockwise8")


def mixed_scale_gradients() -> dict[str, torch.Tensor]:
    """Gaussian tensors from 1e-7 to 1e1 (a big tensor and a small one at each scale), plus a
    2-D small tensors: concatenating these before a mean/std quantizer would erase the small ones."""
    generator = torch.Generator().manual_seed(1)
    grads = {}
    for exponent in (-7, -4, -1, 1):
        grads[f"big{exponent}.weight"] = torch.randn(48, 96, generator=generator) * 10.0**exponent
        grads[f"small{exponent}.bias"] = torch.randn(96, generator=generator) * 10.0**exponent
    grads["small.rows"] = torch.randn(4, 32, generator=generator) * 1e-3 + 2e-3
    grads["small.narrow"] = torch.randn(100, 2, generator=generator) * 1e-3  # 16-bit rows would outweigh fp32
    return grads


def shapes(grads):
    return {name: tuple(t.shape) for name, t in grads.items()}


def relative_errors(grads, mode) -> dict[str, float]:
    decoded = codec.decode_gradient(codec.encode_gradient(grads, mode), shapes(grads))
    return {name: ((decoded[name] - t).norm() / t.norm()).item() for name, t in grads.items()}


# Per-tensor bounds, measured with margin: fp16 is excluded below 6e-5 where it goes subnormal.
BOUNDS = {"none": (0.0, 0.0), "fp16": (1e-3, 1e-3), "uniform8": (0.03, 1e-3), "blockwise8": (0.02, 1e-3)}


@pytest.mark.parametrize("mode", list(BOUNDS))
def test_every_tensor_round_trips_within_its_mode_bound_at_every_scale(mode):
    big_bound, small_bound = BOUNDS[mode]
    grads = mixed_scale_gradients()
    for name, error in relative_errors(grads, mode).items():
        if mode == "fp16" and grads[name].abs().max() < 6e-5:
            continue
        bound = big_bound if grads[name].numel() >= codec.MIN_QUANTIZED_NUMEL else small_bound
        assert error <= bound, (mode, name, error)


def test_small_tensors_travel_as_meanstd16_under_8bit_modes_where_smaller():
    grads = mixed_scale_gradients()
    for mode in EIGHT_BIT:
        blobs = {blob.name: blob.data for blob in codec.encode_gradient(grads, mode).tensors}
        for name, tensor in grads.items():
            proto = codec._pb().Tensor()
            proto.ParseFromString(blobs[name])
            expected = mode if tensor.numel() >= codec.MIN_QUANTIZED_NUMEL else "meanstd16"
            expected = "none" if name == "small.narrow" else expected
            assert proto.compression == codec._compression_type(expected), (mode, name)


def test_blockwise8_carries_no_codebook():
    grads = {"w": torch.randn(3, 4096) * 1e-3}  # exactly 3 blocks
    payload = codec.encode_gradient(grads, "blockwise8")
    proto = codec._pb().Tensor()
    proto.ParseFromString(payload.tensors[0].data)
    assert len(proto.buffer) == 16 + 4 * 3 + 3 * 4096
    assert np.frombuffer(proto.buffer, dtype=np.int64, count=2).tolist() == [3, 0]


def test_a_tensor_encodes_the_same_alone_as_within_the_whole_gradient():
    """The audit re-encodes only the tensors it checks; their bytes must not depend on the rest."""
    grads = mixed_scale_gradients()
    for mode in ("fp16", *EIGHT_BIT):
        whole = {blob.name: blob.data for blob in codec.encode_gradient(grads, mode).tensors}
        for name in ("big-4.weight", "small1.bias"):
            alone = codec.encode_gradient({name: grads[name]}, mode).tensors[0]
            assert alone.data == whole[name], (mode, name)


def test_8bit_modes_send_under_30_percent_of_fp32_on_the_devnet_tiny_shape():
    """Shapes of `TinyModelSpec()` (1.6M parameters), without building the model."""
    from thinkmesh.node.model.tiny_model import TinyModelSpec, qwen2_config

    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(qwen2_config(TinyModelSpec()))
    generator = torch.Generator().manual_seed(2)
    grads = {name: torch.randn(tuple(p.shape), generator=generator) * 1e-3 for name, p in model.named_parameters()}
    dense = codec.dense_nbytes(grads)
    for mode in EIGHT_BIT:
        assert codec.encode_gradient(grads, mode).nbytes / dense < 0.26, mode


def _replace_blob(payload, name, data):
    return dataclasses.replace(
        payload, tensors=tuple(TensorBlob(b.name, data if b.name == name else b.data) for b in payload.tensors)
    )


def test_version_1_layouts_are_refused():
    grads = mixed_scale_gradients()
    none_payload = codec.encode_gradient(grads, "none")
    old_small = next(b.data for b in none_payload.tensors if b.name == "small-4.bias")
    payload = codec.encode_gradient(grads, "blockwise8")
    with pytest.raises(codec.GradientCodecError, match="expected compression 'meanstd16', got 'none'"):
        codec.decode_gradient(_replace_blob(payload, "small-4.bias", old_small), shapes(grads))
    with_codebook = codec._pb().Tensor()
    with_codebook.ParseFromString(next(b.data for b in payload.tensors if b.name == "big-4.weight"))
    absmax_size = int(np.frombuffer(with_codebook.buffer, dtype=np.int64, count=1)[0])
    codes = with_codebook.buffer[16 + 4 * absmax_size:]
    absmax = with_codebook.buffer[16:16 + 4 * absmax_size]
    v1 = b"".join((np.int64(absmax_size).tobytes(), np.int64(256).tobytes(), absmax,
                   codec.dynamic_codebook().numpy().tobytes(), codes))
    with_codebook.buffer = v1
    with pytest.raises(codec.GradientCodecError, match="0 codebook entries .* got 2 and 256"):
        codec.decode_gradient(_replace_blob(payload, "big-4.weight", with_codebook.SerializeToString()), shapes(grads))


def test_meanstd16_blobs_are_checked_like_the_others():
    grads = mixed_scale_gradients()
    payload = codec.encode_gradient(grads, "uniform8")
    blob = next(b for b in payload.tensors if b.name == "small.rows")
    proto = codec._pb().Tensor()
    proto.ParseFromString(blob.data)
    assert len(proto.buffer) == 2 * 128 + 8 * 4  # a mean and a std per row
    truncated = codec._pb().Tensor()
    truncated.CopyFrom(proto)
    truncated.buffer = proto.buffer[:-4]
    with pytest.raises(codec.GradientCodecError, match="meanstd16 buffer"):
        codec.decode_gradient(_replace_blob(payload, "small.rows", truncated.SerializeToString()), shapes(grads))
    huge_std = codec._pb().Tensor()
    huge_std.CopyFrom(proto)
    huge_std.buffer = proto.buffer[:-16] + np.full(4, 3e38, dtype=np.float32).tobytes()
    with pytest.raises(codec.GradientCodecError, match="finite"):
        codec.decode_gradient(_replace_blob(payload, "small.rows", huge_std.SerializeToString()), shapes(grads))
