"""Per-host input: every process tokenizes only its share of the examples, once, into a cache
all processes read; each then batches only its own rows of every global batch.

    write_share(records, encode, cache_dir, process_index, process_count)   # share p: i % P == p
    (barrier: every share written)
    examples = CachedExamples(cache_dir)       # lengths in memory, token arrays memory-mapped
  (`cached_share` does these three for this process; the launcher's `data.host_input`)
    rows = distributed.process_rows(batch_sharding, (batch_size, 1))
    batching.train_batches(examples, batch_size, ..., rows=rows)         # this host's rows

`records` is any random-access sequence (a list, a `tfds.data_source` over ArrayRecord files):
a process reads only the records of its share, so a corpus larger than one host's memory is
tokenized by all hosts together and trained on from memory-mapped files. A cache is written
once: a later run (a resumed one, or one with more steps) reads it without tokenizing. The
global batch each step is the one a single process makes from the same examples (the epoch
order needs only the lengths, which every process has); the exact-resume position is the step.

Layout of `cache_dir`: per share p of P a folder `share-p-of-P/` (renamed into place whole)
holding raw little-endian files, appended chunk by chunk while encoding: `lengths.bin`
(n_p,) int64 and, per field, `NAME.bin`: the concatenated per-token arrays (`ids`,
`token_types`, per-token `labels`) or one value per example (scalar `labels`);
`fields.json` gives each field's kind and dtype; `meta.json` records P, N and the caller's
`key`. Memory while writing is one chunk of records, whatever the corpus size.

Axis legend: N examples, P processes, n_p examples of share p.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging

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
                process_index: int, process_count: int, key: str = "",
                chunk_size: int = 1024) -> int:
    """Encodes this process's share of `records` (indices i with i % P == p) into the cache,
    unless that share is already there; returns how many records it encoded.

    `encode(record) -> {"ids": (L,), ...}`: 1-D arrays as long as `ids` are per-token fields,
    0-d values per-example ones. `key` names what was encoded (file, tokenizer, max length):
    a cache written with another key is refused. Streams: `chunk_size` records are encoded,
    appended to the share's files and dropped, so memory does not grow with the corpus.
    """
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _check_meta(cache_dir, process_count, key, len(records))
    out = _share_dir(cache_dir, process_index, process_count)
    if out.is_dir():
        return 0
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir()
    fields: dict[str, dict] = {}  # name -> {"per_token": bool, "dtype": str}
    files = {"lengths": open(tmp / "lengths.bin", "wb")}
    mine = range(process_index, len(records), process_count)
    try:
        for lo in range(0, len(mine), chunk_size):
            indices = mine[lo:lo + chunk_size]
            _append(files, fields, [encode(records[i]) for i in indices], indices, tmp)
    finally:
        for f in files.values():
            f.close()
    (tmp / "fields.json").write_text(json.dumps(fields))
    os.replace(tmp, out)  # the share appears whole or not at all
    return len(mine)


def _append(files: dict, fields: dict, rows: list[dict], indices: range,
            folder: pathlib.Path) -> None:
    """Appends one chunk of encoded rows to the share's raw files (`NAME.bin`)."""
    lengths = np.asarray([len(r["ids"]) for r in rows], np.int64)
    files["lengths"].write(lengths.tobytes())
    for name in rows[0]:
        values = [np.asarray(r[name]) for r in rows]
        if name not in fields:
            fields[name] = {"per_token": values[0].ndim == 1, "dtype": values[0].dtype.str}
            files[name] = open(folder / f"{name}.bin", "wb")
        per_token = fields[name]["per_token"]
        bad = [i for i, v in enumerate(values) if v.ndim != (1 if per_token else 0) or (
            per_token and len(v) != lengths[i]) or v.dtype.str != fields[name]["dtype"]]
        if bad:
            raise ValueError(f"record {indices[bad[0]]}: field {name!r} must be "
                             f"{'as long as ids' if per_token else 'a scalar'} of dtype "
                             f"{fields[name]['dtype']}")
        files[name].write((np.concatenate(values) if per_token else np.stack(values)).tobytes())


def _mapped(path: pathlib.Path, dtype: np.dtype) -> np.ndarray:
    """A raw file as a read-only memory-mapped array (empty files cannot be mapped)."""
    if path.stat().st_size == 0:
        return np.zeros((0,), dtype)
    return np.memmap(path, dtype, mode="r")


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
            fields = json.loads((path / "fields.json").read_text())
            lengths = np.fromfile(path / "lengths.bin", np.int64)
            self.shares.append({
                "offsets": np.concatenate([[0], np.cumsum(lengths)]),
                "per_token": {name: f["per_token"] for name, f in fields.items()},
                "fields": {name: _mapped(path / f"{name}.bin", np.dtype(f["dtype"]))
                           for name, f in fields.items()}})
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


class First:
    """The first `limit` records of a random-access sequence, still read one at a time."""

    def __init__(self, records: Sequence, limit: int):
        self.records, self.size = records, min(limit, len(records))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        if not 0 <= i < self.size:
            raise IndexError(f"record {i} of the first {self.size}")
        return self.records[i]


def cached_share(records: Sequence, encode: Encode, cache_dir: str | os.PathLike, key: str
                 ) -> CachedExamples:
    """This process's share written (unless cached), every process waited for, the cache
    read: what each process of a run calls with the same arguments."""
    p, count = jax.process_index(), jax.process_count()
    encoded = write_share(records, encode, cache_dir, p, count, key)
    logging.warning("token cache %s: share %d of %d %s", cache_dir, p, count,
                    f"tokenized ({encoded} records)" if encoded else "read, nothing tokenized")
    if count > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415
        multihost_utils.sync_global_devices(f"lmx token cache {key}")
    return CachedExamples(cache_dir)
