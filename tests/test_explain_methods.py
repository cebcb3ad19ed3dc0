"""Each explanation method on toy functions with known answers and on tiny models, jitted
and not: attributions, attention rollout / flow, Grad-CAM, adapter statistics, words."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmx import peft as peft_lib
from lmx.explain import adapter_diff, attention, attributions as attr, gradcam, text
from lmx.explain.target import candidates, to_words
from lmx.models import resnet, transformer

RNG = np.random.default_rng(0)
W_TD = jnp.asarray(RNG.normal(size=(5, 3)), jnp.float32)


def linear(context, x_BTD):  # logits (B, 2): [0, sum(w x)]
    f_B = jnp.einsum("btd,td->b", x_BTD, context["w"])
    return jnp.stack([jnp.zeros_like(f_B), f_B], axis=-1)


def cubic(context, x_BTD):
    f_B = jnp.einsum("btd,td->b", x_BTD ** 3, context["w"])
    return jnp.stack([jnp.zeros_like(f_B), f_B], axis=-1)


@pytest.mark.parametrize("jit", [True, False])
def test_gradient_methods_on_a_linear_function(jit):
    x = jnp.asarray(RNG.normal(size=(2, 5, 3)), jnp.float32)
    base = jnp.asarray(RNG.normal(size=(2, 5, 3)), jnp.float32)
    target, ctx = jnp.ones(2, jnp.int32), {"w": W_TD}
    call = (lambda fn, **kw: attr.jitted(fn, **kw)) if jit else (
        lambda fn, **kw: functools.partial(fn, **kw))
    np.testing.assert_allclose(call(attr.saliency)(linear, ctx, x, target), np.broadcast_to(W_TD, x.shape), rtol=1e-6)
    np.testing.assert_allclose(call(attr.grad_x_input)(linear, ctx, x, target), x * W_TD[None], rtol=1e-6)
    ig = call(attr.integrated_gradients, steps=4)(linear, ctx, x, target, base)
    np.testing.assert_allclose(ig.attribution, (x - base) * W_TD[None], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ig.gap_B, 0.0, atol=1e-5)
    sg = call(attr.smoothgrad, samples=4)(linear, ctx, x, target, jax.random.key(0))
    np.testing.assert_allclose(sg, np.broadcast_to(W_TD, x.shape), rtol=1e-5)
    drops = call(attr.occlusion)(linear, ctx, x, target, base, attr.token_masks(5))
    np.testing.assert_allclose(drops, ((x - base) * W_TD[None]).sum(-1), rtol=1e-5, atol=1e-5)


def test_ig_rules_completeness_on_a_cubic():
    x = jnp.asarray(RNG.normal(size=(2, 5, 3)), jnp.float32)
    target, ctx, zero = jnp.ones(2, jnp.int32), {"w": W_TD}, jnp.zeros_like(x)
    exact = attr.integrated_gradients(cubic, ctx, x, target, zero, steps=2)
    np.testing.assert_allclose(exact.gap_B, 0.0, atol=1e-4)  # Gauss-Legendre: exact on degree 3 (the integrand is degree 2)
    gaps = [abs(float(attr.integrated_gradients(cubic, ctx, x, target, zero, steps=s,
                                                rule="riemann_trapezoid").gap_B[0]))
            for s in (4, 16)]
    assert gaps[1] < gaps[0] / 10 and gaps[0] > 1e-3, gaps
    alphas, weights = attr.integration_rule(8, "riemann_middle")
    np.testing.assert_allclose(weights.sum(), 1.0)


def _bert_tiny(pooling="cls", causal_size="bert-tiny", peft=peft_lib.NO_PEFT):
    cfg = transformer.size(causal_size, dropout_rate=0.0, attention_dropout_rate=0.0)
    module = transformer.Transformer(cfg, task="sequence_classification", num_labels=3,
                                     pooling=pooling, peft=peft)
    variables = nn.unbox(module.init(jax.random.key(1), jnp.zeros((1, 8), jnp.int32)))
    ids = jnp.asarray(RNG.integers(4, 128, (3, 8)), jnp.int32)
    mask = jnp.asarray(np.arange(8)[None] < np.array([[8], [6], [5]]))
    batch = {"ids": ids, "mask": mask, "token_types": jnp.zeros_like(ids),
             "candidate": np.asarray(mask)}
    return module, variables, batch


@pytest.mark.parametrize("baseline", ["zero", "pad", "mask"])
def test_ig_completeness_on_a_tiny_transformer(baseline):
    module, variables, batch = _bert_tiny()
    _, extras = text.scores("integrated_gradients", module, variables, batch, jnp.array([0, 1, 2]),
                            text.Options(ig_steps=32, baseline=baseline, mask_id=5))
    assert np.all(np.abs(extras["gap"]) < 0.01 * np.abs(extras["delta"])), extras


def test_token_position_explains_that_tokens_tag_only():
    """A NER tag at position 3 of a causal (decoder) tagger depends on tokens 0..3 only: IG
    and occlusion give the later tokens exactly 0, IG is complete for that token's logit, and
    the scores differ from the sequence-pooled explanation's."""
    cfg = transformer.size("gpt2-tiny", dropout_rate=0.0, attention_dropout_rate=0.0)
    module = transformer.Transformer(cfg, task="token_classification", num_labels=5)
    variables = nn.unbox(module.init(jax.random.key(1), jnp.zeros((1, 8), jnp.int32)))
    ids = jnp.asarray(RNG.integers(4, 128, (2, 8)), jnp.int32)
    batch = {"ids": ids, "mask": jnp.ones_like(ids, bool), "token_types": jnp.zeros_like(ids),
             "candidate": np.ones(ids.shape, bool)}
    target = jnp.array([1, 4])
    options = text.Options(ig_steps=32, baseline="zero")
    ig, extras = text.scores("integrated_gradients", module, variables, batch, target, options,
                             position=3)
    assert np.abs(ig[:, 4:]).max() == 0.0 and np.abs(ig[:, :4]).min() > 0
    assert np.all(np.abs(extras["gap"]) < 0.01 * np.abs(extras["delta"])), extras
    occlusion, _ = text.scores("occlusion", module, variables, batch, target, options, position=3)
    # occlusion is a difference of two forward passes: float noise (~1e-8), not influence
    assert np.abs(occlusion[:, 4:]).max() < 1e-6 < 1e-3 < np.abs(occlusion[:, :4]).max()
    with pytest.raises(ValueError, match="position="):
        text.scores("rollout", module, variables, batch, target, options, position=3)


