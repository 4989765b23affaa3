"""The codec's fast paths give exactly the bytes and verdicts of the plain ones they replaced:
the blockwise8 code look-up against `torch.bucketize`, the finiteness check against `isfinite`,
the codec's own buffers against hivemind's serializer and extract, and `dequantized` (no bytes)
against decoding the encoded gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import thinkmesh.protocol.rules.gradient_codec as codec
import thinkmesh.protocol.rules.gradient_quantization as quantization


def bucketized(scaled: torch.Tensor) -> torch.Tensor:
    """The codes as wire format 2 first computed them: binary search over the midpoints."""
    code = codec.dynamic_codebook()
    return torch.bucketize(scaled, (code[:-1] + code[1:]) / 2, out_int32=True).to(torch.uint8)


def edge_values() -> torch.Tensor:
    """Every midpoint and its float32 neighbours, the codes themselves, zeros, ends, denormals."""
    code = codec.dynamic_codebook()
    bounds = ((code[:-1] + code[1:]) / 2).numpy()
    near = [bounds, np.nextafter(bounds, np.float32(2)), np.nextafter(bounds, np.float32(-2)), code.numpy()]
    special = np.array([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1e-38, -1e-38, 1e-8, -1e-8], dtype=np.float32)
    return torch.from_numpy(np.concatenate([*near, special]).astype(np.float32))


def test_code_look_up_equals_the_binary_search_on_every_edge_and_random_scaled_values():
    generator = torch.Generator().manual_seed(3)
    uniform = torch.rand(200_000, generator=generator) * 2 - 1
    heavy = torch.clamp(torch.randn(200_000, generator=generator) ** 3 / 30, -1, 1)
    tiny = torch.randn(50_000, generator=generator) * 1e-6
    for values in (edge_values(), uniform, heavy, tiny):
        assert torch.equal(quantization._nearest_codes(values), bucketized(values))


@pytest.mark.parametrize("compression", ["blockwise8", "uniform8", "fp16", "none"])
def test_payload_bytes_equal_the_plain_path_s_on_random_gradients(compression, monkeypatch):
    generator = torch.Generator().manual_seed(4)
    grads = {f"t{i}": torch.randn(numel, generator=generator) * 10.0**scale
             for i, (numel, scale) in enumerate([(4096 * 3, -3), (4096 * 2 + 17, -6), (5000, 1), (300, -2)])}
    grads["t0"][7] = 0.0
    fast = codec.encode_gradient(grads, compression)
    monkeypatch.setattr(quantization, "_nearest_codes", bucketized)
    monkeypatch.setattr(codec, "_all_finite", lambda t: bool(torch.isfinite(t).all()))
    assert codec.encode_gradient(grads, compression) == fast


def test_finiteness_check_equals_isfinite_for_a_bad_value_anywhere():
    generator = torch.Generator().manual_seed(5)
    for numel in (1, 7, 64, 1029):
        for position in range(numel):
            for bad in (float("nan"), float("inf"), float("-inf")):
                values = torch.randn(numel, generator=generator)
                values[position] = bad
                assert not codec._all_finite(values), (numel, position, bad)
    big = torch.randn(1_000_003, generator=generator)
    assert codec._all_finite(big) and codec._all_finite(torch.tensor(3.0)) and codec._all_finite(torch.zeros(0))
    for position in (0, 1_000_002, 524_287):
        for bad in (float("nan"), float("inf")):
            changed = big.clone()
            changed[position] = bad
            assert not codec._all_finite(changed)
    assert codec._all_finite(torch.full((10,), 3.0e38))  # large but finite: no overflow on the way


def padded_dequantize(codes, absmax, code):
    """Decoding as wire format 2 first did it: a zero-padded grid times each block's absmax."""
    n = codes.numel()
    blocks = -(-n // codec.BLOCKWISE_BLOCK)
    padded = torch.zeros(blocks * codec.BLOCKWISE_BLOCK, dtype=torch.float32)
    padded[:n] = code[codes.to(torch.int64)]
    return (padded.reshape(blocks, codec.BLOCKWISE_BLOCK) * absmax.view(-1, 1)).reshape(-1)[:n]


@pytest.mark.parametrize("numel", [1, 4095, 4096, 4096 * 3 + 5])
def test_blockwise_decoding_equals_the_padded_grid_s_values(numel):
    generator = torch.Generator().manual_seed(numel)
    codes = torch.randint(0, 256, (numel,), generator=generator, dtype=torch.uint8)
    absmax = torch.rand(-(-numel // codec.BLOCKWISE_BLOCK), generator=generator) * 1e-3
    code = codec.dynamic_codebook()
    assert torch.equal(quantization._blockwise_dequantize(codes, absmax, code), padded_dequantize(codes, absmax, code))


MODES = ("none", "fp16", "uniform8", "blockwise8")


def awkward_gradients() -> dict[str, torch.Tensor]:
    """Every wire mode and edge: small tensors (meanstd16, or none where rows are short), 0-d,
    partial blocks, zeros, a single huge value, magnitudes from 1e-30 to 1e30."""
    generator = torch.Generator().manual_seed(6)
    grads = {
        "scalar": torch.tensor(0.5), "narrow": torch.randn(40, 3, generator=generator),
        "rows": torch.randn(6, 50, generator=generator) * 1e-4 + 1e-3, "under": torch.randn(1023, generator=generator),
        "at": torch.randn(1024, generator=generator) * 1e-7, "blocks": torch.randn(2, 4096 + 9, generator=generator),
        "exact": torch.randn(3, 4096, generator=generator) * 1e-2, "zeros": torch.zeros(5000), "small_zeros": torch.zeros(8, 16),
        "tiny": torch.randn(3000, generator=generator) * 1e-30, "large": torch.randn(3000, generator=generator) * 1e30,
        "spike": torch.randn(70, 90, generator=generator) * 1e-3,
        "small_large": torch.randn(8, 16, generator=generator) * 1e30,  # meanstd16's std overflows: refused
    }
    grads["spike"][3, 4] = 1e6
    return grads


def outcome(function):
    """The tensors `function` returns, or the codec error it raises (both paths must agree)."""
    try:
        return function()
    except codec.GradientCodecError as exc:
        return str(exc)


@pytest.mark.parametrize("compression", MODES)
def test_dequantized_equals_decoding_the_encoded_gradient_bit_for_bit(compression):
    for name, tensor in awkward_gradients().items():
        one = {name: tensor}
        wire = outcome(lambda: codec.decode_gradient(codec.encode_gradient(one, compression), {name: tuple(tensor.shape)}))
        direct = outcome(lambda: codec.dequantized(one, compression))
        if isinstance(wire, str) or isinstance(direct, str):
            assert direct == wire, (compression, name)
            continue
        assert direct[name].dtype == torch.float32 and direct[name].shape == tensor.shape
        assert torch.equal(direct[name], wire[name]), (compression, name)


def test_dequantized_refuses_what_encoding_refuses():
    with pytest.raises(codec.GradientCodecError, match="finite"):
        codec.dequantized({"w": torch.tensor([1.0, float("inf")] * 800)}, "blockwise8")
    with pytest.raises(codec.GradientCodecError, match="compression"):
        codec.dequantized({"w": torch.ones(3)}, "int4")


@pytest.mark.parametrize("compression", ["none", "fp16", "uniform8", "meanstd16"])
def test_encoded_bytes_equal_hivemind_s_serializer(compression):
    """The codec packs buffers itself now; the wire format is still hivemind's, byte for byte."""
    from hivemind.compression import serialize_torch_tensor

    for name, tensor in awkward_gradients().items():
        if codec._wire_mode(compression, tuple(tensor.shape)) != compression or (compression == "meanstd16" and not tensor.dim()):
            continue
        ours = codec._pb().Tensor(buffer=codec._pack(compression, quantization.quantize(tensor, compression)), size=tensor.shape,
                                  dtype="float32", compression=codec._compression_type(compression))
        theirs = serialize_torch_tensor(tensor, codec._compression_type(compression))
        assert ours.SerializeToString() == theirs.SerializeToString(), (compression, name)


def test_decoding_equals_hivemind_s_extract_including_float16_declared_blobs():
    """none, fp16 and meanstd16 blobs decode as hivemind's own `deserialize_torch_tensor` did,
    also where a blob declares float16 (meanstd16 then rescales in float16)."""
    from hivemind.compression import deserialize_torch_tensor

    grads = awkward_gradients()
    for compression, names in (("fp16", grads), ("uniform8", ("rows", "narrow", "small_zeros", "small_large")), ("none", grads)):
        payload = codec.encode_gradient({n: grads[n] for n in names}, compression)
        for blob in payload.tensors:
            shape = tuple(grads[blob.name].shape)
            for declared in ("float32", "float16"):
                proto = codec._pb().Tensor()
                proto.ParseFromString(blob.data)
                if proto.compression == codec._compression_type("none") and declared == "float16":
                    proto.buffer = grads[blob.name].to(torch.float16).numpy().tobytes()
                proto.dtype = declared
                ours = outcome(lambda: codec.decode_gradient(
                    codec.GradientPayload(compression, (codec.TensorBlob(blob.name, proto.SerializeToString()),)),
                    {blob.name: shape}))
                theirs = deserialize_torch_tensor(proto).detach().to(torch.float32)
                if isinstance(ours, str):
                    assert "finite" in ours and not torch.isfinite(theirs).all(), (compression, blob.name, declared)
                else:
                    assert torch.equal(ours[blob.name], theirs), (compression, blob.name, declared)


def test_uniform8_decoding_equals_the_codebook_index():
    grads = {"w": torch.randn(70, 90, generator=torch.Generator().manual_seed(7))}
    proto = codec._pb().Tensor()
    proto.ParseFromString(codec.encode_gradient(grads, "uniform8").tensors[0].data)
    codebook = torch.from_numpy(np.frombuffer(proto.buffer, dtype=np.float32, count=256, offset=8).copy())
    codes = torch.from_numpy(np.frombuffer(proto.buffer, dtype=np.uint8, offset=8 + 1024).astype(np.int64))
    decoded = codec.decode_gradient(codec.encode_gradient(grads, "uniform8"), {"w": (70, 90)})["w"]
    assert torch.equal(decoded, codebook[codes].reshape(70, 90))
