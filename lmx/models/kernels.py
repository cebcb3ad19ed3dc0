"""Attention kernels chosen by `config.model.attention`, behind one function, `attend`.

"einsum" (the reference) stays in `Attention._attend`: it alone returns the attention
probabilities (explainability), applies attention dropout and serves decoding. The others:
  "xla":    `jax.nn.dot_product_attention(implementation="xla")`, on the full mask: padding,
            causal, packed segments, a PEFT prefix, sliding windows - whatever the mask says.
  "cudnn":  the same call, `implementation="cudnn"`: cuDNN flash attention (NVIDIA GPU,
            bf16 / fp16 inputs).
  "splash": the Pallas TPU splash-attention kernel (`jax.experimental.pallas.ops.tpu`):
            causal or full, a causal sliding window, padding and packing as segment ids
            (0 = padding); equal query and key lengths. On a device other than a TPU it runs
            interpreted (slow: tests only). Under a mesh it runs per shard (`shard_map`):
            batch over the batch axes, key/value heads over the heads axis.
A kernel asked for what it cannot do raises a ValueError naming the setting; nothing falls
back silently.

Axis legend: B batch, T query length, S key length, N query heads, G key/value heads,
Q = N // G query heads per group, K head dim.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lmx.scale import sharding as ax

KERNELS = ("einsum", "xla", "cudnn", "splash")
SPLASH_BLOCK = 512  # splash tile along T and S (smaller when the sequence is shorter)


def refuse_unsupported(kernel: str, *, dropout: float, probabilities: bool, prefix: int,
                       decode: str) -> None:
    """A ValueError for a request `kernel` cannot serve (the einsum reference serves all)."""
    if kernel not in KERNELS:
        raise ValueError(f"model.attention={kernel!r} is not one of {KERNELS}")
    if kernel == "einsum":
        return
    wanted = [what for what, asked in (
        (f"attention dropout (model.attention_dropout_rate={dropout})", dropout > 0),
        ("attention probabilities (the `intermediates` collection: lmx.explain)", probabilities),
        ("a PEFT prefix (peft.method='prefix')", prefix and kernel == "splash"),
        ("decoding with a KV cache", bool(decode) and kernel == "splash"))
        if asked]
    if wanted:
        raise ValueError(f"model.attention={kernel!r} cannot do {'; '.join(wanted)}: use "
                         "model.attention='einsum'")


def attend(kernel: str, q_BTNK: jax.Array, k_BSGK: jax.Array, v_BSGK: jax.Array, *,
           mask_BTS: jax.Array, segments_BS: jax.Array, causal: bool,
           sliding_window: int = 0, interpret: bool | None = None) -> jax.Array:
    """softmax(q k / sqrt(K) | mask) v as (B, T, N, K) float32, computed by `kernel`.

    `mask_BTS` is the full boolean mask (the xla / cudnn kernels read it); `segments_BS` the
    per-token segment ids (0 padding, 1 the real tokens of an unpacked row, 1, 2, ... packed
    documents) and `causal` / `sliding_window` the static structure splash builds its mask
    from (`mask_BTS` must agree with them). `interpret`: None = interpret splash off TPU.
    """
    if kernel in ("xla", "cudnn"):
        return _dot_product_attention(q_BTNK, k_BSGK, v_BSGK, mask_BTS, kernel)
    if kernel == "splash":
        return _splash(q_BTNK, k_BSGK, v_BSGK, segments_BS, causal, sliding_window, interpret)
    raise ValueError(f"lmx.models.kernels.attend: kernel {kernel!r} is not one of "
                     f"{KERNELS[1:]} (einsum is Attention._attend)")


def _dot_product_attention(q_BTNK, k_BSGK, v_BSGK, mask_BTS, implementation):
    if implementation == "cudnn" and q_BTNK.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"model.attention='cudnn' needs model.dtype 'bfloat16' or "
                         f"'float16', not {q_BTNK.dtype}")
    out_BTNK = jax.nn.dot_product_attention(
        q_BTNK, k_BSGK.astype(q_BTNK.dtype), v_BSGK.astype(q_BTNK.dtype),
        mask=mask_BTS[:, None], scale=q_BTNK.shape[-1] ** -0.5,
        implementation=implementation)
    return out_BTNK.astype(jnp.float32)


def _splash_kernel(T: int, Q: int, causal: bool, sliding_window: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash  # noqa: PLC0415
    block = min(SPLASH_BLOCK, T)
    if T % block:
        raise ValueError(f"model.attention='splash': sequence length {T} is not a multiple "
                         f"of its {block}-token tile; pad to a multiple (data.pad_multiple)")
    if sliding_window:
        if not causal:
            raise ValueError("model.attention='splash': sliding windows are causal only here")
        mask = splash.LocalMask((T, T), window_size=(sliding_window - 1, 0), offset=0)
    else:
        mask = splash.CausalMask((T, T)) if causal else splash.FullMask((T, T))
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block,
                              block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return splash.make_splash_mqa_single_device(
        splash.MultiHeadMask([mask] * Q), block_sizes=sizes, interpret=interpret), splash


def _splash(q_BTNK, k_BSGK, v_BSGK, segments_BS, causal, sliding_window, interpret):
    B, T, N, K = q_BTNK.shape
    S, G = k_BSGK.shape[1], k_BSGK.shape[2]
    if S != T:
        raise ValueError(f"model.attention='splash' needs as many keys as queries (got T={T}, "
                         f"S={S}: a prefix or a cache); use 'einsum' or 'xla'")
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    kernel, splash = _splash_kernel(T, N // G, causal, sliding_window, interpret)
    dt = q_BTNK.dtype
    q_BGQTK = (q_BTNK * K ** -0.5).astype(dt).reshape(B, T, G, N // G, K).transpose(0, 2, 3, 1, 4)
    k_BGSK = k_BSGK.astype(dt).transpose(0, 2, 1, 3)
    v_BGSK = v_BSGK.astype(dt).transpose(0, 2, 1, 3)
    segments_BS = segments_BS.astype(jnp.int32)

    def per_shard(q_BGQTK, k_BGSK, v_BGSK, segments_BS):
        per_group = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # MQA kernel per kv head
        per_row = jax.vmap(lambda q, k, v, s: per_group(q, k, v, splash.SegmentIds(s, s)))
        return per_row(q_BGQTK, k_BGSK, v_BGSK, segments_BS)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        out_BGQTK = per_shard(q_BGQTK, k_BGSK, v_BGSK, segments_BS)
    else:  # a Pallas call is opaque to the SPMD partitioner: run it on each shard
        batch, heads = nn.logical_to_mesh_axes((ax.BATCH, ax.HEADS))
        out_BGQTK = jax.shard_map(
            per_shard, mesh=mesh, check_vma=False,
            in_specs=(P(batch, heads), P(batch, heads), P(batch, heads), P(batch)),
            out_specs=P(batch, heads))(q_BGQTK, k_BGSK, v_BGSK, segments_BS)
    return out_BGQTK.transpose(0, 3, 1, 2, 4).reshape(B, T, N, K).astype(jnp.float32)
