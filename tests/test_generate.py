"""lmx.models.generate against transformers' generate and against cache-free recomputation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_hf_models import reference

import lmx.hf
from lmx.models import generate as gen

NEW = 32


def left_padded_prompts(seed=3):
    rng = np.random.default_rng(seed)
    ids_BT = rng.integers(3, 99, (3, 7)).astype(np.int32)
    mask_BT = np.ones_like(ids_BT)
    mask_BT[1, :2] = 0  # left padding
    mask_BT[2, :5] = 0
    return np.where(mask_BT == 1, ids_BT, 0).astype(np.int32), mask_BT


def _decoder(family, tmp_path_factory):
    folder = tmp_path_factory.mktemp(family)
    hf_model = reference(family, "causal_lm", folder)
    module, variables = lmx.hf.from_pretrained(folder)
    return family, hf_model, module, variables


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def decoder(request, tmp_path_factory):
    return _decoder(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):  # sampling does not depend on the family: one is enough
    return _decoder("llama", tmp_path_factory)


def test_greedy_equals_transformers_generate(decoder):
    family, hf_model, module, variables = decoder
    ids_BT, mask_BT = left_padded_prompts()
    with torch.no_grad():
        expected = hf_model.generate(
            input_ids=torch.tensor(ids_BT, dtype=torch.long),
            attention_mask=torch.tensor(mask_BT, dtype=torch.long), do_sample=False,
            max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=0, eos_token_id=None)
    expected_BN = expected[:, ids_BT.shape[1]:].numpy()
    actual_BN = np.asarray(gen.generate(module, variables, ids_BT, mask_BT, max_new_tokens=NEW))
    print(f"{family}: first row {actual_BN[0][:12]}")
    np.testing.assert_array_equal(actual_BN, expected_BN)


def test_cache_equals_full_recomputation(decoder):
    _, _, module, variables = decoder
    ids_BT, mask_BT = left_padded_prompts(seed=5)
    cached = gen.generate(module, variables, ids_BT, mask_BT, max_new_tokens=12)
    recomputed = gen.full_recompute_greedy(module, variables, jnp.asarray(ids_BT),
                                           jnp.asarray(mask_BT), 12)
    np.testing.assert_array_equal(cached, recomputed)


def test_eos_stops_a_row_and_pads_it(decoder):
    _, _, module, variables = decoder
    ids_BT, mask_BT = left_padded_prompts()
    free = np.asarray(gen.generate(module, variables, ids_BT, mask_BT, max_new_tokens=NEW))
    eos = int(free[0, 4])
    stopped = np.asarray(gen.generate(module, variables, ids_BT, mask_BT, max_new_tokens=NEW,
                                      eos_id=eos, pad_id=-1))
    for row_free, row in zip(free, stopped):
        hits = np.flatnonzero(row_free == eos)
        end = hits[0] + 1 if len(hits) else NEW
        np.testing.assert_array_equal(row[:end], row_free[:end])
        assert (row[end:] == -1).all()
    assert (stopped[0, 5:] == -1).all()


def test_sampling_filters(llama):
    _, _, module, variables = llama
    ids_BT, mask_BT = left_padded_prompts()
    greedy = gen.generate(module, variables, ids_BT, mask_BT, max_new_tokens=8)
    top1 = gen.generate(module, variables, ids_BT, mask_BT, max_new_tokens=8,
                        sampling=gen.Sampling(temperature=0.7, top_k=1), rng=jax.random.key(1))
    nucleus = gen.generate(module, variables, ids_BT, mask_BT, max_new_tokens=8,
                           sampling=gen.Sampling(temperature=1.0, top_p=1e-6),
                           rng=jax.random.key(2))
    np.testing.assert_array_equal(top1, greedy)
    np.testing.assert_array_equal(nucleus, greedy)
    hot = [gen.generate(module, variables, ids_BT, mask_BT, max_new_tokens=8,
                        sampling=gen.Sampling(temperature=5.0), rng=jax.random.key(k))
           for k in (3, 3, 4)]
    np.testing.assert_array_equal(hot[0], hot[1])  # same key, same sample
    assert not np.array_equal(hot[0], hot[2])


def test_filter_logits_top_k_and_top_p():
    logits_BV = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda s: np.isfinite(np.asarray(gen.filter_logits(logits_BV, s))) & (
        np.asarray(gen.filter_logits(logits_BV, s)) > -1e30)
    np.testing.assert_array_equal(kept(gen.Sampling(1.0, top_k=2)), [[1, 1, 0, 0]])
    np.testing.assert_array_equal(kept(gen.Sampling(1.0, top_p=0.7)), [[1, 1, 0, 0]])
    np.testing.assert_array_equal(kept(gen.Sampling(1.0, top_p=0.81)), [[1, 1, 1, 0]])


def test_sharded_generation_equals_unsharded_and_shards_the_cache(llama):
    import flax.linen as nn

    from lmx.models.transformer import CACHE
    from lmx.scale import sharding
    _, _, module, variables = llama
    ids_BT, mask_BT = left_padded_prompts()
    ids_BT, mask_BT = np.tile(ids_BT, (2, 1)), np.tile(mask_BT, (2, 1))  # batch 6 over 2 rows
    unsharded = gen.generate(module, variables, ids_BT, mask_BT, max_new_tokens=6)
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 1), ("tensor", -1)), jax.devices()[:4])
    rules = sharding.rules_for("fsdp_tensor")
    batch_sh = sharding.batch_sharding(mesh, rules, 2)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        ids, mask = jax.device_put(ids_BT, batch_sh), jax.device_put(mask_BT, batch_sh)
        sharded = gen.generate(module, variables, ids, mask, max_new_tokens=6)
        cache = gen.init_cache(module, variables, 6, 13)
        _, state = jax.jit(lambda c: module.apply(
            {**variables, CACHE: c}, ids, mask, positions_BT=gen.prompt_positions(mask),
            decode="prefill", mutable=[CACHE]))(cache)
    np.testing.assert_array_equal(sharded, unsharded)
    key_cache = state[CACHE]["layer_0"]["attention"]["cached_key"]
    spec = key_cache.sharding.spec
    assert spec[0] in ("data", ("data",), ("data", "fsdp")), spec  # batch axis sharded
    assert key_cache.sharding.shard_shape(key_cache.shape)[0] == 3
    assert spec[2] == "tensor", spec  # kv heads over the tensor axis, like activations
