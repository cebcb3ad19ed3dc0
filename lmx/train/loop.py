"""The training loop: data, model, sharded state, progress bar, eval, checkpoints, outputs."""
from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import threading
import time
from typing import Iterator

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from tqdm.auto import tqdm

from lmx import config as config_lib, provenance, report, tasks
from lmx.scale import distributed, sharding
from lmx.train import build, checkpoint, mfu
from lmx.train.step import eval_step, merge


def _first(examples, config: ml_collections.ConfigDict, split: str):
    """The first `data.max_train_examples` / `data.max_eval_examples` examples of a split
    (0 = all); a causal LM's split is one token stream: the first that many windows of
    max_length + 1 tokens."""
    key = "max_train_examples" if split == "train" else "max_eval_examples"
    limit, unit = config.data[key], "examples"
    if isinstance(examples, np.ndarray) and config.model.task == "causal_lm":
        limit, unit = limit * (config.data.max_length + 1), "tokens"
    if examples is None or not limit or len(examples) <= limit:
        return examples
    logging.warning("data.%s=%d: keeping the first %d of %d %s %s", key, config.data[key],
                    limit, len(examples), split, unit)
    return examples.subset(np.arange(limit)) if hasattr(examples, "subset") else examples[:limit]


class Trainer:
    """Holds the jitted steps and the pieces of one run; `fit` trains, `evaluate` scores."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, devices=None,
                 validated: bool = False):
        self.config, self.workdir = config, workdir
        devices = jax.devices() if devices is None else devices
        if not validated:  # `run` validates before writing config.json
            config_lib.validate(config, len(devices))
        self.mesh = sharding.make_mesh(config.mesh, devices)
        self.rules = sharding.rules_for(config.sharding)
        self.task = tasks.get(config)
        loaded = self.task.load(config, workdir)
        loaded.train = _first(loaded.train, config, "train")  # a labelled budget
        self.task.bind(loaded)
        self.datasets = dict(vars(loaded))
        for name in ("validation", "test"):
            self.datasets[name] = _first(self.datasets[name], config, name)
        num_labels = len(loaded.label_names)
        self.steps_per_epoch = self.task.steps_per_epoch(loaded.train, config.train.batch_size)
        self.total_steps = (config.train.num_steps or
                            int(math.ceil(config.train.num_epochs * self.steps_per_epoch)))
        self.built = build.build(config, num_labels, mesh=self.mesh, rules=self.rules,
                                 vocab_size=loaded.vocab_size, total_steps=self.total_steps)
        self.model, self.labels, self.tx = self.built.model, self.built.labels, self.built.tx
        self.state, self.state_shardings = self.built.state, self.built.state_shardings
        self.frozen = self.built.frozen
        self.train_step = self.built.jit_train_step()
        self.step_flops = mfu.StepFlops(self.train_step)
        # Replicated outputs: every process can read the whole batch's predictions.
        self.eval_step = jax.jit(functools.partial(eval_step, model=self.model.module,
                                                   outputs=self.task.outputs),
                                 out_shardings=sharding.replicated(self.mesh))
        self._base = self._peak = None
        self._collected = None  # (split, state, outputs) of the last collect

    def device_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """A global batch (the same on every host) -> global arrays fed by each host's rows."""
        return distributed.global_batch(batch, self._batch_sharding)

    def collect(self, split) -> list[tuple[dict, dict]]:
        """(host info, eval-step outputs) for every batch of a split. The last split's are kept
        for the same state, so a task's `finish` (reports, confusion) reuses the final
        evaluation's pass instead of running the split again."""
        if self._collected and self._collected[0] is split and self._collected[1] is self.state:
            return self._collected[2]
        collected = []
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            for batch, host in self.task.eval_batches(split):
                out = self.eval_step(self.state.trainable, self.frozen, self.state.model_state,
                                     self.device_batch(batch))
                collected.append((host, jax.device_get(out)))
        self._collected = (split, self.state, collected)
        return collected

    def evaluate(self, split) -> dict[str, float]:
        """The task's scores on a split, and the mean loss per predicted label."""
        collected = self.collect(split)
        loss_sum = sum(float(out["loss_sum"]) for _, out in collected)
        count = sum(float(out["count"]) for _, out in collected)
        return {"loss": loss_sum / max(count, 1.0), **self.task.scores(split, collected),
                **self.task.generated_scores(self, split)}

    def _batch_sharding(self, ndim: int):
        return sharding.batch_sharding(self.mesh, self.rules, ndim)

    def train_stream(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        """Global training batches, or with data.host_input only this process's rows."""
        if not self.config.data.host_input:
            return self.task.train_batches(self.datasets["train"], start_step)
        rows = distributed.process_rows(self._batch_sharding(2),
                                        (self.config.train.batch_size, 1))
        return self.task.train_batches(self.datasets["train"], start_step, rows=rows)

    def train_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """A `train_stream` batch -> global arrays (host input: each process's own rows)."""
        if self.config.data.host_input:
            return distributed.host_batch(batch, self._batch_sharding,
                                          self.config.train.batch_size)
        return self.device_batch(batch)

    def steps(self, n: int) -> list[float]:
        """`n` train steps from the current state, nothing else (no eval, checkpoint or log):
        their losses. For tests, notebooks and benchmarks that drive training by hand."""
        stream, losses = self.train_stream(int(self.state.step)), []
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            for _ in range(n):
                self.state, metrics = self.train_step(self.state, self.frozen,
                                                      self.train_batch(next(stream)))
                losses.append(float(metrics["loss"]))
        return losses

    def inference_variables(self) -> dict:
        """The trained model's variables (params + peft + model state), for generation/export."""
        return merge(self.state.trainable, self.frozen, self.state.model_state)

    def meta(self) -> dict:
        """What a checkpoint must match to be resumed: the base (name + content hash), method."""
        if self._base is None:
            cfg, seed = self.config.model, self.config.seed
            if cfg.pretrained and not cfg.random_init:  # the weights files name the base
                self._base = checkpoint.base_identity(self.model.pretrained_dir,
                                                      cfg.pretrained, self.frozen)
            else:  # a random init is fixed by its architecture and seed: both in the name
                arch = f"{cfg.pretrained} (random_init)" if cfg.pretrained else \
                    f"{cfg.family}/{cfg.size}"
                self._base = checkpoint.base_identity("", f"{arch}@seed{seed}", self.frozen)
        return {**self._base, "peft": self.config.peft.method}

    def peak_flops(self) -> tuple[float, str]:
        """The FLOP/s MFU is divided by, and where it comes from (lmx.train.mfu.peak_flops)."""
        if self._peak is None:
            self._peak = mfu.peak_flops(self.config.train.peak_flops_per_second,
                                        self.mesh.devices.flat[0])
        return self._peak

    def checkpoint_bytes(self) -> int:
        s = self.state
        return build.nbytes(s.trainable) + build.nbytes(s.opt_state) + build.nbytes(
            s.model_state)


class _TrainLog:
    """Fetches each step's metrics one step late (the device never waits) and averages them."""

    def __init__(self, writer: report.MetricWriter, batch_size: int, start: int,
                 peak_flops: float):
        self.writer, self.batch_size, self.start = writer, batch_size, start
        self.window, self.pending, self.peak_flops = [], None, peak_flops
        self.window_flops, self.window_steps, self.window_start_seconds = 0.0, 0, 0.0

    def push(self, metrics_device: dict, step: int, flops: float = 0.0) -> None:
        if self.pending is not None:
            self.window.append(self._fetch(*self.pending))
        self.pending = (metrics_device, step)
        self.window_flops, self.window_steps = self.window_flops + flops, self.window_steps + 1

    @staticmethod
    def _fetch(metrics_device: dict, step: int) -> dict[str, float]:
        values = {k: float(v) for k, v in jax.device_get(metrics_device).items()}
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"loss is {values['loss']} at step {step}: stopping the run")
        return values

    def flush(self, step: int, train_seconds: float) -> dict[str, str]:
        if self.pending is not None:  # this step's metrics: fetch them now
            self.window.append(self._fetch(*self.pending))
            self.pending = None
        loss = float(np.mean([m["loss"] for m in self.window]))
        speed = (step - self.start) * self.batch_size / max(train_seconds, 1e-9)
        # The window's steps: FLOPs of each one's compiled shape over the window's wall time
        # (compiles and input work inside the window count as time).
        seconds = max(train_seconds - self.window_start_seconds, 1e-9)
        self.writer.write(step, "train", {
            "loss": loss, "examples_per_second": speed,
            "grad_norm": self.window[-1]["grad_norm"],
            "step_seconds": seconds / self.window_steps,
            "flops_per_step": self.window_flops / self.window_steps,
            "mfu": self.window_flops / seconds / self.peak_flops})
        self.window, self.window_flops, self.window_steps = [], 0.0, 0
        self.window_start_seconds = train_seconds
        return {"loss": f"{loss:.4f}", "ex_per_s": f"{speed:.1f}"}


