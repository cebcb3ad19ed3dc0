"""Layers shared by every model family: Dense and Conv with a LoRA hook, bottleneck adapters.

Axis legend: B batch, T length, D model width, I/O in/out features, R LoRA rank or
adapter bottleneck, H/W image height/width, C channels.

IA3 multiplies a target's output (or, for feed-forward targets, its input) by a learned
vector that starts at 1. LoRA is one explicit computation, `y = x @ W + (alpha / r) * (x @ A) @ B` with `B = 0`
at init (so the output at init equals the base bit for bit). A and B live in the
`peft` collection at the same module path as W.

Mixed-adapter batches (lmx.adapters.mixed): a `peft` leaf may come in per row, with a
leading B axis (A (B, I, R), B (B, R, O), a head's kernel (B, I, O) and bias (B, O)): each
row then uses its own adapter. The routing is data (a gather by adapter id outside the
model), so one compiled step serves every choice of adapters.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmx import quant
from lmx.peft import NO_PEFT, PEFT, PeftSpec, dora_norm, lora_delta
from lmx.scale import sharding as ax

Dtype = Any


def matmul(x_BI: jax.Array, w_IO: jax.Array, dtype: Dtype) -> jax.Array:
    """`x @ w` with inputs cast to `dtype` and float32 accumulation (the AMX/TensorCore path).

    Leading axes are flattened first: XLA:CPU runs the weight-gradient dots of 3-D
    operands (two contracting axes) far slower than the same 2-D dots.
    """
    x_NI = x_BI.reshape(-1, x_BI.shape[-1])
    y_NO = jax.lax.dot_general(
        x_NI.astype(dtype), w_IO.astype(dtype), (((1,), (0,)), ((), ())),
        preferred_element_type=jnp.float32)
    return y_NO.reshape(*x_BI.shape[:-1], w_IO.shape[-1])


def row_matmul(x_BxI: jax.Array, w_BIO: jax.Array, dtype: Dtype) -> jax.Array:
    """`x[b] @ w[b]` for every row b (each row's own weight), float32 accumulation."""
    x_BNI = x_BxI.reshape(x_BxI.shape[0], -1, x_BxI.shape[-1])
    y_BNO = jax.lax.dot_general(
        x_BNI.astype(dtype), w_BIO.astype(dtype), (((2,), (1,)), ((0,), (0,))),
        preferred_element_type=jnp.float32)
    return y_BNO.reshape(*x_BxI.shape[:-1], w_BIO.shape[-1])


def any_matmul(x_BxI: jax.Array, w: jax.Array, dtype: Dtype) -> jax.Array:
    """`matmul` for a shared (I, O) weight, `row_matmul` for a per-row (B, I, O) one."""
    return row_matmul(x_BxI, w, dtype) if w.ndim == 3 else matmul(x_BxI, w, dtype)


def add_bias(y_BxO: jax.Array, bias_O: jax.Array) -> jax.Array:
    """`y + b` over the last axis, with the broadcast spelled out (rank promotion is an error);
    a per-row bias (B, O) adds row b's bias to row b."""
    if bias_O.ndim == 2:
        return y_BxO + bias_O.reshape(bias_O.shape[:1] + (1,) * (y_BxO.ndim - 2)
                                      + bias_O.shape[1:])
    return y_BxO + bias_O.reshape((1,) * (y_BxO.ndim - 1) + bias_O.shape)


def scale_features(y_BxO: jax.Array, scale: jax.Array) -> jax.Array:
    """`y * s` over the last axis for a shared (O,) or a per-row (B, O) scale (IA3)."""
    if scale.ndim == 2:
        return y_BxO * scale.reshape(scale.shape[:1] + (1,) * (y_BxO.ndim - 2) + scale.shape[1:])
    return y_BxO * scale.reshape((1,) * (y_BxO.ndim - 1) + scale.shape)


@jax.custom_vjp
def _gelu_erf(x):
    return nn.gelu(x, approximate=False)


def _gelu_erf_fwd(x):
    return _gelu_erf(x), x


def _gelu_erf_bwd(x, g):
    cdf = 0.5 * (1.0 + jax.lax.erf(x * 0.7071067811865476))
    pdf = jnp.exp(-0.5 * x * x) * 0.3989422804014327
    return (jax.lax.optimization_barrier(g * (cdf + x * pdf)),)


_gelu_erf.defvjp(_gelu_erf_fwd, _gelu_erf_bwd)


def gelu(x: jax.Array, approximate: bool) -> jax.Array:
    """GELU; the exact (erf) form has an explicit VJP: XLA:CPU fused its autodiff backward
    badly (a post-LN block's backward measured 96 -> 75 ms with this)."""
    return nn.gelu(x, approximate=True) if approximate else _gelu_erf(x)


def _hash32(h_u32: jax.Array) -> jax.Array:
    """lowbias32 (C. Wellons' hash prospector): a bijection of uint32 with low avalanche bias."""
    h_u32 = (h_u32 ^ (h_u32 >> 16)) * jnp.uint32(0x7FEB352D)
    h_u32 = (h_u32 ^ (h_u32 >> 15)) * jnp.uint32(0x846CA68B)
    return h_u32 ^ (h_u32 >> 16)


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """A Bernoulli(1 - rate) mask from a counter hash of each element's row-major index.

    Two rounds of `_hash32` keyed by 64 random bits from `key` (one threefry call per mask,
    not one per element): on XLA:CPU a (32, 12, 64, 64) mask takes 1.7 ms this way and 15.6 ms
    from `jax.random.bernoulli` (`python bench/dropout_masks.py`). The mask is a function of
    the global index, so a sharded step draws the same mask as an unsharded one. Indices wrap
    past 2**32 elements. The keep probability is exact to 2**-32.
    """
    seed_a, seed_b = jax.random.bits(key, (2,), jnp.uint32)
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride = (stride * shape[axis]) % 2 ** 32
    bits = _hash32(_hash32(index ^ seed_a) ^ seed_b)
    return bits >= jnp.uint32(min(round(rate * 2 ** 32), 2 ** 32 - 1))


class Dropout(nn.Module):
    """`flax.linen.Dropout`'s contract (rng collection "dropout", inverted scaling) with the
    cheap `keep_mask`: the same distribution, a different random stream."""
    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keep = keep_mask(self.make_rng("dropout"), x.shape, self.rate)
        return jax.lax.select(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


def lora_a_init(key, shape, dtype=jnp.float32):
    """Kaiming-uniform with a=sqrt(5) over fan_in, as HF PEFT / torch Linear: U(-1/sqrt(I), 1/sqrt(I))."""
    fan_in = 1
    for size in shape[:-1]:
        fan_in *= size
    bound = 1.0 / jnp.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _peft_variable(module: nn.Module, name: str, init: Callable, shape, axes):
    """A variable in the `peft` collection, created (with logical axes) only at init."""
    boxed_init = nn.with_logical_partitioning(init, axes)
    return module.variable(
        PEFT, name, lambda: boxed_init(module.make_rng("params"), shape)).value


def _dora_update(module: nn.Module, kernel, a, b, path, base_BO, update_BO) -> jax.Array:
    """PEFT's DoRA term added to the base output: `(c - 1) x W + c s x A B` with
    `c = m / ||W + s A B||` (the norm detached); the magnitude `m` starts at `||W||`
    (`lmx.peft_init.init_from_base` recomputes it once pretrained weights are laid in)."""
    delta = lora_delta({"lora_a": a, "lora_b": b}, module.peft.lora_scale_of(path))
    magnitude_O = _peft_variable(
        module, "lora_magnitude", lambda key, shape: dora_norm(kernel, delta).astype(
            jnp.float32).reshape(shape), (kernel.shape[-1],), (None,))
    scale_O = magnitude_O / dora_norm(kernel, delta)  # (B, O) when the adapters are per row
    return scale_features(base_BO, scale_O - 1.0) + scale_features(update_BO, scale_O)


class Dense(nn.Module):
    """`y = x @ W + b` over the last axis, plus a LoRA update when this module is a target.

    `in_peft=True` keeps W and b in the `peft` collection instead of `params` (a named
    adapter's own task head); PEFT leaves may be per row (see the module docstring)."""
    features: int
    axes: tuple[str | None, str | None]
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)
    peft: PeftSpec = NO_PEFT
    in_peft: bool = False

    def _weight(self, name, init, shape, axes):
        if self.in_peft:
            return _peft_variable(self, name, init, shape, axes)
        return self.param(name, nn.with_logical_partitioning(init, axes), shape)

    def _kernel(self, shape_IO: tuple[int, int]) -> jax.Array:
        """W (I, O); a QLoRA base stores it quantized (`params/.../kernel/{codes, ...}`,
        replicated, frozen) and it is dequantized here, inside the jitted matmul."""
        scheme = None if self.in_peft else self.peft.quantized_kernel(self.scope.path)
        if scheme is None:
            return self._weight("kernel", self.kernel_init, shape_IO, self.axes)
        stored = self.param("kernel", lambda key, shape: quant.quantize_kernel(
            self.kernel_init(key, shape), scheme), shape_IO)
        return quant.dequantize_kernel(stored, shape_IO, scheme, self.dtype)

    @nn.compact
    def __call__(self, x_BI: jax.Array, deterministic: bool = True) -> jax.Array:
        in_features = x_BI.shape[-1]
        kernel_IO = self._kernel((in_features, self.features))
        ia3 = self.peft.ia3_mode(self.scope.path)
        if ia3 == "input":  # IA3 on a feed-forward down projection scales its input
            scale_I = _peft_variable(self, "ia3", nn.initializers.ones, (in_features,),
                                     (None,))  # PEFT vectors are replicated (issue 5)
            x_BI = scale_features(x_BI, scale_I)
        y_BO = xw_BO = any_matmul(x_BI, kernel_IO, self.dtype)
        if self.use_bias:
            bias_O = self._weight("bias", nn.initializers.zeros, (self.features,),
                                  self.axes[1:])
            y_BO = add_bias(y_BO, bias_O)
        if ia3 == "output":  # ... elsewhere its output, bias included (as HF PEFT)
            scale_O = _peft_variable(self, "ia3", nn.initializers.ones, (self.features,),
                                     (None,))
            y_BO = scale_features(y_BO, scale_O)
        if self.peft.is_lora_target(self.scope.path):
            path, rank = self.scope.path, self.peft.lora_rank_of(self.scope.path)
            a_IR = _peft_variable(self, "lora_a", lora_a_init, (in_features, rank),
                                  (self.axes[0], ax.RANK))
            b_RO = _peft_variable(self, "lora_b", nn.initializers.zeros, (rank, self.features),
                                  (ax.RANK, self.axes[1]))
            dropped_BI = Dropout(self.peft.lora_dropout)(x_BI, deterministic=deterministic)
            update_BO = self.peft.lora_scale_of(path) * any_matmul(
                any_matmul(dropped_BI, a_IR, self.dtype), b_RO, self.dtype)
            if self.peft.lora_dora:
                base_BO = xw_BO if dropped_BI is x_BI else any_matmul(dropped_BI, kernel_IO,
                                                                     self.dtype)
                update_BO = _dora_update(self, kernel_IO, a_IR, b_RO, path, base_BO, update_BO)
            y_BO = y_BO + update_BO
        return y_BO


class Embed(nn.Module):
    """A lookup table `embedding` (V, D) (flax's `nn.Embed` contract), plus PEFT's LoRA on it
    when it is a target: `table[ids] + s * A[ids] @ B`, A (V, R) zeros and B (R, D) N(0, 1)
    at init (PEFT's `lora_embedding_A` / `_B` transposed); no LoRA dropout (as PEFT)."""
    num_embeddings: int
    features: int
    axes: tuple[str | None, str | None]
    embedding_init: Callable = nn.initializers.normal(0.02)
    peft: PeftSpec = NO_PEFT

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(self.embedding_init, self.axes),
            (self.num_embeddings, self.features))
        self.lora = self.peft.is_lora_target(self.scope.path)
        if self.lora:
            if self.peft.lora_dora:
                raise ValueError(f"DoRA on the embedding table {'/'.join(self.scope.path)} is "
                                 "not built: target Dense layers only")
            rank = self.peft.lora_rank_of(self.scope.path)
            self.a_VR = _peft_variable(self, "lora_a", nn.initializers.zeros,
                                       (self.num_embeddings, rank), (self.axes[0], ax.RANK))
            self.b_RD = _peft_variable(self, "lora_b", nn.initializers.normal(1.0),
                                       (rank, self.features), (ax.RANK, self.axes[1]))

    def __call__(self, ids_BT: jax.Array) -> jax.Array:
        x_BTD = jnp.take(self.embedding, ids_BT, axis=0)
        if not self.lora:
            return x_BTD
        if self.a_VR.ndim == 3:
            raise ValueError("LoRA on the embedding table takes one adapter (not per row)")
        update_BTD = matmul(jnp.take(self.a_VR, ids_BT, axis=0), self.b_RD, jnp.float32)
        return x_BTD + self.peft.lora_scale_of(self.scope.path) * update_BTD


