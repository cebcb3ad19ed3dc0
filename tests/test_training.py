"""Training invariants: what is frozen stays bit-identical, has no optimizer state and no
gradient; sharded equals single-device; resume continues the uninterrupted run."""
import functools
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments import tiny_synthetic
from lmx import paths
from lmx.train import loop
from lmx.train.step import trainable_grads


def _config(method="lora", **train):
    config = tiny_synthetic.get_config(method)
    config.train.update(train)
    return config


def _steps(trainer, n):
    return trainer.steps(n)


def test_lora_run_learns_and_frozen_leaves_stay_bit_identical(tmp_path):
    trainer = loop.Trainer(_config("lora", learning_rate=3e-2), str(tmp_path))
    frozen_before = jax.tree.map(np.asarray, trainer.frozen)
    losses = _steps(trainer, 60)
    # (measured: 0.696 -> 0.221 mean over the first / last 10 steps)
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.2, losses
    _assert_unchanged(frozen_before, trainer.frozen)


def _assert_unchanged(before, after):
    after = paths.flatten(after)
    for path, value in paths.flatten(before).items():
        np.testing.assert_array_equal(np.asarray(after[path]), value, err_msg=path)


# Loss drop of each method's own parameters (no head trains: gpt2-tiny's output is its tied,
# frozen embedding) after 40 steps, below the untrained model's loss on the same 5 last
# batches (dropout 0, so the untrained loss has no noise). Measured on this planted corpus
# (2-core AMD EPYC): houlsby 0.15, pfeiffer 0.19, bitfit 0.27, prefix 0.13, ia3 0.08,
# prompt 0.03, ln_tuning 0.305, p_tuning 0.027 (LSTM encoder 0.027), prefix with projection 0.145
# nats; each margin is about half of that.
PEFT_MARGINS = {"houlsby": 0.07, "pfeiffer": 0.09, "bitfit": 0.13, "prefix": 0.06, "ia3": 0.04,
                "prompt": 0.015, "ln_tuning": 0.15, "p_tuning": 0.013, "prefix_projection": 0.07,
                "p_tuning_lstm": 0.013}
PEFT_OVERRIDES = {"p_tuning": {"encoder_hidden_size": 16},
                  "p_tuning_lstm": {"method": "p_tuning", "prompt_encoder": "lstm",
                                    "encoder_hidden_size": 16},
                  "prefix_projection": {"method": "prefix", "prefix_projection": True,
                                        "encoder_hidden_size": 16}}


@pytest.mark.parametrize("method", sorted(PEFT_MARGINS))
def test_peft_method_learns_a_planted_corpus_with_frozen_leaves_bit_identical(tmp_path, method):
    from test_tasks import _base
    (tmp_path / "corpus.txt").write_text("to be or not to be, that is the question.\n" * 50)
    c = _base(tmp_path, kind="text", tokenizer="char", train_file=str(tmp_path / "corpus.txt"),
              max_length=16)
    c.model.size, c.model.task, c.peft.method = "gpt2-tiny", "causal_lm", method
    c.peft.adapter_size, c.peft.num_prompt_tokens, c.train.learning_rate = 8, 8, 1e-1
    c.peft.update(PEFT_OVERRIDES.get(method, {}))
    trainer = loop.Trainer(c, str(tmp_path / "run"))
    trainable = paths.flatten(trainer.state.trainable)
    if method == "ln_tuning":
        assert trainable and all("norm/" in p for p in trainable), sorted(trainable)
    else:
        assert trainable and not any(p.startswith("params/") and not p.endswith("bias")
                                     for p in trainable), "only PEFT leaves train"
    frozen_before = jax.tree.map(np.asarray, trainer.frozen)
    initial = jax.tree.map(np.array, trainer.state.trainable)
    losses = _steps(trainer, 40)
    untrained = trainer.state.replace(trainable=jax.device_put(initial))
    loss_of = jax.jit(functools.partial(trainable_grads, model=trainer.model.module))
    stream = trainer.train_stream(35)
    with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
        before = [float(loss_of(untrained, trainer.frozen, trainer.device_batch(next(stream)),
                                jax.random.key(0))[0]) for _ in range(5)]
        grads = loss_of(untrained, trainer.frozen, trainer.device_batch(next(stream)),
                        jax.random.key(0))[3]
    drop = np.mean(before) - np.mean(losses[-5:])
    print(f"{method}: loss drop {drop:.4f}")
    assert drop > PEFT_MARGINS[method], (method, drop, before, losses[-5:])
    _assert_unchanged(frozen_before, trainer.frozen)
    if method == "bitfit":  # LayerNorm biases alone lower the loss 0.235 (vs 0.266): the drop
        # cannot tell whether the Dense biases learn, their gradient can. Measured norms at
        # init: out / down 0.7-0.8, value 0.08, up 0.05, query 2.6e-4; the key bias's is 0 up
        # to rounding (1.7e-11: softmax ignores a shift shared by every key of a query).
        dense = {p: float(np.linalg.norm(np.asarray(g))) for p, g in paths.flatten(grads).items()
                 if p.endswith("bias") and "norm" not in p and "/key/" not in p}
        assert len(dense) == 2 * 5 and min(dense.values()) > 1e-5, dense


