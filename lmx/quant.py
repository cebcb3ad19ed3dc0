"""Quantized frozen kernels (QLoRA): NF4 in blocks of 64 or int8 per output channel.

Axis legend: I/O in/out features of a kernel (I, O); N elements, K blocks, S blocks of the
block scales (double quantization), C code values.

A quantized kernel is a plain dict of arrays that takes the kernel's place in `params`
(`params/.../query/kernel/{codes, absmax}`): its own frozen pytree, never differentiated,
dequantized inside the jitted matmul (`lmx.models.layers.Dense`). The layouts follow
bitsandbytes on the HF (O, I) weight, so the codes equal its `quantize_4bit` /
`int8_vectorwise_quant` codes on the same tensor:
- NF4: the (O, I) weight flattened row-major, blocks of `blocksize` elements, each scaled by
  its absmax to [-1, 1] and rounded to the nearest of the 16 NF4 values (QLoRA, Dettmers et
  al. 2023, Appendix E); two codes per byte, the first in the high nibble. Double
  quantization stores the fp32 block absmaxes as int8 (absmax scaling in blocks of 256
  after subtracting their mean), about 0.127x fp32 in all instead of 0.141x.
  (bitsandbytes' double quantization uses its 8-bit dynamic-exponent code instead of
  linear int8: the same bytes, slightly different rounding.)
- int8: per output channel, `round(w * 127 / absmax)`; dequantized as `q * absmax / 127`.
Written here rather than taken from qwix: see the README's "Quantized base (QLoRA)".
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("none", "int8", "nf4")

# NF4 (QLoRA paper, Appendix E): the 16 quantiles of N(0, 1) normalised to [-1, 1], 0 exact.
NF4_CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)
SCALE_BLOCK = 256  # double quantization: block scales are themselves scaled per 256


@dataclasses.dataclass(frozen=True)
class Scheme:
    """How frozen kernels are stored (hashable: part of `PeftSpec`, hence of the jit key)."""
    kind: str = "none"  # "none" | "int8" | "nf4"
    blocksize: int = 64  # NF4 elements per absmax
    double: bool = False  # NF4: block absmaxes stored as int8 (double quantization)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"quantization kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "nf4" and (self.blocksize <= 0 or self.blocksize % 2):
            raise ValueError(f"NF4 blocksize {self.blocksize} must be even and > 0")


NONE = Scheme()


def _blocks(x_N: jax.Array, blocksize: int) -> jax.Array:
    """(N,) -> (K, blocksize), zero-padded at the end (a zero never raises a block's absmax)."""
    pad = -x_N.shape[0] % blocksize
    return jnp.pad(x_N, (0, pad)).reshape(-1, blocksize)


def _absmax_scale(x_KB: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(block absmax (K,), x / absmax); an all-zero block keeps its zeros (scale 1)."""
    absmax_K = jnp.max(jnp.abs(x_KB), axis=1)
    safe_K = jnp.where(absmax_K == 0, 1.0, absmax_K)
    return absmax_K, x_KB / safe_K[:, None]


def nf4_quantize(x: jax.Array, blocksize: int = 64, double: bool = False) -> dict:
    """Any-shaped float array -> NF4 codes (row-major blocks), as bitsandbytes' quantize_4bit."""
    x_N = jnp.ravel(x).astype(jnp.float32)
    absmax_K, scaled_KB = _absmax_scale(_blocks(x_N, blocksize))
    code_C = jnp.asarray(NF4_CODE)
    # nearest code value, the first on a tie (torch.argmin's rule, which bitsandbytes uses)
    index_N = jnp.argmin(jnp.abs(scaled_KB.reshape(-1, 1) - code_C[None, :]), axis=1)
    index_N = index_N[:x_N.shape[0] + x_N.shape[0] % 2].astype(jnp.uint8)
    codes = (index_N[0::2] << 4) | index_N[1::2]
    if not double:
        return {"codes": codes, "absmax": absmax_K}
    offset = jnp.mean(absmax_K)
    scales_S, scaled_SB = _absmax_scale(_blocks(absmax_K - offset, SCALE_BLOCK))
    absmax_codes = jnp.round(scaled_SB * 127.0).astype(jnp.int8).reshape(-1)
    return {"codes": codes, "absmax_codes": absmax_codes[:absmax_K.shape[0]],
            "absmax_scale": scales_S, "absmax_offset": offset}


def nf4_absmax(q: dict) -> jax.Array:
    """The block absmaxes (K,) of an NF4 dict, dequantized first under double quantization."""
    if "absmax" in q:
        return q["absmax"]
    k = q["absmax_codes"].shape[0]
    codes_SB = _blocks(q["absmax_codes"].astype(jnp.float32), SCALE_BLOCK)
    return (codes_SB * (q["absmax_scale"][:, None] / 127.0)).reshape(-1)[:k] + q["absmax_offset"]


def nf4_dequantize(q: dict, shape: tuple[int, ...], blocksize: int = 64,
                   dtype=jnp.float32) -> jax.Array:
    """NF4 dict -> float array of `shape` (row-major), as bitsandbytes' dequantize_4bit."""
    n = int(np.prod(shape))
    index_N = jnp.stack([q["codes"] >> 4, q["codes"] & 15], axis=1).reshape(-1)
    values_KB = _blocks(jnp.asarray(NF4_CODE)[index_N[:n]], blocksize)
    x_KB = values_KB * nf4_absmax(q)[:, None]
    return x_KB.reshape(-1)[:n].reshape(shape).astype(dtype)


def int8_quantize(w_IO: jax.Array) -> dict:
    """Per output channel absmax int8 (bitsandbytes' int8_vectorwise_quant on the (O, I) weight)."""
    w_IO = w_IO.astype(jnp.float32)
    absmax_O = jnp.max(jnp.abs(w_IO), axis=0)
    safe_O = jnp.where(absmax_O == 0, 1.0, absmax_O)
    codes_IO = jnp.round(w_IO * (127.0 / safe_O)[None, :]).astype(jnp.int8)
    return {"codes": codes_IO, "absmax": absmax_O}


def int8_dequantize(q: dict, dtype=jnp.float32) -> jax.Array:
    # (q * absmax) / 127 in this order: bitsandbytes' int8_vectorwise_dequant, bit for bit
    w_IO = q["codes"].astype(jnp.float32) * q["absmax"][None, :] * (1.0 / 127.0)
    return w_IO.astype(dtype)


def quantize_kernel(w_IO: jax.Array, scheme: Scheme) -> dict:
    """An (I, O) kernel in `scheme`'s storage (NF4 over the transposed, HF-layout weight)."""
    if w_IO.ndim != 2:
        raise ValueError(f"quantize_kernel takes an (I, O) kernel, not shape {w_IO.shape}")
    if scheme.kind == "int8":
        return int8_quantize(w_IO)
    if scheme.kind == "nf4":
        return nf4_quantize(w_IO.T, scheme.blocksize, scheme.double)
    raise ValueError(f"quantize_kernel: scheme {scheme} quantizes nothing")


def dequantize_kernel(q: dict, shape_IO: tuple[int, int], scheme: Scheme,
                      dtype=jnp.float32) -> jax.Array:
    """`quantize_kernel`'s inverse (up to rounding): the (I, O) kernel, in `dtype`."""
    if scheme.kind == "int8":
        return int8_dequantize(q, dtype)
    w_OI = nf4_dequantize(q, shape_IO[::-1], scheme.blocksize, dtype)
    return w_OI.T


def kernel_nbytes(q) -> int:
    """Bytes of a (quantized) kernel's arrays."""
    return int(sum(np.prod(np.shape(x)) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(q)))
