"""Attention kernels (config.model.attention) equal the einsum reference: the XLA
dot-product attention and the Pallas TPU splash kernel (interpreted on this CPU), with padding,
causal masks, packed segments and sliding windows, in values and gradients, alone, inside a
Transformer and sharded over 8 devices; what a kernel cannot do is refused."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmx.models import kernels, transformer
from lmx.peft import PeftSpec
from lmx.scale import sharding

B, T, N, G, K = 2, 128, 4, 2, 8  # splash tiles are multiples of 128 tokens


def _reference(q_BTNK, k_BSGK, v_BSGK, mask_BTS):
    """Dense softmax attention written out (the einsum kernel's math)."""
    k_BSNK = jnp.repeat(k_BSGK, N // G, axis=2)
    v_BSNK = jnp.repeat(v_BSGK, N // G, axis=2)
    scores_BNTS = jnp.einsum("btnk,bsnk->bnts", q_BTNK, k_BSNK) * K ** -0.5
    scores_BNTS = jnp.where(mask_BTS[:, None], scores_BNTS, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bnts,bsnk->btnk", jax.nn.softmax(scores_BNTS, -1), v_BSNK)


def _case(name):
    """(segments_BS, causal, sliding_window, mask_BTS) with padding in every case."""
    segments = np.ones((B, T), np.int32)
    segments[0, 90:] = 0  # right padding
    segments[1, :30] = 0  # left padding
    causal, window = name != "bidirectional", 24 if name == "sliding_window" else 0
    if name == "packed":
        segments[0, 40:90], segments[1, 70:] = 2, 2
    same = segments[:, :, None] == segments[:, None, :]
    mask = same & (segments[:, None, :] > 0)
    pos = np.arange(T)
    if causal:
        mask &= pos[None, :] <= pos[:, None]
    if window:
        mask &= pos[:, None] - pos[None, :] < window
    return jnp.asarray(segments), causal, window, jnp.asarray(mask)


def _qkv():
    keys = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(keys[0], (B, T, N, K)), jax.random.normal(keys[1], (B, T, G, K)),
            jax.random.normal(keys[2], (B, T, G, K)))


@pytest.mark.parametrize("name", ["causal", "bidirectional", "packed", "sliding_window"])
@pytest.mark.parametrize("kernel", ["xla", "splash"])
def test_kernel_equals_reference_in_values_and_gradients(kernel, name):
    segments_BS, causal, window, mask_BTS = _case(name)
    real_BT = (segments_BS > 0)[:, :, None, None]  # padded queries' outputs are unused

    def loss(fn):
        def of(q, k, v):
            out_BTNK = fn(q, k, v)
            return (jnp.where(real_BT, out_BTNK, 0.0) * jnp.cos(out_BTNK)).sum(), out_BTNK
        return jax.value_and_grad(of, argnums=(0, 1, 2), has_aux=True)(*_qkv())

    (_, ref), ref_grads = loss(lambda q, k, v: _reference(q, k, v, mask_BTS))
    (_, out), grads = loss(lambda q, k, v: kernels.attend(
        kernel, q, k, v, mask_BTS=mask_BTS, segments_BS=segments_BS, causal=causal,
        sliding_window=window))
    np.testing.assert_allclose(np.where(real_BT, out, 0), np.where(real_BT, ref, 0), atol=2e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=2e-5)
    if name == "packed":  # the packing is seen: ignoring segments gives other outputs
        _, causal_mask = None, _case("causal")[3]
        wrong = _reference(*_qkv(), causal_mask)
        assert np.abs(np.where(real_BT, wrong - ref, 0)).max() > 1e-2


def _model(kernel, size="llama-tiny", **peft):
    cfg = transformer.size(size, attention=kernel, dropout_rate=0.0,
                           attention_dropout_rate=0.0, max_len=T)
    return transformer.Transformer(cfg, task="hidden", peft=PeftSpec(**peft))


def _inputs():
    ids = jax.random.randint(jax.random.key(1), (4, T), 0, 128)
    mask = np.ones((4, T), bool)
    mask[1, 100:], mask[2, :50] = False, False
    segments = np.where(mask, 1, 0).astype(np.int32)
    segments[3, 60:] = 2  # row 3 packs two documents
    positions = np.where(segments[3] == 2, np.arange(T) - 60, np.arange(T))
    positions_BT = np.stack([np.arange(T)] * 3 + [positions])
    return ids, jnp.asarray(mask), jnp.asarray(segments), jnp.asarray(positions_BT)


@pytest.mark.parametrize("size", ["llama-tiny", "bert-tiny"])
def test_transformer_with_each_kernel_equals_einsum(size):
    ids, mask, segments, positions = _inputs()
    variables = _model("einsum", size).init(jax.random.key(0), ids)
    real = np.asarray(mask)[:, :, None]
    ref = _model("einsum", size).apply(variables, ids, mask, None, positions,
                                       segment_ids_BT=segments)
    for kernel in ("xla", "splash"):
        inited = _model(kernel, size).init(jax.random.key(0), ids[:1, :8])  # as build does
        assert jax.tree.map(np.shape, inited) == jax.tree.map(np.shape, variables)
        out = _model(kernel, size).apply(variables, ids, mask, None, positions,
                                         segment_ids_BT=segments)
        np.testing.assert_allclose(np.where(real, out, 0), np.where(real, ref, 0), atol=1e-5,
                                   err_msg=kernel)


def test_splash_sharded_over_8_devices_equals_einsum():
    ids, mask, segments, positions = _inputs()
    rules = sharding.RULE_PRESETS["fsdp_tensor"]
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
    variables = _model("einsum").init(jax.random.key(0), ids)
    ref = _model("einsum").apply(variables, ids, mask, None, positions, segment_ids_BT=segments)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        apply = jax.jit(lambda v, *a: _model("splash").apply(v, *a, segment_ids_BT=segments))
        out = apply(variables, ids, mask, None, positions)
        assert "shard_map" in str(jax.make_jaxpr(apply)(variables, ids, mask, None, positions))
    real = np.asarray(mask)[:, :, None]
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, ref, 0), atol=1e-5)


def test_what_a_kernel_cannot_do_is_refused():
    ids, mask, _, _ = _inputs()
    variables = _model("einsum").init(jax.random.key(0), ids)
    with pytest.raises(ValueError, match=r"'xla' cannot do attention probabilities"):
        _model("xla").apply(variables, ids, mask, mutable=["intermediates"])
    cfg = transformer.size("llama-tiny", attention="splash", attention_dropout_rate=0.1)
    with pytest.raises(ValueError, match=r"'splash' cannot do attention dropout"):
        transformer.Transformer(cfg).apply(variables, ids, mask, deterministic=False,
                                           rngs={"dropout": jax.random.key(0)})
    prefix = _model("einsum", num_prefix_tokens=2)
    prefixed = prefix.init(jax.random.key(0), ids)
    with pytest.raises(ValueError, match=r"'splash' cannot do a PEFT prefix"):
        _model("splash", num_prefix_tokens=2).apply(prefixed, ids, mask)
    # the xla kernel reads the full mask, prefix columns included: equal to einsum
    np.testing.assert_allclose(_model("xla", num_prefix_tokens=2).apply(prefixed, ids, mask),
                               prefix.apply(prefixed, ids, mask), atol=1e-5)
    with pytest.raises(ValueError, match=r"'cudnn' needs model.dtype 'bfloat16'"):
        _model("cudnn").apply(variables, ids, mask)
