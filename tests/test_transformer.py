"""Transformer family: heads, causality, GQA, PEFT identity at init, axis names."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmx import paths
from lmx.models import transformer
from lmx.peft import PeftSpec

IDS = jnp.asarray(np.random.default_rng(0).integers(4, 128, size=(2, 7)), jnp.int32)
MASK = jnp.asarray([[1] * 7, [1] * 4 + [0] * 3], bool)


def _init(model):
    return nn.unbox(model.init(jax.random.key(0), IDS))


@pytest.mark.parametrize("size", ["bert-tiny", "gpt2-tiny", "llama-tiny"])
@pytest.mark.parametrize("task,shape", [("hidden", (2, 7, 32)), ("mlm", (2, 7, 128)),
                                        ("causal_lm", (2, 7, 128)),
                                        ("sequence_classification", (2, 5)),
                                        ("token_classification", (2, 7, 5))])
def test_heads_shapes_and_axis_names(size, task, shape):
    model = transformer.Transformer(transformer.size(size), task=task, num_labels=5)
    boxed = model.init(jax.random.key(0), IDS)
    specs = paths.flatten(nn.get_partition_spec(boxed))
    shapes = paths.flatten(nn.unbox(boxed))
    for path, spec in specs.items():
        assert isinstance(spec, jax.sharding.PartitionSpec), path
        assert len(spec) == shapes[path].ndim, path
    out = model.apply(nn.unbox(boxed), IDS, MASK)
    assert out.shape == shape
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("size", ["gpt2-tiny", "llama-tiny"])
def test_decoder_is_causal_through_gradients(size):
    model = transformer.Transformer(transformer.size(size), task="hidden")
    variables = _init(model)
    embed = variables["params"]["embed"]["token"]["embedding"]

    def output_at(position, table):
        v = {"params": {**variables["params"], "embed": {**variables["params"]["embed"],
                                                         "token": {"embedding": table}}}}
        return model.apply(v, IDS)[:, position].sum()

    # d out[t] / d embedding of token at t' must vanish for every t' > t.
    for t in range(IDS.shape[1]):
        grad_table = jax.grad(output_at, argnums=1)(t, embed)
        later_tokens = set(np.asarray(IDS[:, t + 1:]).ravel()) - set(np.asarray(IDS[:, :t + 1]).ravel())
        for token in later_tokens:
            assert not np.any(grad_table[token]), (t, token)
        assert np.any(grad_table[int(IDS[0, t])])


def test_encoder_is_not_causal():
    model = transformer.Transformer(transformer.size("bert-tiny"), task="hidden")
    variables = _init(model)
    grad = jax.grad(lambda x: model.apply(x, IDS)[:, 0].sum())(variables)
    last_token = int(IDS[0, -1])
    assert np.any(grad["params"]["embed"]["token"]["embedding"][last_token])


def test_padding_does_not_change_real_positions():
    model = transformer.Transformer(transformer.size("bert-tiny"), task="hidden")
    variables = _init(model)
    short = model.apply(variables, IDS[1:, :4])
    padded = model.apply(variables, IDS[1:], MASK[1:])
    np.testing.assert_allclose(padded[:, :4], short, atol=1e-6)


def test_grouped_query_attention_shapes():
    cfg = transformer.size("llama-tiny")
    variables = _init(transformer.Transformer(cfg, task="hidden"))
    attention = variables["params"]["layer_0"]["attention"]
    assert attention["query"]["kernel"].shape == (32, cfg.num_heads * cfg.head_dim)
    assert attention["key"]["kernel"].shape == (32, cfg.kv_heads * cfg.head_dim)
    assert cfg.kv_heads < cfg.num_heads


@pytest.mark.parametrize("size", ["bert-tiny", "llama-tiny"])
@pytest.mark.parametrize("spec", [
    PeftSpec(lora_rank=4, lora_targets=frozenset(
        {"layer_0/attention/query", "layer_1/mlp/down", "layer_0/attention/value"})),
    PeftSpec(adapter="houlsby", adapter_size=8),
    PeftSpec(adapter="pfeiffer", adapter_size=8),
])
def test_peft_at_init_is_bit_identical_to_base(size, spec):
    cfg = transformer.size(size)
    base = transformer.Transformer(cfg, task="sequence_classification", num_labels=3)
    adapted = transformer.Transformer(cfg, task="sequence_classification", num_labels=3, peft=spec)
    variables = _init(adapted)
    assert variables["peft"], "PEFT modules were not built"
    expected = base.apply({"params": variables["params"]}, IDS, MASK)
    np.testing.assert_array_equal(adapted.apply(variables, IDS, MASK), expected)
    # ...and the hook is live: a non-zero up-projection / B changes the output.
    # (Random, not constant: a constant shift across features is erased by the next LayerNorm.)
    leaves, treedef = jax.tree.flatten(variables["peft"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    perturbed = jax.tree.unflatten(
        treedef, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    changed = adapted.apply({**variables, "peft": perturbed}, IDS, MASK)
    assert not np.allclose(changed, expected)


def test_lora_is_the_explicit_formula():
    spec = PeftSpec(lora_rank=2, lora_alpha=8.0, lora_targets=frozenset({"layer_0/attention/query"}))
    model = transformer.Transformer(transformer.size("bert-tiny"), task="hidden", peft=spec)
    variables = _init(model)
    lora = variables["peft"]["layer_0"]["attention"]["query"]
    b = jax.random.normal(jax.random.key(1), lora["lora_b"].shape)
    peft = {"layer_0": {"attention": {"query": {"lora_a": lora["lora_a"], "lora_b": b}}}}
    merged = jax.tree.map(lambda x: x, variables["params"])  # a copy
    kernel = merged["layer_0"]["attention"]["query"]["kernel"]
    merged["layer_0"]["attention"]["query"]["kernel"] = kernel + 4.0 * lora["lora_a"] @ b
    base = transformer.Transformer(transformer.size("bert-tiny"), task="hidden")
    np.testing.assert_allclose(model.apply({"params": variables["params"], "peft": peft}, IDS),
                               base.apply({"params": merged}, IDS), atol=1e-5)


def test_soft_prompt_prepends_learned_tokens():
    spec = PeftSpec(num_prompt_tokens=3)
    model = transformer.Transformer(transformer.size("bert-tiny"), task="token_classification",
                                    num_labels=2, peft=spec)
    variables = _init(model)
    assert variables["peft"]["embed"]["prompt"].shape == (3, 32)
    out = model.apply(variables, IDS, MASK)
    assert out.shape == (2, 7, 2)
    moved = {**variables, "peft": jax.tree.map(lambda x: x[::-1], variables["peft"])}
    assert not np.allclose(model.apply(moved, IDS, MASK), out)


def test_gelu_explicit_vjp_matches_autodiff():
    from lmx.models.layers import gelu
    x = jnp.linspace(-6.0, 6.0, 1001)
    np.testing.assert_array_equal(gelu(x, approximate=False), nn.gelu(x, approximate=False))
    ours = jax.grad(lambda v: (gelu(v, approximate=False) * jnp.cos(v)).sum())(x)
    reference = jax.grad(lambda v: (nn.gelu(v, approximate=False) * jnp.cos(v)).sum())(x)
    np.testing.assert_allclose(ours, reference, atol=1e-6)


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_scanned_layers_equal_unrolled_outputs_and_grads(remat):
    import dataclasses as dc

    from lmx.models import transformer as tr
    cfg = tr.size("bert-tiny", dropout_rate=0.0, attention_dropout_rate=0.0)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 8)), jnp.int32)
    mask = jnp.ones((2, 8), bool).at[1, 5:].set(False)
    spec = PeftSpec(lora_rank=2, lora_targets=frozenset(f"layer_{i}/attention/query"
                                                        for i in range(2)))
    unrolled = tr.Transformer(cfg, task="sequence_classification", num_labels=3, peft=spec)
    variables = jax.tree.map(lambda x: x + 0.01, nn.unbox(unrolled.init(jax.random.key(0), ids)))
    scanned = tr.Transformer(dc.replace(cfg, scan_layers=True, remat=remat),
                             task="sequence_classification", num_labels=3,
                             peft=PeftSpec(lora_rank=2, lora_targets=frozenset(
                                 {"layers/block/attention/query"})))
    stacked = tr.stack_layers(variables, 2)
    boxed = scanned.init(jax.random.key(0), ids)
    assert jax.tree.structure(nn.unbox(boxed)) == jax.tree.structure(stacked)
    kernel_spec = nn.get_partition_spec(boxed)["params"]["layers"]["block"]["attention"]["query"]
    assert kernel_spec["kernel"][0] == "layers"  # the stacked axis has its own logical name
    np.testing.assert_allclose(scanned.apply(stacked, ids, mask), unrolled.apply(variables, ids, mask),
                               atol=1e-6)
    grads = jax.grad(lambda p: unrolled.apply({**variables, "peft": p}, ids, mask).sum())(
        variables["peft"])
    scanned_grads = jax.grad(lambda p: scanned.apply({**stacked, "peft": p}, ids, mask).sum())(
        stacked["peft"])
    back = tr.unstack_layers({"peft": scanned_grads}, 2)["peft"]
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(back)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("size", ["bert-tiny", "gpt2-tiny", "llama-tiny"])
def test_packed_rows_equal_each_document_alone(size):
    """Two documents packed in one row (segment ids, positions restarting) give each
    document's hidden states exactly as it gives them alone: attention never crosses the
    segment boundary and positions restart (learned and RoPE)."""
    from lmx.data import batching
    model = transformer.Transformer(transformer.size(size), task="hidden")
    variables = _init(model)
    rng = np.random.default_rng(1)
    docs = [rng.integers(4, 128, size=n).astype(np.int32) for n in (5, 3)]
    packed = batching.pack(docs, seq_len=10, pad_id=0)
    assert packed["ids"].shape == (1, 10)
    hidden_BTD = model.apply(variables, jnp.asarray(packed["ids"]),
                             jnp.asarray(packed["segment_ids"] > 0),
                             positions_BT=jnp.asarray(packed["positions"]),
                             segment_ids_BT=jnp.asarray(packed["segment_ids"]))
    start = 0
    for doc in docs:
        alone_1LD = model.apply(variables, jnp.asarray(doc[None]))
        np.testing.assert_allclose(hidden_BTD[0, start:start + len(doc)], alone_1LD[0],
                                   atol=1e-5, rtol=1e-5)
        start += len(doc)
