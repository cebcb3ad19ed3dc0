"""lmx's side of the bench: raw train steps, the end-to-end BANKING77 run, compile time.

Built from lmx's public pieces (`build.build`, `Built.jit_train_step`, `loop.Trainer`): the
same builder the launcher uses, so the bench times what a run runs.
"""
from __future__ import annotations

import os
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from bench import measure
from bench.workloads import Suite, Workload
from experiments import banking77_lora, conll03_ner
from lmx import config as config_lib
from lmx.models import transformer
from lmx.scale import sharding
from lmx.train import build, loop, optim


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
        built = build.build(config, w.num_labels, mesh=mesh, rules=rules, total_steps=1000)
        state, frozen = built.state, built.frozen
        device_batch = jax.device_put(batch)
        start = time.perf_counter()
        compiled = built.jit_train_step(out_shardings=False).lower(
            state, frozen, device_batch).compile()
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
            "trainable_params": build.count(state.trainable),
            "total_params": build.count(state.trainable) + build.count(frozen),
            "optimizer_state_bytes": measure.tree_bytes(state.opt_state),
            "frozen_optimizer_state_bytes": measure.tree_bytes(freeze_state),
            "saved_trainable_bytes": _saved_bytes(state.trainable)}


def compile_seconds(size: str, num_layers: int, scan: bool,
                    batch: dict[str, np.ndarray]) -> dict:
    """Lower + compile time of a full fine-tuning step (abstract shapes: no weights built)."""
    config = config_lib.base_config()
    config.model.size, config.model.scan_layers, config.peft.method = size, scan, "full"
    if transformer.SIZES[size].num_layers != num_layers:
        raise ValueError(f"{size} has {transformer.SIZES[size].num_layers} layers, not "
                         f"{num_layers}")
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    built = build.build(config, 77, mesh=mesh, rules=sharding.rules_for(config.sharding),
                        abstract=True)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    start = time.perf_counter()
    built.jit_train_step(out_shardings=False).lower(built.state, built.frozen, shapes).compile()
    return {"size": size, "num_layers": num_layers, "scan_layers": scan,
            "compile_s": time.perf_counter() - start}


def _e2e_config(suite: Suite, task: str, model_dir: str, dtype: str, train_file: str,
                epochs: float, overrides: dict):
    """The experiment's config with the bench's shared settings (LoRA r=8 on query/value, as
    PEFT's; batch, lr, schedule), then `overrides` ("section.key": value, a lever)."""
    if task == "conll":
        c = conll03_ner.get_config("")
        c.data.max_length, c.train.num_steps = suite.conll_max_length, suite.conll_steps
        c.peft.lora.rank, c.peft.lora.alpha = 8, 16.0
    else:
        c = banking77_lora.get_config("")
        c.model.pooling = "cls"  # as transformers' BertForSequenceClassification
        c.data.max_length = suite.e2e_max_length
        c.train.num_steps = 0 if epochs else suite.e2e_steps
        c.train.num_epochs = float(epochs or c.train.num_epochs)
    c.model.pretrained, c.model.dtype, c.data.train_file = model_dir, dtype, train_file
    c.peft.lora.targets = config_lib.base_config().peft.lora.targets  # query/value, as PEFT's
    c.train.batch_size = suite.e2e_batch_size
    c.train.learning_rate, c.train.warmup_fraction = suite.learning_rate_lora, suite.warmup_fraction
    for key, value in overrides.items():
        section, name = key.split(".")
        if section == "jax":
            continue  # process settings (end_to_end applies them)
        if name not in c[section]:
            raise KeyError(f"bench lever {key!r}: no such config key")
        c[section][name] = value
    return c


class _CompileClock:
    """XLA compiles and their seconds, from JAX's monitoring events, while installed."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count, self.seconds = 0, 0.0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **_) -> None:
        if event == self.EVENT:
            self.count, self.seconds = self.count + 1, self.seconds + duration


def end_to_end(suite: Suite, model_dir: str, dtype: str, workdir: str, train_file: str,
               epochs: float = 0, task: str = "banking77", overrides: dict | None = None,
               accuracy: bool = False) -> dict:
    """LoRA through `loop.Trainer` (BANKING77, or CoNLL-2003 NER with task="conll"): wall time
    from nothing to the last step (model load, tokenizing the whole train split, bucketing,
    compiles, steps). `overrides`: config keys of the lever being measured."""
    c = _e2e_config(suite, task, model_dir, dtype, train_file, epochs, overrides or {})
    if (overrides or {}).get("jax.compilation_cache"):  # shared by the invocation's runs
        jax.config.update("jax_compilation_cache_dir",
                          os.path.join(os.path.dirname(workdir), "jax-cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    clock = _CompileClock()
    with measure.PeakRss() as rss:
        start = time.perf_counter()
        trainer = loop.Trainer(c, workdir, devices=jax.devices()[:1])
        ready_s = time.perf_counter() - start
        loss, padded, real, examples = _train(trainer)
        wall_s = time.perf_counter() - start
    out = {"side": "lmx", "task": task, "dtype": dtype, "overrides": overrides or {},
           "steps": trainer.total_steps, "batch_size": c.train.batch_size,
           "wall_s": wall_s, "setup_s": ready_s,
           "examples": examples, "examples_per_s": examples / wall_s,
           "final_loss": loss, "tokens_padded": padded, "tokens_real": real,
           "compiles": clock.count, "compile_s": clock.seconds, **rss.result()}
    if accuracy and task == "banking77":
        out["validation_accuracy"] = trainer.evaluate(trainer.datasets["validation"])["accuracy"]
    return out


def _train(trainer: loop.Trainer) -> tuple[float, int, int, int]:
    """The loop's steps (metrics fetched one step late), without eval or checkpoints; returns
    the last loss, the padded / real tokens and the examples the steps saw (a packed step
    holds about batch_size examples: its segments are counted)."""
    stream, pending, loss = trainer.train_stream(0), None, float("nan")
    padded = real = examples = 0
    with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
        for _ in range(trainer.total_steps):
            batch = next(stream)
            padded, real = padded + batch["ids"].size, real + int(batch["mask"].sum())
            examples += (int((batch["mask"] & (batch["positions"] == 0)).sum())
                         if "segment_ids" in batch else int(batch["weights"].sum()))
            trainer.state, metrics = trainer.train_step(
                trainer.state, trainer.frozen, trainer.device_batch(batch))
            if pending is not None:
                loss = float(pending["loss"])
            pending = metrics
        jax.block_until_ready(trainer.state)
    return (float(pending["loss"]) if pending is not None else loss), padded, real, examples
