"""A planted trigger token decides the label: a trained model's attributions must find it,
a random one's must not; AOPC and the randomisation check score the explainers."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmx.explain import faithfulness, text
from lmx.explain.target import TextLogits, embed, text_context
from lmx.models import transformer

TRIGGER, CLS, T, VOCAB = 3, 1, 12, 32


def _sentences(n, seed):
    """[CLS] + 5..11 random tokens (4..31); label 1 iff one trigger token is planted."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, T), np.int32)
    mask = np.zeros((n, T), bool)
    labels = rng.integers(0, 2, n).astype(np.int32)
    for b in range(n):
        length = int(rng.integers(6, T + 1))
        ids[b, 0], ids[b, 1:length] = CLS, rng.integers(4, VOCAB, length - 1)
        mask[b, :length] = True
        if labels[b]:
            ids[b, rng.integers(1, length)] = TRIGGER
    batch = {"ids": ids, "mask": mask, "token_types": np.zeros_like(ids),
             "candidate": mask & (ids != CLS)}
    return batch, labels


def _module():
    cfg = transformer.size("bert-tiny", vocab_size=VOCAB, max_len=T, dropout_rate=0.0,
                           attention_dropout_rate=0.0)
    return transformer.Transformer(cfg, task="sequence_classification", num_labels=2)


@functools.lru_cache(maxsize=None)
def _trained():
    """300 Adam steps (measured: test accuracy 1.000 at about 5 s on 2 cores)."""
    module = _module()
    params = nn.unbox(module.init(jax.random.key(0), jnp.zeros((1, T), jnp.int32)))
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, ids, mask, labels):
        def loss_of(p):
            logits = module.apply(p, ids, mask)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        grads = jax.grad(loss_of)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    batch, labels = _sentences(300 * 32, seed=1)
    opt_state = tx.init(params)
    for i in range(300):
        s = slice(32 * i, 32 * (i + 1))
        params, opt_state = step(params, opt_state, batch["ids"][s], batch["mask"][s], labels[s])
    return module, params


@pytest.fixture(scope="module")
def trigger_task():
    module, params = _trained()
    batch, labels = _sentences(128, seed=2)
    predicted, _ = text.predict(module, params, batch)
    return module, params, batch, labels, float((predicted == labels).mean())


def _hits(method, module, variables, batch, labels, jit=True):
    """Fraction of trigger sentences whose top-scored token is the trigger (explaining class 1)."""
    positive = labels == 1
    sub = {k: v[positive] for k, v in batch.items()}
    scores_BT, _ = text.scores(method, module, variables, sub, np.ones(positive.sum(), np.int32),
                               text.Options(ig_steps=32, jit=jit))
    top = np.where(sub["candidate"], scores_BT, -np.inf).argmax(-1)
    return float((sub["ids"][np.arange(len(top)), top] == TRIGGER).mean())


# grad x input is taken at the embedding layer's output: at the token embedding it is
# degenerate for post-LN encoders (see target.EmbeddingOutputLogits; measured there: the
# trigger was its top token in 26% of sentences).
@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "saliency",
                                    "grad_x_input"])
def test_trained_model_points_at_the_trigger_random_model_does_not(trigger_task, method):
    module, params, batch, labels, accuracy = trigger_task
    assert accuracy >= 0.97, accuracy
    assert _hits(method, module, params, batch, labels) >= 0.95
    random_params = nn.unbox(module.init(jax.random.key(7), jnp.zeros((1, T), jnp.int32)))
    assert _hits(method, module, random_params, batch, labels) < 0.5


def test_unjitted_equals_jitted_on_the_trigger_task(trigger_task):
    module, params, batch, labels, _ = trigger_task
    small = {k: v[:6] for k, v in batch.items()}
    for method in ("integrated_gradients", "grad_x_input", "occlusion", "saliency"):
        a, _ = text.scores(method, module, params, small, labels[:6], text.Options(ig_steps=8))
        b, _ = text.scores(method, module, params, small, labels[:6],
                           text.Options(ig_steps=8, jit=False))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=method)


def test_aopc_ig_beats_random_and_randomisation_changes_attributions(trigger_task):
    module, params, batch, labels, _ = trigger_task
    context = text_context(params, batch)
    x = embed(params, context["ids"])
    target = jnp.asarray(text.predict(module, params, batch)[0], jnp.int32)
    candidate = jnp.asarray(batch["candidate"])
    aopc = {}
    for method in ("integrated_gradients", "random"):
        scores_BT, _ = text.scores(method, module, params, batch, target, text.Options(ig_steps=16))
        comp, suff = faithfulness.aopc_jit(TextLogits(module), context, x, target,
                                           jnp.asarray(scores_BT), candidate)
        aopc[method] = (float(comp.mean()), float(suff.mean()))
    assert aopc["integrated_gradients"][0] > aopc["random"][0] + 0.1, aopc
    assert aopc["integrated_gradients"][1] < aopc["random"][1], aopc

    ig, _ = text.scores("integrated_gradients", module, params, batch, target,
                        text.Options(ig_steps=16))
    again, _ = text.scores("integrated_gradients", module, params, batch, target,
                           text.Options(ig_steps=16))
    shuffled = faithfulness.reinit_top_layers(module, params, 1, jax.random.key(3),
                                              jnp.zeros((1, T), jnp.int32))
    other, _ = text.scores("integrated_gradients", module, shuffled, batch, target,
                           text.Options(ig_steps=16))
    same = faithfulness.spearman(jnp.asarray(ig), jnp.asarray(again), candidate)
    changed = faithfulness.spearman(jnp.asarray(ig), jnp.asarray(other), candidate)
    np.testing.assert_allclose(same, 1.0, atol=1e-6)
    assert float(changed.mean()) < 0.5, float(changed.mean())


def test_top_tokens_deletes_ceil_fraction_of_candidates():
    scores = jnp.asarray([[9.0, 1.0, 5.0, 3.0, 0.0]])
    candidate = jnp.asarray([[False, True, True, True, False]])
    top = np.asarray(faithfulness.top_tokens(scores, candidate, (0.01, 0.5, 1.0)))
    np.testing.assert_array_equal(top[:, 0], [[0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 1, 1, 1, 0]])
