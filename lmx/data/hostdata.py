"""Per-host input: every process tokenizes only its share of the examples, once, into a cache
all processes read; each then batches only its own rows of every global batch.

    write_share(records, encode, cache_dir, process_index, process_count)   # share p: i % P == p
    (barrier: every share written)
    examples = CachedExamples(cache_dir)       # lengths in memory, token arrays memory-mapped
    rows = distributed.process_rows(batch_sharding, (batch_size, 1))
    batching.train_batches(examples, batch_size, ..., rows=rows)         # this host's rows

`records` is any random-access sequence (a list, a `tfds.data_source` over ArrayRecord files):
a process reads only the records of its share, so a corpus larger than one host's memory is
tokenized by all hosts together and trained on from memory-mapped files. A cache is written
once: a later run (a resumed one, or one with more steps) reads it without tokenizing. The
global batch each step is the one a single process makes from the same examples (the epoch
order needs only the lengths, which every process has); the exact-resume position is the step.

Layout of `cache_dir`: per share p of P a folder `share-p-of-P/` (renamed into place whole)
holding `offsets.npy` (n_p + 1,) and, per field, `NAME.npy`: the concatenated per-token
arrays (`ids`, `token_types`, per-token `labels`) or one value per example (scalar `labels`);
`fields.json` says which; `meta.json` records P, N and the caller's `key`.

Axis legend: N examples, P processes, n_p examples of share p.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

Encode = Callable[[Any], dict]


def _share_dir(cache_dir: pathlib.Path, p: int, count: int) -> pathlib.Path:
    return cache_dir / f"share-{p}-of-{count}"


def _check_meta(cache_dir: pathlib.Path, count: int, key: str, size: int) -> None:
    """Writes meta.json once; a cache of another key, process count or size is an error."""
    meta = {"process_count": count, "key": key, "num_examples": size}
    path = cache_dir / "meta.json"
    if path.is_file():
        found = json.loads(path.read_text())
        if found != meta:
            raise ValueError(f"{path} describes another cache ({found}, wanted {meta}): use a "
                             "fresh cache_dir for other data, tokenizer or process count")
        return
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, path)


def write_share(records: Sequence, encode: Encode, cache_dir: str | os.PathLike,
                process_index: int, process_count: int, key: str = "") -> int:
    """Encodes this process's share of `records` (indices i with i % P == p) into the cache,
    unless that share is already there; returns how many records it encoded.

    `encode(record) -> {"ids": (L,), ...}`: 1-D arrays as long as `ids` are per-token fields,
    0-d values per-example ones. `key` names what was encoded (file, tokenizer, max length):
    a cache written with another key is refused.
    """
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _check_meta(cache_dir, process_count, key, len(records))
    out = _share_dir(cache_dir, process_index, process_count)
    if out.is_dir():
        return 0
    rows = [encode(records[i]) for i in range(process_index, len(records), process_count)]
    lengths = np.asarray([len(r["ids"]) for r in rows], np.int64)
    arrays = {"offsets": np.concatenate([[0], np.cumsum(lengths)])}
    per_token = {}
    for name in (rows[0] if rows else {}):
        values = [np.asarray(r[name]) for r in rows]
        per_token[name] = values[0].ndim == 1
        bad = [i for i, v in enumerate(values) if v.ndim != (1 if per_token[name] else 0) or (
            per_token[name] and len(v) != lengths[i])]
        if bad:
            raise ValueError(f"record {process_index + bad[0] * process_count}: field {name!r} "
                             f"must be {'as long as ids' if per_token[name] else 'a scalar'}")
        arrays[name] = np.concatenate(values) if per_token[name] else np.stack(values)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir()
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", array)
    (tmp / "fields.json").write_text(json.dumps(per_token))
    os.replace(tmp, out)  # the share appears whole or not at all
    return len(rows)


class CachedExamples:
    """All shares of a cache as one example sequence: example i is share i % P's (i // P)-th.
    `lengths` is in memory; token arrays are read from the files when an example is asked
    for, so a host touches only the examples of its rows."""

    def __init__(self, cache_dir: str | os.PathLike):
        cache_dir = pathlib.Path(cache_dir)
        meta = json.loads((cache_dir / "meta.json").read_text())
        self.process_count, self.size = meta["process_count"], meta["num_examples"]
        self.shares = []
        for p in range(self.process_count):
            path = _share_dir(cache_dir, p, self.process_count)
            if not path.is_dir():
                raise FileNotFoundError(f"{path} is missing: process {p} has not written its "
                                        "share (run write_share on every process first)")
            per_token = json.loads((path / "fields.json").read_text())
            self.shares.append({
                "offsets": np.load(path / "offsets.npy"), "per_token": per_token,
                "fields": {name: np.load(path / f"{name}.npy", mmap_mode="r")
                           for name in per_token}})
        lengths = np.zeros(self.size, np.int64)
        for p, share in enumerate(self.shares):
            lengths[p::self.process_count] = np.diff(share["offsets"])
        self.lengths = lengths

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        share = self.shares[i % self.process_count]
        j = int(i) // self.process_count
        lo, hi = int(share["offsets"][j]), int(share["offsets"][j + 1])
        return {name: np.array(values[lo:hi]) if share["per_token"][name] else values[j]
                for name, values in share["fields"].items()}