@pytest.mark.parametrize("size", ["bert-tiny", "gpt2-tiny", "llama-tiny"])
def test_rollout_rows_sum_to_one_and_decoders_stay_causal(size):
    module, variables, batch = _bert_tiny("last" if size != "bert-tiny" else "cls", size)
    maps = attention.attention_maps(module, variables, batch["ids"], batch["mask"],
                                    batch["token_types"])
    assert maps.shape == (2, 3, 8, 8)
    r = np.asarray(attention.rollout(maps))
    np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-5)
    one_layer = np.asarray(attention.rollout(maps[:1]))
    np.testing.assert_allclose(one_layer, 0.5 * np.asarray(maps[0]) + 0.5 * np.eye(8), atol=1e-6)
    if size != "bert-tiny":
        assert np.abs(np.triu(r, k=1)).max() < 1e-7
    flow = attention.flow_scores(maps, batch["mask"], module.pooling)
    assert np.all(flow >= 0) and np.all(flow[np.asarray(~batch["mask"])] == 0)


def test_flow_of_one_layer_is_the_edge_and_two_layers_take_the_bottleneck():
    a = np.array([[[[0.6, 0.4], [0.0, 1.0]]]], np.float32)  # (N=1, B=1, T, S)
    mask = np.ones((1, 2), bool)
    mixed = np.asarray(attention.with_residual(jnp.asarray(a)))[0, 0]
    np.testing.assert_allclose(attention.flow_scores(a, mask, "cls")[0], mixed[0], atol=1e-6)
    two = np.concatenate([a, a], axis=0)
    flow = attention.flow_scores(two, mask, "cls")[0]
    # input 1 reaches output 0 via 1 -> 0 -> 0 (min(.2, .8)) or 1 -> 1 -> 0 (min(1, .2)).
    np.testing.assert_allclose(flow[1], min(mixed[0, 1], mixed[0, 0]) + min(mixed[1, 1], mixed[0, 1]), atol=1e-5)
    assert flow[0] <= 1.0 + 1e-6