class Conv(nn.Module):
    """2-D convolution (NHWC, no bias), plus a LoRA update (k x k conv to R, then 1x1 to O).

    1x1 kernels run as one (B*H*W, C) x (C, O) matmul: XLA:CPU's convolution path runs their
    weight gradients 3-8x slower than the same dot (bench/RESNET.md).
    """
    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    dtype: Dtype = jnp.float32
    peft: PeftSpec = NO_PEFT

    def _conv(self, x_BHWC, kernel, strides):
        if kernel.shape[:2] == (1, 1):  # one matmul over the pixels (class docstring)
            x_BHWC = x_BHWC[:, ::strides[0], ::strides[1], :]
            return matmul(x_BHWC, kernel[0, 0], self.dtype)
        pad = [((k - 1) // 2, k // 2) for k in kernel.shape[:2]]
        return jax.lax.conv_general_dilated(
            x_BHWC.astype(self.dtype), kernel.astype(self.dtype), strides, pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=jnp.float32)

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, deterministic: bool = True) -> jax.Array:
        in_channels = x_BHWC.shape[-1]
        shape = (*self.kernel_size, in_channels, self.features)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                (None, None, ax.CONV_IN, ax.CONV_OUT)),
            shape)
        y = self._conv(x_BHWC, kernel, self.strides)
        if self.peft.is_lora_target(self.scope.path):
            rank = self.peft.lora_rank_of(self.scope.path)
            a = _peft_variable(self, "lora_a", lora_a_init, (*self.kernel_size, in_channels, rank),
                               (None, None, ax.CONV_IN, ax.RANK))
            b = _peft_variable(self, "lora_b", nn.initializers.zeros, (1, 1, rank, self.features),
                               (None, None, ax.RANK, ax.CONV_OUT))
            dropped = Dropout(self.peft.lora_dropout)(x_BHWC, deterministic=deterministic)
            update = self.peft.lora_scale_of(self.scope.path) * self._conv(
                self._conv(dropped, a, self.strides), b, (1, 1))
            if self.peft.lora_dora:
                base = y if dropped is x_BHWC else self._conv(dropped, kernel, self.strides)
                update = _dora_update(self, kernel, a, b, self.scope.path, base, update)
            y = y + update
        return y