class _NullWriter:
    """What processes other than 0 write: nothing."""

    def write(self, step: int, split: str, values: dict) -> None:
        pass

    def close(self) -> None:
        pass


class _Preemption:
    """SIGTERM (a TPU preemption notice) becomes a flag the loop reads after each step.

    With several processes JAX's coordination service agrees on the step instead
    (`reached_preemption_sync_point`), so every process saves the same one.
    """

    def __init__(self):
        self.requested, self.previous = False, None

    def __enter__(self) -> "_Preemption":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        logging.warning("SIGTERM: saving a checkpoint after this step, then exiting")
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # noqa: PLC0415
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested


def _fault(event: str, step: int) -> None:
    """Fault injection for the resume tests: LMX_FAULT="step:7:KILL" (or "save:9:KILL",
    "step:11:TERM") signals this process right after that step / after that save started.
    LMX_FAULT_PAUSE=SECONDS sleeps after every step: tiny test steps would otherwise end the
    run before JAX's multi-process preemption sync point (a coordination round trip) lands."""
    want = os.environ.get("LMX_FAULT", "")
    if want and want.rsplit(":", 1)[0] == f"{event}:{step}":
        os.kill(os.getpid(), {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}[want.rsplit(":", 1)[1]])
    if want and event == "step" and os.environ.get("LMX_FAULT_PAUSE"):
        time.sleep(float(os.environ["LMX_FAULT_PAUSE"]))