@pytest.mark.parametrize("jit", [True, False])
def test_grad_cam_is_exact_for_a_pooled_linear_head(jit):
    module = resnet.ResNet(resnet.size("resnet-tiny"), num_labels=4)
    images = jnp.asarray(RNG.normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = nn.unbox(module.init(jax.random.key(0), images))
    target = jnp.array([1, 3])
    fn = gradcam.grad_cam_jit if jit else gradcam.grad_cam
    cam = fn(module, variables, images, target)
    h, w = cam.raw_BHW.shape[1:]
    kernel, bias = (variables["params"]["head"]["classifier"][k] for k in ("kernel", "bias"))
    np.testing.assert_allclose(cam.weights_BC, kernel[:, target].T / (h * w), rtol=1e-5)
    chosen = cam.logits_BL[jnp.arange(2), target]
    np.testing.assert_allclose(cam.raw_BHW.sum((1, 2)), chosen - bias[target], rtol=1e-4, atol=1e-5)
    assert cam.heatmap_BHW.shape == (2, 32, 32) and float(cam.heatmap_BHW.max()) == pytest.approx(1.0)


def _lora(module, variables):
    spec = peft_lib.PeftSpec(lora_rank=2, lora_alpha=4.0, lora_targets=frozenset(
        {"layer_0/attention/query", "layer_1/mlp/up"}))
    lora_module = module.clone(peft=spec)
    lora_vars = nn.unbox(lora_module.init(jax.random.key(2), jnp.zeros((1, 8), jnp.int32)))
    return lora_module, {**lora_vars, "params": variables["params"]}


def test_lora_update_stats_and_output_magnitudes():
    module, variables, batch = _bert_tiny()
    lora_module, lora_vars = _lora(module, variables)
    args = (batch["ids"], batch["mask"], batch["token_types"])
    at_init = adapter_diff.output_magnitudes(lora_module, lora_vars, *args)
    assert set(at_init) == {"layer_0/attention/query", "layer_1/mlp/up"}
    assert all(v == 0.0 for v in at_init.values())  # B = 0: no change yet
    b = lora_vars["peft"]["layer_0"]["attention"]["query"]["lora_b"]
    u = jnp.asarray(RNG.normal(size=(b.shape[1],)), jnp.float32)
    lora_vars["peft"]["layer_0"]["attention"]["query"]["lora_b"] = jnp.stack([u, 0 * u])
    rows = {r["module"]: r for r in adapter_diff.lora_update_stats(lora_vars, lora_module.peft)}
    q = rows["layer_0/attention/query"]
    a = lora_vars["peft"]["layer_0"]["attention"]["query"]["lora_a"]
    delta = 2.0 * np.outer(a[:, 0], u)  # scale alpha / r = 2, rank one
    w = variables["params"]["layer_0"]["attention"]["query"]["kernel"]
    assert q["relative_norm"] == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(w), rel=1e-5)
    assert q["effective_rank"] == pytest.approx(1.0, abs=1e-4)
    assert rows["layer_1/mlp/up"]["relative_norm"] == 0.0
    moved = adapter_diff.output_magnitudes(lora_module, lora_vars, *args)
    assert moved["layer_0/attention/query"] > 0 and moved["layer_1/mlp/up"] == 0.0
    assert adapter_diff.layers_moved_most(list(rows.values()))[0][0] == "layer_0"


def test_bottleneck_adapter_magnitude_and_base_vs_adapted_attributions():
    module, variables, batch = _bert_tiny()
    houlsby = module.clone(peft=peft_lib.PeftSpec(adapter="houlsby", adapter_size=4))
    h_vars = nn.unbox(houlsby.init(jax.random.key(3), jnp.zeros((1, 8), jnp.int32)))
    h_vars = {**h_vars, "params": variables["params"]}
    args = (batch["ids"], batch["mask"], batch["token_types"])
    mags = adapter_diff.output_magnitudes(houlsby, h_vars, *args)
    assert len(mags) == 4 and all(v == 0.0 for v in mags.values())
    target = jnp.array([0, 1, 2])
    base, _ = text.scores("grad_x_input", module, variables, batch, target, text.Options())
    same, _ = text.scores("grad_x_input", houlsby, h_vars, batch, target, text.Options())
    np.testing.assert_allclose(same, base, rtol=1e-5, atol=1e-7)  # up = 0: adapter is identity
    adapter = h_vars["peft"]["layer_1"]["adapter_mlp"]
    # random, not constant: LayerNorm would cancel a constant shift of every feature
    for name in ("up_kernel", "down_kernel"):
        adapter[name] = jnp.asarray(RNG.normal(size=adapter[name].shape), jnp.float32)
    moved, _ = text.scores("grad_x_input", houlsby, h_vars, batch, target, text.Options())
    assert np.abs(moved - base).max() > 0.01 * np.abs(base).max()  # relative: scale-free
    assert adapter_diff.output_magnitudes(houlsby, h_vars, *args)["layer_1/adapter_mlp"] > 0


def test_words_and_candidates():
    words = to_words(["i", "lost", "my", "card", "##holder", "##s"], np.array([1, 2, 3, 4, 5, 6.0]))
    assert words == [("i", 1.0), ("lost", 2.0), ("my", 3.0), ("cardholders", 15.0)]
    vocab = ["[PAD]", "[CLS]", "[SEP]", "a", "b"]
    got = candidates(np.array([[1, 3, 4, 2, 0]]), np.array([[1, 1, 1, 1, 0]]), vocab)
    np.testing.assert_array_equal(got, [[False, True, True, False, False]])
