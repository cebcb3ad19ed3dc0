"""Per-host input (lmx.data.hostdata + batching's `rows` + distributed.host_batch): each
process tokenizes only its share, once; the global batches equal a single-process run's, from
step 0 and resumed mid-epoch; and, across two processes on loopback, streamed loading reads
only each process's slices."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hostdata_worker import BATCH, MAX_LENGTH, SEED, TOKENIZER, encoder, records
from safetensors.numpy import load_file
from test_hf_stream import _tiny
from test_multihost import _free_port, _wait

from lmx.data import batching, examples, hostdata

ROOT = pathlib.Path(__file__).resolve().parents[1]


def single_process_batches(start_step: int, steps: int) -> list[dict]:
    """What one process makes today: every record tokenized in memory, whole batches."""
    texts, labels = [r[1] for r in records()], [r[2] for r in records()]
    ids, types = examples.tokenize(TOKENIZER, texts, MAX_LENGTH)
    data = examples.Examples(ids, types, np.asarray(labels, np.int32))
    stream = batching.train_batches(data, BATCH, seed=SEED, start_step=start_step, pad_id=0)
    return [next(stream) for _ in range(steps)]


def _assert_batches_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for step, (a, b) in enumerate(zip(got, want)):
        assert sorted(a) == sorted(b), step
        for key in b:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"step {step} {key}")


def test_shares_and_rows_rebuild_the_single_process_batches(tmp_path):
    """Two shares written as two processes would; two hosts' rows side by side are the
    single-process batches, bit for bit, from step 0 and from step 7 (epoch 1, mid-epoch)."""
    seen = [[], []]
    for p in (0, 1):
        assert hostdata.write_share(records(), encoder(seen[p]), tmp_path, p, 2, "k") == 20
    assert seen == [list(range(0, 40, 2)), list(range(1, 40, 2))]
    assert hostdata.write_share(records(), encoder(seen[0]), tmp_path, 0, 2, "k") == 0  # once
    cached = hostdata.CachedExamples(tmp_path)
    for start, steps in ((0, 10), (7, 4)):  # 5 steps an epoch
        halves = [batching.train_batches(cached, BATCH, seed=SEED, start_step=start, pad_id=0,
                                         rows=rows) for rows in (slice(0, 4), slice(4, 8))]
        joined = [{k: np.concatenate([a[k], b[k]]) for k in a}
                  for a, b in zip(*(([next(h) for _ in range(steps)]) for h in halves))]
        _assert_batches_equal(joined, single_process_batches(start, steps))


def test_cache_of_other_data_is_refused_and_missing_share_named(tmp_path):
    hostdata.write_share(records(), encoder([]), tmp_path, 0, 2, "char-24")
    with pytest.raises(FileNotFoundError, match="share-1-of-2"):
        hostdata.CachedExamples(tmp_path)
    with pytest.raises(ValueError, match="another cache"):
        hostdata.write_share(records(), encoder([]), tmp_path, 1, 2, "char-32")


def test_two_processes_tokenize_half_each_and_batch_like_one(tmp_path):
    model_dir = _tiny("llama", tmp_path / "llama")
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "hostdata_worker.py"),
                               str(port), str(i), str(tmp_path), str(model_dir)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    _wait(procs, timeout=240)
    out = [np.load(tmp_path / f"process-{p}.npz") for p in (0, 1)]
    assert [list(o["seen"]) for o in out] == [list(range(0, 40, 2)), list(range(1, 40, 2))]
    assert [list(o["rows"]) for o in out] == [[0, 4], [4, 8]]
    for name, start, steps in (("straight", 0, 6), ("resumed", 3, 3)):
        want = single_process_batches(start, steps)
        for o in out:  # every process gathers the same global batches
            got = [{k: o[f"{name}/{s}/{k}"] for k in want[0]} for s in range(steps)]
            _assert_batches_equal(got, want)
    reads = [int(o["read_elements"]) for o in out]
    elements = sum(v.size for v in load_file(str(model_dir / "model.safetensors")).values())
    # each reads its half of every split tensor (+ replicated norms whole), not the model
    assert all(0.45 * elements < r < 0.6 * elements for r in reads), (reads, elements)
