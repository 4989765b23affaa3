"""Gradient values under each wire mode, without bytes: what a tensor becomes after the codec.

`quantize(tensor, mode)` gives the parts a mode sends (codes, codebook, scales), `dequantize`
turns parts back into float32. `gradient_codec.py` packs the parts into hivemind's buffers and
unpacks them, and `dequantized` there runs both steps in memory for the audit's reference, so
the wire and the audit share one implementation of every mode's arithmetic.

Each mode is computed as hivemind 1.1.12 computes it (tests pin the bytes against
`serialize_torch_tensor` and the values against `deserialize_torch_tensor`), except `blockwise8`:
bitsandbytes' blockwise quantizer (signed dynamic map, block size 4096, nearest-code rounding)
written in plain torch, and never bitsandbytes itself: every machine then produces the same
codes for the same gradient, which the audit relies on (bitsandbytes rounds a few codes at bin
edges the other way), and a node does not pay bitsandbytes' import (6-7 s on the 2-core dev
box) inside its first round. Code look-ups go through NumPy's `take`, which reads uint8 and int32
indices directly (torch's wants int64 ones, whose conversion costs more than the look-up).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

BLOCKWISE_BLOCK = 4096
CODEBOOK_SIZE = 256
FP16_MAX = float(torch.finfo(torch.float16).max)
FP32_EPS = float(torch.finfo(torch.float32).eps)


@functools.cache
def dynamic_codebook() -> Tensor:
    """bitsandbytes' `create_dynamic_map(signed=True)`: 256 sorted float32 codes in [-1, 1]."""
    data: list[float] = []
    for i in range(7):
        boundaries = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (CODEBOOK_SIZE - len(data))
    return torch.tensor(data, dtype=torch.float32).sort().values


LOOKUP_KEY_BITS = 18  # 256 Ki keys: ~2.5% of a gradient's values left to the binary search


@functools.cache
def _code_lookup() -> tuple[Tensor, Tensor, Tensor]:
    """(bounds, code by key, ambiguous by key) for `_nearest_codes`. A float32's top
    LOOKUP_KEY_BITS bits (its key: sign, exponent, leading mantissa bits) pick a contiguous
    interval of the reals; where both ends of it fall in the same bucket, so does every value in
    it (bucketize is monotone). Built once per process (~10 ms)."""
    code = dynamic_codebook()
    bounds = (code[:-1] + code[1:]) / 2
    shift = 32 - LOOKUP_KEY_BITS
    keys = np.arange(1 << LOOKUP_KEY_BITS, dtype=np.uint32) << shift
    low = torch.from_numpy(keys.view(np.float32).copy())
    high = torch.from_numpy((keys | ((1 << shift) - 1)).view(np.float32).copy())
    at_low = torch.bucketize(low, bounds, out_int32=True)
    at_high = torch.bucketize(high, bounds, out_int32=True)
    return bounds, at_low.to(torch.uint8), (at_low != at_high) | ~torch.isfinite(low) | ~torch.isfinite(high)


def _nearest_codes(scaled: Tensor) -> Tensor:
    """`torch.bucketize(scaled, bounds).to(uint8)` for the dynamic codebook's midpoints, the same
    codes ~7x faster: a table look-up by each value's key, and the binary search only for values
    whose key interval straddles a bound."""
    bounds, by_key, ambiguous = _code_lookup()
    keys = ((scaled.contiguous().view(torch.int32) >> (32 - LOOKUP_KEY_BITS)) & ((1 << LOOKUP_KEY_BITS) - 1)).numpy()
    codes = torch.from_numpy(np.take(by_key.numpy(), keys))
    unsure = torch.from_numpy(np.flatnonzero(np.take(ambiguous.numpy(), keys)))
    if unsure.numel():
        codes[unsure] = torch.bucketize(scaled[unsure], bounds, out_int32=True).to(torch.uint8)
    return codes