class Bottleneck(nn.Module):
    """Bottleneck adapter `h + up(act(down(h)))`, `up = 0` at init so it starts as identity.

    Its weights live in the `peft` collection. Works on any trailing feature axis.
    """
    size: int
    feature_axis: str = ax.EMBED
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h_BD: jax.Array) -> jax.Array:
        width = h_BD.shape[-1]
        down_DR = _peft_variable(self, "down_kernel", nn.initializers.normal(0.01),
                                 (width, self.size), (self.feature_axis, ax.RANK))
        down_bias_R = _peft_variable(self, "down_bias", nn.initializers.zeros,
                                     (self.size,), (ax.RANK,))
        up_RD = _peft_variable(self, "up_kernel", nn.initializers.zeros,
                               (self.size, width), (ax.RANK, self.feature_axis))
        up_bias_D = _peft_variable(self, "up_bias", nn.initializers.zeros,
                                   (width,), (self.feature_axis,))
        z_BR = gelu(add_bias(matmul(h_BD, down_DR, self.dtype), down_bias_R), approximate=False)
        return h_BD + add_bias(matmul(z_BR, up_RD, self.dtype), up_bias_D)


def layer_norm(name: str, eps: float, axis_name: str = ax.EMBED) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis_name,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,)))


def rms_norm(name: str, eps: float, axis_name: str = ax.EMBED) -> nn.RMSNorm:
    return nn.RMSNorm(
        epsilon=eps, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis_name,)))
