"""lmx's side of the bench: raw train steps, the end-to-end BANKING77 run, compile time.

Built from lmx's public pieces (`models.create`, `optim`, `train.train_step`, `loop.Trainer`)
because lmx does not expose its compiled train step for cost / memory analysis.
"""
from __future__ import annotations

import functools
import os
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from bench import measure
from bench.workloads import Suite, Workload
from experiments import banking77_lora
from lmx import config as config_lib, peft as peft_lib
from lmx.models import transformer
from lmx.scale import sharding
from lmx.train import build as models, loop, optim
from lmx.train.step import TRAINABLE_COLLECTIONS, TrainState, split, train_step


def _config(w: Workload, suite: Suite, method: str, dtype: str, model_dir: str):
    c = config_lib.base_config()
    c.model.family, c.model.size, c.model.dtype = w.family, w.size, dtype
    c.model.pretrained = model_dir
    c.model.pooling = w.pooling
    c.model.image_size = w.image_size or c.model.image_size
    c.peft.method = method  # LoRA: r=8, alpha=16, query/value (the schema's defaults)
    c.train.learning_rate = (suite.learning_rate_lora if method == "lora" else
                             suite.learning_rate_full)
    c.train.warmup_fraction = suite.warmup_fraction
    return c


def _state(module, variables, config, total_steps: int, abstract: bool = False):
    """(jitted step, state, frozen, labels): what `loop.Trainer` builds, without its data."""
    learnable = {k: v for k, v in variables.items() if k in TRAINABLE_COLLECTIONS}
    labels = optim.trainable_labels(learnable, peft_lib.trainable_patterns(config.peft),
                                    what="config.peft.trainable")
    tx = optim.make_optimizer(config.train, labels, total_steps)
    trainable, frozen = split(learnable, labels)
    opt_state = jax.eval_shape(tx.init, learnable) if abstract else jax.jit(tx.init)(learnable)
    step = (jax.ShapeDtypeStruct((), jnp.int32) if abstract else jnp.zeros((), jnp.int32))
    rng = jax.eval_shape(jax.random.key, 0) if abstract else jax.random.key(1)
    state = TrainState(step=step, trainable=trainable, opt_state=opt_state,
                       model_state={k: v for k, v in variables.items()
                                    if k not in TRAINABLE_COLLECTIONS}, rng=rng)
    jitted = jax.jit(functools.partial(train_step, model=module, tx=tx), donate_argnums=(0,))
    return jitted, state, frozen


def _saved_bytes(tree) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trainable")
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(path, tree)
        return measure.dir_bytes(path)


def raw_step(w: Workload, suite: Suite, method: str, dtype: str, model_dir: str,
             batch: dict[str, np.ndarray]) -> dict:
    """Compile, then the median time of one training step on a fixed batch."""
    config = _config(w, suite, method, dtype, model_dir)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    rules = sharding.rules_for(config.sharding)
    with measure.PeakRss() as rss, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        model = models.create(config, w.num_labels, mesh, rules, jax.random.key(0))
        jitted, state, frozen = _state(model.module, model.variables, config, total_steps=1000)
        device_batch = jax.device_put(batch)
        start = time.perf_counter()
        compiled = jitted.lower(state, frozen, device_batch).compile()
        compile_s = time.perf_counter() - start
        holder = [state]

        def one():
            holder[0], metrics = compiled(holder[0], frozen, device_batch)
            jax.block_until_ready((holder[0], metrics))

        timing = measure.median_seconds(one, warmup=suite.warmup, repeats=suite.repeats)
        state = holder[0]
    freeze_state = state.opt_state.inner_states.get(optim.FREEZE)
    return {"side": "lmx", "dtype": dtype, "compile_s": compile_s, **timing,
            **measure.xla_stats(compiled), **rss.result(),
            "trainable_params": models.count(state.trainable),
            "total_params": models.count(state.trainable) + models.count(frozen),
            "optimizer_state_bytes": measure.tree_bytes(state.opt_state),
            "frozen_optimizer_state_bytes": measure.tree_bytes(freeze_state),
            "saved_trainable_bytes": _saved_bytes(state.trainable)}


def compile_seconds(size: str, num_layers: int, scan: bool,
                    batch: dict[str, np.ndarray]) -> dict:
    """Lower + compile time of a full fine-tuning step (abstract shapes: no weights built)."""
    cfg = transformer.size(size, num_layers=num_layers, scan_layers=scan)
    module = transformer.Transformer(cfg, task="sequence_classification", num_labels=77)
    config = config_lib.base_config()
    config.peft.method = "full"
    ids = jnp.zeros((1, 8), jnp.int32)
    variables = jax.eval_shape(lambda k: nn.unbox(module.init({"params": k, "dropout": k}, ids)),
                               jax.random.key(0))
    jitted, state, frozen = _state(module, dict(variables), config, 1000, abstract=True)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    start = time.perf_counter()
    jitted.lower(state, frozen, shapes).compile()
    return {"size": size, "num_layers": num_layers, "scan_layers": scan,
            "compile_s": time.perf_counter() - start}


def end_to_end(suite: Suite, model_dir: str, dtype: str, workdir: str, train_file: str,
               epochs: float = 0) -> dict:
    """LoRA on BANKING77 through `loop.Trainer`: wall time from nothing to the last step
    (model load, tokenizing the whole train split, bucketing, compiles, steps)."""
    c = banking77_lora.get_config("")
    c.model.pretrained, c.model.dtype, c.data.train_file = model_dir, dtype, train_file
    c.model.pooling = "cls"  # as transformers' BertForSequenceClassification
    c.peft.lora.targets = config_lib.base_config().peft.lora.targets  # query/value, as PEFT's
    c.data.max_length, c.train.batch_size = suite.e2e_max_length, suite.e2e_batch_size
    c.train.learning_rate, c.train.warmup_fraction = suite.learning_rate_lora, suite.warmup_fraction
    c.train.num_steps = 0 if epochs else suite.e2e_steps
    c.train.num_epochs = float(epochs or c.train.num_epochs)
    with measure.PeakRss() as rss:
        start = time.perf_counter()
        trainer = loop.Trainer(c, workdir, devices=jax.devices()[:1])
        ready_s = time.perf_counter() - start
        loss = _train(trainer)
        wall_s = time.perf_counter() - start
    out = {"side": "lmx", "dtype": dtype, "steps": trainer.total_steps,
           "batch_size": c.train.batch_size, "wall_s": wall_s, "setup_s": ready_s,
           "examples_per_s": trainer.total_steps * c.train.batch_size / wall_s,
           "final_loss": loss, **rss.result()}
    if epochs:
        out["validation_accuracy"] = trainer.evaluate(trainer.datasets["validation"])["accuracy"]
    return out


def _train(trainer: loop.Trainer) -> float:
    """The loop's steps (metrics fetched one step late), without eval or checkpoints."""
    stream, pending, loss = trainer.train_stream(0), None, float("nan")
    with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
        for _ in range(trainer.total_steps):
            trainer.state, metrics = trainer.train_step(
                trainer.state, trainer.frozen, trainer.device_batch(next(stream)))
            if pending is not None:
                loss = float(pending["loss"])
            pending = metrics
        jax.block_until_ready(trainer.state)
    return float(pending["loss"]) if pending is not None else loss
