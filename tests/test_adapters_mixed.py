"""Mixed-adapter batches: each row under its own LoRA + head equals that adapter run alone on
its rows (forward, and two optimizer steps, <= 1e-6 fp32); named <-> single-adapter layouts."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmx.adapters import mixed as mixed_lib
from lmx.models import transformer
from lmx.peft import PeftSpec
from lmx.train import mixed as mixed_step
from lmx.train.step import TrainState, train_step

B, T = 8, 6
IDS_B = np.array([2, 0, 1, 0, 2, 2, 1, 0])  # rows of adapters c, a, b interleaved


def layers(modules, n=2):
    return frozenset(f"layer_{i}/{m}" for i in range(n) for m in modules)


SPECS = {  # ranks, alphas, rsLoRA and targets all differ; three heads of 3, 5 and 4 classes
    "a": (PeftSpec(lora_rank=2, lora_alpha=4.0, lora_targets=layers(
        ["attention/query", "attention/value"])), 3),
    "b": (PeftSpec(lora_rank=4, lora_alpha=8.0, lora_rslora=True, lora_targets=layers(
        ["attention/value", "attention/out", "mlp/up"]) | {"pooler"}), 5),
    "c": (PeftSpec(lora_rank=3, lora_alpha=3.0, lora_targets=layers(
        ["attention/key", "mlp/down"])), 4),
}


@functools.cache
def setup():
    cfg = transformer.size("bert-tiny", dropout_rate=0.0, attention_dropout_rate=0.0,
                           use_pooler=True)
    base = transformer.Transformer(cfg, task="sequence_classification", num_labels=3)
    ids_BT = jax.random.randint(jax.random.key(0), (B, T), 1, cfg.vocab_size)
    params = nn.unbox(base.init(jax.random.key(1), ids_BT))["params"]
    frozen = {"params": {k: v for k, v in params.items() if k != "head"}}
    adapters, singles = {}, {}
    for i, (name, (spec, labels)) in enumerate(SPECS.items()):
        module = base.clone(peft=spec, num_labels=labels)
        variables = nn.unbox(module.init(jax.random.key(10 + i), ids_BT))
        keys = iter(jax.random.split(jax.random.key(20 + i), 100))  # B != 0, a non-zero bias
        trained = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape),
                               {"peft": variables["peft"],
                                "params": {"head": variables["params"]["head"]}})
        adapters[name] = mixed_lib.from_variables(spec, trained)
        singles[name] = (module, trained)
    mixed, stacked = mixed_lib.stack(adapters)
    model = base.clone(peft=mixed.spec, num_labels=max(mixed.num_labels))
    labels_B = jnp.array([[1, 4, 3][a] for a in IDS_B])
    batch = {"ids": ids_BT, "mask": jnp.ones((B, T), bool).at[1, 4:].set(False),
             "token_types": jnp.zeros((B, T), jnp.int32), "labels": labels_B,
             "weights": jnp.ones(B), "adapter_ids": jnp.asarray(IDS_B)}
    return model, mixed, stacked, frozen, adapters, singles, batch


def rows(batch, n):
    keep = np.flatnonzero(IDS_B == n)
    return {k: v[keep] for k, v in batch.items() if k != "adapter_ids"}


def test_mixed_forward_equals_each_adapter_alone():
    model, mixed, stacked, frozen, _, singles, batch = setup()
    logits_BC = mixed_step.mixed_forward(model, mixed, {**frozen, "peft": stacked}, batch)
    for n, (name, (module, trained)) in enumerate(singles.items()):
        variables = {"params": {**frozen["params"], **trained["params"]}, "peft": trained["peft"]}
        own = rows(batch, n)
        alone = module.apply(variables, own["ids"], own["mask"], own["token_types"])
        mine = logits_BC[IDS_B == n]
        labels = mixed.num_labels[n]
        np.testing.assert_allclose(mine[:, :labels], alone, atol=1e-6, rtol=0, err_msg=name)
        assert (mine[:, labels:] < -1e8).all()  # padded classes are off
    # the choice of adapters is data: another mixture reuses the compiled forward
    jitted = jax.jit(mixed_step.mixed_forward, static_argnums=(0, 1))
    jitted(model, mixed, {**frozen, "peft": stacked}, batch)
    jitted(model, mixed, {**frozen, "peft": stacked},
           {**batch, "adapter_ids": jnp.zeros(B, jnp.int32)})
    assert jitted._cache_size() == 1


def test_mixed_train_step_equals_each_adapter_trained_alone():
    model, mixed, stacked, frozen, adapters, singles, batch = setup()
    # SGD with momentum: Adam's m / sqrt(v) turns last-ulp differences of near-zero
    # gradients (mixed vs alone round differently) into 1e-5 differences of the update
    tx = optax.sgd(0.1, momentum=0.9)
    trainable = {"peft": stacked}
    state = TrainState(step=jnp.array(0), trainable=trainable,
                       opt_state=tx.init({**trainable, **frozen}), model_state={},
                       rng=jax.random.key(0))
    step = jax.jit(mixed_step.mixed_train_step, static_argnames=("model", "tx", "mixed"))
    for _ in range(2):
        state, metrics = step(state, frozen, batch, model=model, tx=tx, mixed=mixed)
    trained = mixed_lib.unstack(mixed, state.trainable["peft"], adapters)
    for n, (name, (module, own_trained)) in enumerate(singles.items()):
        own_state = TrainState(step=jnp.array(0), trainable=own_trained,
                               opt_state=tx.init({"peft": own_trained["peft"],
                                                  "params": {**frozen["params"],
                                                             **own_trained["params"]}}),
                               model_state={}, rng=jax.random.key(0))
        for _ in range(2):
            own_state, own_metrics = train_step(own_state, frozen, rows(batch, n),
                                                model=module, tx=tx)
        expected = mixed_lib.from_variables(module.peft, own_state.trainable).peft
        got, want = (jax.tree.leaves_with_path(t) for t in (trained[name].peft, expected))
        assert [p for p, _ in got] == [p for p, _ in want]
        for (path, g), (_, w) in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-6, rtol=0, err_msg=f"{name} {path}")
        np.testing.assert_allclose(metrics["loss_sum_N"][n] / metrics["count_N"][n],
                                   own_metrics["loss"], atol=1e-6)


def test_gradient_of_one_adapter_depends_only_on_its_rows():
    model, mixed, stacked, frozen, _, _, batch = setup()

    def loss(peft, batch):
        logits = mixed_step.mixed_forward(model, mixed, {**frozen, "peft": peft}, batch)
        return mixed_lib.mixed_loss(logits, batch, mixed.num_adapters)[0]

    grads = jax.grad(loss)(stacked, batch)
    other = {**batch, "ids": jnp.where((batch["adapter_ids"] == 0)[:, None], batch["ids"],
                                        (batch["ids"] * 7 + 3) % 128)}
    grads_other = jax.grad(loss)(stacked, other)
    a_query = ("layer_0", "attention", "query", "lora_b")
    g, g2 = grads, grads_other
    for key in a_query:
        g, g2 = g[key], g2[key]
    np.testing.assert_array_equal(g[0], g2[0])  # adapter a: its rows did not change
    assert np.abs(g[0]).max() > 0
    b_value = grads["layer_0"]["attention"]["value"]["lora_b"]
    b_value2 = grads_other["layer_0"]["attention"]["value"]["lora_b"]
    assert np.abs(b_value[1] - b_value2[1]).max() > 1e-4  # adapter b: its rows did change


def test_single_adapter_layout_round_trips():
    *_, adapters, singles, _ = setup()
    for name, (module, trained) in singles.items():
        spec, back = mixed_lib.to_variables(adapters[name])
        assert spec == module.peft and adapters[name].spec.head_in_peft
        assert jax.tree.structure(back) == jax.tree.structure(trained)
        jax.tree.map(np.testing.assert_array_equal, back, trained)
    with pytest.raises(ValueError, match="IA3"):
        ia3 = dataclasses.replace(adapters["a"].spec, ia3_targets=layers(["attention/key"]))
        mixed_lib.stack({**adapters, "x": mixed_lib.Adapter(ia3, adapters["a"].peft)})