def _blockwise_quantize(flat: Tensor) -> tuple[Tensor, Tensor]:
    """(codes uint8 [n], absmax float32 [blocks]) exactly as bitsandbytes' CPU kernel rounds."""
    n = flat.numel()
    full = n - n % BLOCKWISE_BLOCK
    grid = flat[:full].reshape(-1, BLOCKWISE_BLOCK)
    absmax = grid.abs().max(dim=-1).values
    scaled = torch.clamp(grid * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if full < n:  # the last, partial block divides instead of multiplying, as bitsandbytes does
        tail_max = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_max.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / tail_max, -1, 1)])
    return _nearest_codes(scaled), absmax


def _blockwise_dequantize(codes: Tensor, absmax: Tensor, code: Tensor) -> Tensor:
    """code[codes] * absmax of each value's block: one float32 product per value, in place."""
    n = codes.numel()
    values = torch.from_numpy(np.take(code.numpy(), codes.reshape(-1).numpy()))
    full = n - n % BLOCKWISE_BLOCK
    values[:full].view(-1, BLOCKWISE_BLOCK).mul_(absmax[: full // BLOCKWISE_BLOCK].view(-1, 1))
    if full < n:
        values[full:].mul_(absmax[-1])
    return values


def _meanstd16_quantize(tensor: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """hivemind's `ScaledFloat16Compression.compress`, op for op: (float16 values scaled by each
    row's mean and std, means, stds), rows being the last axis."""
    tensor = tensor.clone()
    means = torch.mean(tensor, dim=-1, keepdim=True)
    tensor.sub_(means)
    stds = tensor.norm(dim=-1, keepdim=True) / math.sqrt(tensor.shape[-1])
    stds.clamp_min_(FP32_EPS)
    tensor.div_(stds)
    return tensor.clamp_(-FP16_MAX, FP16_MAX).to(torch.float16), means, stds


def quantize(tensor: Tensor, mode: str) -> tuple[Tensor, ...]:
    """A finite float32 CPU tensor as `mode` sends it: the parts of its buffer, in buffer order
    after the int64 headers. `gradient_codec` packs these into the buffer."""
    if mode == "none":
        return (tensor,)
    if mode == "fp16":  # hivemind's Float16Compression: clamp to the float16 range, then round
        return (tensor.clamp(-FP16_MAX, FP16_MAX).to(torch.float16),)
    if mode == "meanstd16":
        return _meanstd16_quantize(tensor)
    if mode == "uniform8":
        from hivemind.compression.quantization import Uniform8BitQuantization

        codes, codebook = Uniform8BitQuantization().quantize(tensor)
        return torch.from_numpy(codebook), torch.from_numpy(codes)
    codes, absmax = _blockwise_quantize(tensor.reshape(-1))
    return absmax, codes


def dequantize(mode: str, parts: tuple[Tensor, ...], shape: tuple[int, ...], dtype: str = "float32") -> Tensor:
    """The float32 tensor of `shape` that `parts` stand for, computed as hivemind's `extract`
    would for a float32 declaration. `dtype`, the declared one, matters here only to meanstd16's
    arithmetic and none's bytes; hivemind's uniform8 extract would also cast its codebook to it,
    which this codec never needed (the node declares float32). Under none, the result may be
    `parts[0]` itself."""
    if mode in ("none", "fp16"):
        values = parts[0].to(torch.float32)
    elif mode == "meanstd16":
        scaled, means, stds = parts
        stats = (*shape[:-1], 1)
        values = scaled.to(getattr(torch, dtype), copy=True).reshape(shape)
        values = values.mul_(stds.reshape(stats)).add_(means.reshape(stats)).to(torch.float32)
    elif mode == "uniform8":
        codebook, codes = parts
        values = torch.from_numpy(np.take(codebook.numpy(), codes.reshape(-1).numpy()))
    else:
        absmax, codes = parts
        values = _blockwise_dequantize(codes, absmax, dynamic_codebook())
    return values.reshape(shape)