def check_workdir(workdir: str) -> None:
    """Fails fast (before anything is built) when the workdir cannot be written."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".lmx_write_probe.{jax.process_index()}")
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        raise OSError(f"workdir {workdir!r} is not writable: {e}") from e


def check_free_space(trainer: Trainer, workdir: str) -> int:
    """Fails before training when the disk cannot hold the checkpoints; returns the estimate."""
    per_checkpoint = trainer.checkpoint_bytes()
    need = ((trainer.config.train.max_checkpoints + 1) * per_checkpoint
            + build.nbytes(trainer.state.trainable) + (64 << 20))  # + logs, events, plots
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise OSError(f"workdir {workdir!r}: {free / 2**20:.1f} MiB free, the run needs about "
                      f"{need / 2**20:.1f} MiB ({trainer.config.train.max_checkpoints}+1 "
                      f"checkpoints of {per_checkpoint / 2**20:.1f} MiB, exports, logs)")
    return need


def _resume(trainer: Trainer, mgr: checkpoint.Manager) -> int:
    restored = checkpoint.restore(mgr, trainer.state, trainer.meta(),
                                  allow_fresh_start=trainer.config.train.allow_fresh_start)
    if restored is not None:
        trainer.state = build.place(restored, trainer.state_shardings)
        logging.warning("resumed from %s at step %d", mgr.directory, int(restored.step))
    return int(jax.device_get(trainer.state.step))


def _train(trainer: Trainer, mgr: checkpoint.Manager, writer, start: int
           ) -> tuple[float, bool]:
    """Runs steps `start..total`; returns the seconds spent training (eval and saves excluded)
    and whether a preemption stopped it (after saving a checkpoint)."""
    cfg, total = trainer.config.train, trainer.total_steps
    eval_every = cfg.eval_every or trainer.steps_per_epoch
    ckpt_every = cfg.checkpoint_every or trainer.steps_per_epoch
    stream = trainer.train_stream(start)
    log = _TrainLog(writer, cfg.batch_size, start, trainer.peak_flops()[0])
    profile = mfu.Profile(os.path.join(trainer.workdir, "profile"), cfg.profile_steps,
                          first=start + 2)
    train_seconds, tick = 0.0, time.perf_counter()
    bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=not distributed.is_lead())
    with bar, _Preemption() as preemption, jax.set_mesh(trainer.mesh), \
            nn.logical_axis_rules(trainer.rules):
        for done in range(start + 1, total + 1):
            profile.before(done)
            batch = trainer.train_batch(next(stream))
            flops = trainer.step_flops(trainer.state, trainer.frozen, batch)
            trainer.state, step_metrics = trainer.train_step(trainer.state, trainer.frozen, batch)
            log.push(step_metrics, done, flops)
            profile.after(done, trainer.state)
            bar.update(1)
            _fault("step", done)
            if done % cfg.log_every == 0 or done == total:
                bar.set_postfix(log.flush(done, train_seconds + time.perf_counter() - tick))
            preempted = preemption.reached(done)
            evaluate = (done % eval_every == 0 or done == total) and not preempted
            save = done % ckpt_every == 0 or done == total or preempted
            if evaluate or save:
                jax.block_until_ready(trainer.state)
                train_seconds += time.perf_counter() - tick
                if evaluate:
                    scores = trainer.evaluate(trainer.datasets["validation"])
                    writer.write(done, "validation", scores)
                    bar.write(f"step {done}: validation " +
                              " ".join(f"{k}={v:.4f}" for k, v in scores.items()))
                if save:
                    checkpoint.save(mgr, trainer.state, trainer.meta())
                    _fault("save", done)
                tick = time.perf_counter()
            if preempted:
                profile.close()
                return train_seconds, True
    profile.close()
    return train_seconds, False


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` in `workdir` (resuming from its latest intact checkpoint), writes results.

    SIGTERM saves a checkpoint and returns `{"preempted": True, "step": ...}`.
    """
    check_workdir(workdir)
    config_lib.validate(config, jax.device_count())  # once, before anything is built
    if distributed.is_lead():
        report.write_json(workdir, "config.json", config.to_dict())
    trainer = Trainer(config, workdir, validated=True)
    check_free_space(trainer, workdir)
    mgr = checkpoint.manager(workdir, config.train.max_checkpoints)
    start = _resume(trainer, mgr) if config.train.resume else 0
    writer = report.MetricWriter(workdir) if distributed.is_lead() else _NullWriter()
    try:
        train_seconds, preempted = _train(trainer, mgr, writer, start)
    finally:  # a crash still finishes the checkpoints already started
        mgr.wait_until_finished()
    if preempted:
        writer.close()
        step = int(jax.device_get(trainer.state.step))
        logging.warning("preempted: checkpoint of step %d saved in %s", step, mgr.directory)
        return {"preempted": True, "step": step}
    return _finish(trainer, writer, workdir, start, train_seconds)