def test_trainable_split_per_method(tmp_path):
    def trainable_paths(method):
        return set(paths.flatten(loop.Trainer(_config(method), str(tmp_path)).state.trainable))
    lora = trainable_paths("lora")
    assert {p for p in lora if p.startswith("params/")} == {
        "params/head/classifier/kernel", "params/head/classifier/bias"}
    assert "peft/layer_0/attention/query/lora_a" in lora
    assert all(p.endswith("bias") or p.startswith("params/head/") for p in trainable_paths("bitfit"))
    assert trainable_paths("prompt") >= {"peft/embed/prompt"}
    full = trainable_paths("full")
    assert len(full) == len(paths.flatten(loop.Trainer(_config("full"), str(tmp_path)).model.variables))


def test_optimizer_state_has_no_leaves_for_frozen_params(tmp_path):
    trainer = loop.Trainer(_config("lora"), str(tmp_path))
    n_trainable = len(jax.tree.leaves(trainer.state.trainable))
    n_frozen = len(jax.tree.leaves(trainer.frozen))
    assert n_frozen > n_trainable > 0
    opt_shapes = [x.shape for x in jax.tree.leaves(trainer.state.opt_state)]
    # Adam: mu and nu per trainable leaf, plus scalar counters only.
    assert len([s for s in opt_shapes if s != ()]) == 2 * n_trainable
    frozen_sizes = {np.prod(x.shape) for x in jax.tree.leaves(trainer.frozen)}
    trainable_sizes = {np.prod(x.shape) for x in jax.tree.leaves(trainer.state.trainable)}
    assert not ({np.prod(s) for s in opt_shapes if s != ()} - trainable_sizes)
    assert frozen_sizes - trainable_sizes  # e.g. the token embedding has no optimizer twin


def test_gradient_tree_holds_only_trainable_leaves(tmp_path):
    trainer = loop.Trainer(_config("lora"), str(tmp_path))
    batch = trainer.device_batch(next(trainer.train_stream(0)))
    step = functools.partial(trainable_grads, model=trainer.model.module)
    _, _, _, grads = jax.eval_shape(step, trainer.state, trainer.frozen, batch,
                                    jax.random.key(0))
    grad_paths = set(paths.flatten(grads))
    assert grad_paths == set(paths.flatten(trainer.state.trainable))
    assert not grad_paths & set(paths.flatten(trainer.frozen))
    assert not any(p.startswith("params/layer_") for p in grad_paths)
    # The frozen weights are a jit argument of their own and never donated (still alive after a
    # step), while the donated trainable state is consumed.
    old_trainable = jax.tree.leaves(trainer.state.trainable)
    _steps(trainer, 1)
    assert not any(x.is_deleted() for x in jax.tree.leaves(trainer.frozen))
    assert all(x.is_deleted() for x in old_trainable)


@pytest.mark.parametrize("preset", ["fsdp", "fsdp_tensor"])
def test_sharded_2x4_mesh_matches_single_device(tmp_path, preset):
    one = _config("lora", learning_rate=1e-2)
    one.mesh = (("data", 1), ("fsdp", 1), ("tensor", 1))
    single = loop.Trainer(one, str(tmp_path), devices=jax.devices()[:1])
    sharded_config = _config("lora", learning_rate=1e-2)
    sharded_config.sharding = preset
    sharded_config.mesh = (("data", 2), ("fsdp", 4), ("tensor", 1)) if preset == "fsdp" else \
        (("data", 2), ("fsdp", 1), ("tensor", 4))
    sharded = loop.Trainer(sharded_config, str(tmp_path))
    assert sharded.mesh.devices.shape == ((2, 4, 1) if preset == "fsdp" else (2, 1, 4))
    big = {p: x for p, x in paths.flatten(sharded.frozen).items() if x.ndim == 2}
    assert any(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
               for x in big.values()), "no weight is actually sharded"
    np.testing.assert_allclose(_steps(sharded, 5), _steps(single, 5), rtol=1e-5, atol=1e-5)


