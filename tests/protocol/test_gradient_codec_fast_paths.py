"""The codec's fast paths give exactly the bytes and verdicts of the plain ones they replaced:
the blockwise8 code look-up against `torch.bucketize`, the finiteness check against `isfinite`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import thinkmesh.protocol.gradient_codec as codec


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
        assert torch.equal(codec._nearest_codes(values), bucketized(values))


@pytest.mark.parametrize("compression", ["blockwise8", "uniform8", "fp16", "none"])
def test_payload_bytes_equal_the_plain_path_s_on_random_gradients(compression, monkeypatch):
    generator = torch.Generator().manual_seed(4)
    grads = {f"t{i}": torch.randn(numel, generator=generator) * 10.0**scale
             for i, (numel, scale) in enumerate([(4096 * 3, -3), (4096 * 2 + 17, -6), (5000, 1), (300, -2)])}
    grads["t0"][7] = 0.0
    fast = codec.encode_gradient(grads, compression)
    monkeypatch.setattr(codec, "_nearest_codes", bucketized)
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
    assert torch.equal(codec._blockwise_dequantize(codes, absmax, code), padded_dequantize(codes, absmax, code))
