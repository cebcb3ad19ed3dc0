"""lmx.models.generate against transformers' generate and against cache-free recomputation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_hf_models import DECODERS, reference

import lmx.hf
from lmx.models import generate as gen
from lmx.models.beam_search import beam_search

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


@pytest.fixture(scope="module", params=DECODERS)
def open_decoder(request, tmp_path_factory):  # windows of 4 slots: 39-slot sequences cross them
    return _decoder(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):  # sampling does not depend on the family: one is enough
    return _decoder("llama", tmp_path_factory)


def test_greedy_equals_transformers_generate(decoder):
    _check_greedy(*decoder)


def test_open_decoders_greedy_equals_transformers(open_decoder):
    """Qwen2 / Qwen3 / Mistral / Gemma 2 / Gemma 3: sliding windows, soft caps, q/k norms."""
    _check_greedy(*open_decoder)


def test_sliding_window_cache_equals_full_recomputation(open_decoder):
    _check_cache(*open_decoder[2:])


def _check_greedy(family, hf_model, module, variables):
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
    _check_cache(*decoder[2:])


def _check_cache(module, variables):
    """12 cached greedy steps equal recomputing the whole prefix at every step."""
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


BEAMS = [dict(num_beams=3, length_penalty=1.0, early_stopping=False),
         dict(num_beams=4, length_penalty=2.0, early_stopping=True),
         dict(num_beams=2, length_penalty=0.5, early_stopping="never")]


@pytest.mark.parametrize("settings", BEAMS, ids=["m3-lp1-heuristic", "m4-lp2-early",
                                                 "m2-lp0.5-never"])
def test_beam_search_equals_transformers(decoder, settings):
    eos, actual_BN = _check_beam(decoder, settings)
    assert any(eos in row for row in actual_BN) or settings["early_stopping"] == "never"


def test_open_decoders_beam_search_equals_transformers(open_decoder):
    _check_beam(open_decoder, BEAMS[0])


def _check_beam(decoder, settings):
    """Token-identical to transformers' beam search with an EOS that some beams emit."""
    family, hf_model, module, variables = decoder
    ids_BT, mask_BT = left_padded_prompts()
    free = np.asarray(gen.generate(module, variables, ids_BT, mask_BT, max_new_tokens=10))
    eos = int(free[0, 2])  # a token greedy decoding emits early: beams do finish
    with torch.no_grad():
        expected = hf_model.generate(
            input_ids=torch.tensor(ids_BT, dtype=torch.long),
            attention_mask=torch.tensor(mask_BT, dtype=torch.long), do_sample=False,
            max_new_tokens=10, pad_token_id=0, eos_token_id=eos, **settings)
    expected_BN = expected[:, ids_BT.shape[1]:].numpy()
    actual_BN, _ = beam_search(module, variables, ids_BT, mask_BT, max_new_tokens=10,
                               eos_id=eos, pad_id=-1, **settings)
    actual_BN = np.asarray(actual_BN)
    for row, want in zip(actual_BN, expected_BN):
        hits = np.flatnonzero(want == eos)
        end = hits[0] + 1 if len(hits) else len(want)
        np.testing.assert_array_equal(row[:end], want[:end])
        assert (row[end:] == -1).all()
    return eos, actual_BN


def _teacher_forced_logits(module, variables, ids_BT, mask_BT, next_BN):
    """Logits after the prompt and after each of `next_BN` fed through the cache: (B, N, V)."""
    from lmx.models.transformer import CACHE
    B, T = ids_BT.shape
    N = next_BN.shape[1]
    cache = gen.init_cache(module, variables, B, T + N)
    positions_BT = gen.prompt_positions(mask_BT)
    apply = jax.jit(lambda cache, ids, mask, positions, decode: module.apply(
        {**variables, CACHE: cache}, ids, mask, positions_BT=positions, decode=decode,
        mutable=[CACHE]), static_argnums=4)
    logits_BTV, state = apply(cache, ids_BT, mask_BT, positions_BT, "prefill")
    out = [logits_BTV[:, -1]]
    for i in range(N - 1):
        logits_B1V, state = apply(state[CACHE], next_BN[:, i:i + 1], np.ones((B, 1), bool),
                                  positions_BT[:, -1:] + 1 + i, "step")
        out.append(logits_B1V[:, 0])
    key = state[CACHE]["layer_0"]["attention"]["cached_key"]
    return np.stack([np.asarray(x) for x in out], axis=1), key.dtype


def test_bfloat16_kv_cache_is_close_to_float32_which_stays_exact(llama):
    """float32 cache: logits equal a cache-free forward (1e-5). bfloat16 cache (keys and
    values rounded to 8 mantissa bits): within 1% of the logits' range of float32's."""
    import dataclasses
    _, _, module, variables = llama
    ids_BT, mask_BT = left_padded_prompts()
    next_BN = np.random.default_rng(0).integers(3, 99, (3, 12)).astype(np.int32)
    exact, dtype32 = _teacher_forced_logits(module, variables, ids_BT, mask_BT, next_BN)
    half = module.clone(cfg=dataclasses.replace(module.cfg, kv_cache_dtype="bfloat16"))
    rounded, dtype16 = _teacher_forced_logits(half, variables, ids_BT, mask_BT, next_BN)
    assert (dtype32, dtype16) == (jnp.float32, jnp.bfloat16)
    full_BSV = np.asarray(module.apply(
        variables, np.concatenate([ids_BT, next_BN], 1),
        np.concatenate([mask_BT, np.ones_like(next_BN)], 1),
        positions_BT=gen.prompt_positions(np.concatenate([mask_BT, np.ones_like(next_BN)], 1))))
    T = ids_BT.shape[1]
    assert np.abs(full_BSV[:, T - 1:-1] - exact).max() <= 1e-5
    spread = exact.max() - exact.min()
    error = np.abs(rounded - exact).max()
    print(f"bf16 KV cache: max |logit error| {error:.2e}, logit range {spread:.2e}, "
          f"ratio {error / spread:.2e}")
    assert 0 < error <= 0.01 * spread
