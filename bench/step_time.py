"""Median LoRA train-step time of the default experiment's model at a few sequence lengths.

Usage: python bench/step_time.py [--dtype float32|bfloat16] [--lengths 16,32,64]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments import banking77_lora  # noqa: E402
from lmx.train import loop  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--lengths", default="16,32,64")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    config = banking77_lora.get_config("runlocal")
    config.model.dtype = args.dtype
    trainer = loop.Trainer(config, "/tmp/lmx_bench")
    rng = np.random.default_rng(0)
    batch_size = config.train.batch_size
    for length in map(int, args.lengths.split(",")):
        batch = trainer.device_batch({
            "ids": rng.integers(1000, 5000, (batch_size, length)).astype(np.int32),
            "mask": np.ones((batch_size, length), bool),
            "token_types": np.zeros((batch_size, length), np.int32),
            "labels": rng.integers(0, 77, batch_size).astype(np.int32),
            "weights": np.ones(batch_size, np.float32)})
        with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
            start = time.perf_counter()
            trainer.state, metrics = trainer.train_step(trainer.state, trainer.frozen, batch)
            jax.block_until_ready(metrics)
            compile_seconds = time.perf_counter() - start
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                trainer.state, metrics = trainer.train_step(trainer.state, trainer.frozen, batch)
                jax.block_until_ready(metrics)
                times.append(time.perf_counter() - start)
        median = float(np.median(times))
        print(f"dtype={args.dtype} T={length}: first step (compile) {compile_seconds:.1f}s, "
              f"median step {median:.3f}s, {batch_size / median:.1f} examples/s")


if __name__ == "__main__":
    main()