def test_resume_continues_the_uninterrupted_loss_curve(tmp_path, monkeypatch):
    config = _config("lora", num_steps=8, log_every=1, checkpoint_every=3, eval_every=100)

    def losses(workdir):
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return {r["step"]: r["loss"] for r in map(json.loads, f) if r["split"] == "train"}

    loop.run(config, str(tmp_path / "straight"))
    real_stream = loop.Trainer.train_stream

    def crashing_stream(self, start_step):  # the process dies while fetching step 6's batch
        for i, batch in enumerate(real_stream(self, start_step)):
            if start_step + i == 5:
                raise KeyboardInterrupt("simulated crash")
            yield batch

    monkeypatch.setattr(loop.Trainer, "train_stream", crashing_stream)
    with pytest.raises(KeyboardInterrupt):
        loop.run(config, str(tmp_path / "resumed"))
    monkeypatch.setattr(loop.Trainer, "train_stream", real_stream)
    loop.run(config, str(tmp_path / "resumed"))  # restores step 3, continues to 8
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(straight) == list(range(1, 9))
    for step in range(4, 9):
        np.testing.assert_allclose(resumed[step], straight[step], rtol=1e-6, err_msg=str(step))


def test_nan_loss_stops_the_run_naming_the_step(tmp_path):
    config = _config("lora", num_steps=5, learning_rate=1e30, log_every=1, grad_clip_norm=1e30)
    with pytest.raises(FloatingPointError, match=r"at step \d"):
        loop.run(config, str(tmp_path))


def test_batch_not_divisible_by_data_parallel_is_an_error(tmp_path):
    config = _config("lora", batch_size=12)
    with pytest.raises(ValueError, match="config.train.batch_size=12"):
        loop.Trainer(config, str(tmp_path))


def test_run_writes_outputs(tmp_path):
    results = loop.run(_config("lora", num_steps=6, log_every=2), str(tmp_path))
    for name in ("config.json", "metrics.jsonl", "curves.png", "results.json"):
        assert os.path.getsize(tmp_path / name) > 0, name
    assert os.listdir(tmp_path / "tensorboard")
    assert 0 < results["trainable_params"] < results["total_params"]
    assert results["trainable_percent"] == pytest.approx(
        100 * results["trainable_params"] / results["total_params"])
    assert results["adapter_bytes"] > 0
    assert set(results["validation"]) >= {"accuracy", "macro_f1", "loss"}


def test_resnet_lora_through_the_trainer_updates_batch_stats_keeps_base(tmp_path):
    from experiments import resnet_images
    trainer = loop.Trainer(resnet_images.get_config("runlocal,lora"), str(tmp_path))
    assert any("lora_a" in p for p in paths.flatten(trainer.state.trainable))
    frozen_before = jax.tree.map(np.asarray, trainer.frozen)
    stats_before = jax.tree.map(np.asarray, trainer.state.model_state)
    assert stats_before["batch_stats"]
    losses = _steps(trainer, 3)
    assert np.isfinite(losses).all()
    for path, before in paths.flatten(stats_before).items():
        assert not np.array_equal(np.asarray(paths.flatten(trainer.state.model_state)[path]),
                                  before), path
    for path, before in paths.flatten(frozen_before).items():
        np.testing.assert_array_equal(np.asarray(paths.flatten(trainer.frozen)[path]), before)


def test_final_evaluation_pass_is_reused_by_the_tasks_report(tmp_path, monkeypatch):
    """A classification run scores its validation split once at the end: `finish` (confusion
    report) reuses that pass for the same state; a new state is evaluated afresh."""
    config = tiny_synthetic.get_config("runlocal")
    config.train.num_steps, config.train.eval_every = 3, 100
    passes = []
    from lmx.tasks.classification import SequenceClassification
    real = SequenceClassification.eval_batches
    monkeypatch.setattr(SequenceClassification, "eval_batches",
                        lambda self, split: passes.append(len(split)) or real(self, split))
    results = loop.run(config, str(tmp_path))
    validation = results["data"]["validation_examples"]
    assert passes.count(validation) == 1, passes
    confusion = json.load(open(tmp_path / "confusion.json"))
    assert confusion["examples"] == validation