def _finish(trainer: Trainer, writer: report.MetricWriter, workdir: str, start: int,
            train_seconds: float) -> dict:
    """Final scores, the exported trainable weights and results.json."""
    step = int(jax.device_get(trainer.state.step))
    results = {"validation": trainer.evaluate(trainer.datasets["validation"]), "step": step}
    if trainer.datasets["test"] is not None:
        results["test"] = trainer.evaluate(trainer.datasets["test"])
        writer.write(step, "test", results["test"])
    writer.close()
    adapter_dir = os.path.abspath(os.path.join(workdir, "trainable"))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(adapter_dir, trainer.state.trainable, force=True)
    adapter_bytes = sum(os.path.getsize(os.path.join(d, f))
                        for d, _, files in os.walk(adapter_dir) for f in files)
    total_params = build.count(trainer.state.trainable) + build.count(trainer.frozen)
    trainable_params = build.count(trainer.state.trainable)
    trained_examples = (step - start) * trainer.config.train.batch_size
    results.update(
        total_params=total_params,
        trainable_params=trainable_params,
        trainable_percent=100.0 * trainable_params / total_params,
        adapter_bytes=adapter_bytes,
        trainable_bytes_in_memory=build.nbytes(trainer.state.trainable),
        train_seconds=train_seconds,
        peak_flops_per_second=trainer.peak_flops()[0],
        peak_flops_source=trainer.peak_flops()[1],
        examples_per_second=trained_examples / train_seconds if train_seconds else 0.0,
        label_names=trainer.datasets["label_names"],
        vocab_size=trainer.datasets["vocab_size"],  # a from-scratch vocabulary, to rebuild the run
        data={f"{split}_examples": len(trainer.datasets[split])  # what the scores are over
              for split in ("train", "validation", "test") if trainer.datasets[split] is not None},
        task=trainer.config.model.task,
        headline={"name": trainer.task.headline(),
                  "value": results["validation"][trainer.task.headline()]},
        hardware=report.hardware(),
        provenance=provenance.provenance(),  # commit, versions, lock hash, devices, command
    )
    results.update(trainer.task.finish(trainer, workdir))
    if trainer.config.explain.num_examples:  # the explanation report (lmx.explain)
        from lmx.explain.pipeline import explain_run_end  # noqa: PLC0415
        results["explain_html"] = explain_run_end(trainer, workdir)
    if distributed.is_lead():
        report.write_json(workdir, "results.json", results)
        report.plot_curves(workdir, metrics=trainer.task.plot_metrics)
    return results
