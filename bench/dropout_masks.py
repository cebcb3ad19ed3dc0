"""Time of one dropout mask, jax.random.bernoulli vs lmx's hashed `keep_mask`, jitted.

Usage: python bench/dropout_masks.py [--shape 32,12,64,64] [--repeats 20]
(the default shape is one MiniLM attention-probability mask at B=32, T=64).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lmx.models.layers import keep_mask  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="32,12,64,64")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    shape = tuple(map(int, args.shape.split(",")))
    x = jnp.ones(shape, jnp.float32)
    masks = {
        "jax.random.bernoulli": lambda k: jax.random.bernoulli(k, 0.9, shape),
        "lmx.models.layers.keep_mask": lambda k: keep_mask(k, shape, 0.1),
    }
    times = {}
    for name, mask in masks.items():
        fn = jax.jit(lambda k, x, mask=mask: jnp.where(mask(k), x / 0.9, 0.0))
        fn(jax.random.key(0), x).block_until_ready()
        runs = []
        for i in range(args.repeats):
            start = time.perf_counter()
            fn(jax.random.key(i), x).block_until_ready()
            runs.append(time.perf_counter() - start)
        times[name] = float(np.median(runs))
        print(f"{name}: {times[name] * 1e3:.2f} ms per {np.prod(shape) / 1e6:.1f}M-element mask")
    ratio = times["jax.random.bernoulli"] / times["lmx.models.layers.keep_mask"]
    print(f"bernoulli / hashed: {ratio:.1f}x")


if __name__ == "__main__":
    main()
