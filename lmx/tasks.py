"""What differs between tasks: reading each split, batching it, what the jitted eval step
returns and how the collected outputs become scores. `loop.Trainer` holds one task.

A task answers:
  load(config, workdir) -> Datasets      every split read, tokenized once
  steps_per_epoch(split, batch_size)
  train_batches(split, start_step)       endless, a pure function of (seed, step): exact resume
  eval_batches(split)                    -> (device batch, host-only info) pairs
  outputs(logits, batch)                 traced inside the jitted eval step
  scores(split, collected)               -> {"metric": value}
  finish(trainer, workdir)               task extras at the end of a run (sample, export)

Every batch has `ids`, `mask`, `token_types`, `labels` and `weights` (or `images`);
`labels` < 0 carry no loss, `weights` (B,) zero out filler rows. The loss is the same
cross-entropy for every task (`train.classification_loss`).

Axis legend: B batch, T length, V vocabulary, N examples.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lmx import data, metrics, readers, sources, text_pipeline

IGNORE = text_pipeline.IGNORE
MASK_TOKENS = ("[MASK]", "<mask>")  # WordPiece's, lmx.tokenizer's sentencepiece models'


@dataclasses.dataclass
class Datasets:
    train: Any
    validation: Any
    test: Any  # None when no test file is configured
    label_names: list[str]
    pad_id: int
    vocab_size: int | None = None  # models from scratch take the tokenizer's vocabulary
    tokenizer: Any = None


class Task:
    """Defaults shared by the tasks; `bind` keeps what batching and scoring need."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.pad_id, self.label_names = 0, []

    plot_metrics: tuple[str, ...] = ()  # validation scores in [0, 1] worth a curve

    def bind(self, datasets: Datasets) -> None:
        self.pad_id, self.label_names = datasets.pad_id, datasets.label_names

    @staticmethod
    def outputs(logits: jax.Array, batch: dict) -> dict:
        """Per-batch outputs beyond the loss sums (traced in the eval step)."""
        return {}

    def finish(self, trainer, workdir: str) -> dict:
        return {}


class SequenceClassification(Task):
    """One label per text (or image): CSV / TSV / JSONL, PhraseBank, CLINC150, tfds, images,
    digits, synthetic."""
    plot_metrics = ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall")

    def _rows(self, path: str, split: str) -> tuple[list[str], list[str], list[int] | None]:
        d = self.config.data
        if path.startswith(sources.TFDS):
            rows = sources.tfds_records(path, split, d)
            return [r["text"] for r in rows], [r["label"] for r in rows], None
        if d.kind == "phrasebank":
            rows = readers.read_phrasebank(path)
            return [r["text"] for r in rows], [r["label"] for r in rows], None
        if d.kind == "clinc150":
            rows = readers.read_clinc150(path, split, include_oos=d.include_oos)
            return [r["text"] for r in rows], [r["label"] for r in rows], None
        if path.endswith(".csv"):
            return data.read_csv_classification(path, d.text_column, d.label_column,
                                                with_lines=True)
        if path.endswith(".jsonl"):
            rows = readers.read_jsonl(path, (d.text_column, d.label_column))
            return [str(r[d.text_column]) for r in rows], [str(r[d.label_column])
                                                          for r in rows], None
        rows = readers.read_delimited(path, d.text_column, d.label_column)
        return [r["text"] for r in rows], [r["label"] for r in rows], None

    def load(self, config, workdir: str) -> Datasets:
        d = config.data
        if d.kind in ("synthetic", "digits"):
            examples = (data.synthetic(512, 128, d.max_length, 2, d.split_seed)
                        if d.kind == "synthetic" else data.digits(config.model.image_size))
            names = [str(i) for i in range(int(examples.labels.max()) + 1)]
            examples, names = sources.keep_labels(examples, names, d.keep_labels)
            train, validation = sources.carve(examples, config)
            return Datasets(train, validation, None, names, 0)
        if d.kind == "images":
            return self._load_images(config)
        tokenizer, folder = sources.tokenizer_for(config, workdir)
        train_rows = self._rows(d.train_file, d.train_split)
        names = (data.read_label_names(d.labels_file) if d.labels_file
                 else sorted(set(train_rows[1])))

        def encode(texts, label_strings, lines, path):
            label_array = data.label_ids(label_strings, names, path, lines)  # before tokenizing
            ids, types = data.tokenize(tokenizer, texts, d.max_length)
            return data.Examples(ids, types, label_array)

        train = encode(*train_rows, d.train_file)
        if d.validation_file or d.validation_split:
            path = d.validation_file or d.train_file
            validation = encode(*self._rows(path, d.validation_split), path)
        else:
            train, validation = sources.carve(train, config)
        test = None
        if d.test_file:
            test = encode(*self._rows(d.test_file, d.test_split), d.test_file)
        return Datasets(train, validation, test, names, tokenizer.pad_id, tokenizer=tokenizer)

    @staticmethod
    def _load_images(config) -> Datasets:
        """A tfds image dataset (e.g. tfds:cifar10): pixels to [-1, 1], resized to
        model.image_size; validation = data.validation_split or a carved fraction."""
        d = config.data

        def read(path, split):
            rows = sources.tfds_records(path, split, d)
            images = np.stack([r["image"] for r in rows]).astype(np.float32) / 127.5 - 1.0
            if images.shape[-1] == 1:
                images = np.repeat(images, 3, axis=-1)
            size = config.model.image_size
            if images.shape[1:3] != (size, size):
                images = np.asarray(jax.image.resize(
                    images, (len(images), size, size, images.shape[-1]), "bilinear"))
            return data.ImageExamples(images, np.asarray([r["label"] for r in rows], np.int32))

        train = read(d.train_file, d.train_split)
        all_names = [str(i) for i in range(int(train.labels.max()) + 1)]
        train, names = sources.keep_labels(train, all_names, d.keep_labels)
        keep = lambda split: sources.keep_labels(split, all_names, d.keep_labels)[0]  # noqa: E731
        if d.validation_file or d.validation_split:
            validation = keep(read(d.validation_file or d.train_file, d.validation_split))
        else:
            train, validation = sources.carve(train, config)
        test = keep(read(d.test_file, d.test_split)) if d.test_file else None
        return Datasets(train, validation, test, names, 0)

    def finish(self, trainer, workdir: str) -> dict:
        """A fully trained ResNet is exported as a HF folder (WORKDIR/hf) that
        `config.model.pretrained` reads: the pre-training half of a transfer experiment."""
        if self.config.model.family != "resnet" or self.config.peft.method != "full":
            return {}
        return {"exported": export_hf(trainer, workdir, trainer.inference_variables(),
                                      ("params", "batch_stats"))}

    def steps_per_epoch(self, split, batch_size: int) -> int:
        return data.steps_per_epoch(split, batch_size)

    def train_batches(self, split, start_step: int) -> Iterator[dict]:
        c = self.config
        return data.train_batches(split, c.train.batch_size, seed=c.seed, start_step=start_step,
                                  pad_multiple=c.data.pad_multiple,
                                  bucket_batches=c.data.bucket_batches, pad_id=self.pad_id)

    def eval_batches(self, split) -> Iterator[tuple[dict, dict]]:
        c = self.config
        for batch in data.eval_batches(split, c.train.eval_batch_size,
                                       pad_multiple=c.data.pad_multiple, pad_id=self.pad_id):
            yield batch, {"labels": batch["labels"], "real": batch["weights"] > 0}

    @staticmethod
    def outputs(logits_BxL: jax.Array, batch: dict) -> dict:
        return {"predictions": logits_BxL.argmax(-1)}

    def scores(self, split, collected: list[tuple[dict, dict]]) -> dict[str, float]:
        labels = np.concatenate([h["labels"][h["real"]] for h, _ in collected])
        predictions = np.concatenate([o["predictions"][h["real"]] for h, o in collected])
        out = {**metrics.classification(labels, predictions),
               "mcc": metrics.matthews(labels, predictions)}
        if readers.CLINC150_OOS_LABEL in self.label_names:  # CLINC150's two headline numbers
            oos = self.label_names.index(readers.CLINC150_OOS_LABEL)
            in_scope = labels != oos
            out["in_scope_accuracy"] = float(np.mean(predictions[in_scope] == labels[in_scope]))
            if (~in_scope).any():
                out["oos_recall"] = float(np.mean(predictions[~in_scope] == oos))
        return out

    def headline(self) -> str:
        names = self.label_names
        return ("in_scope_accuracy" if readers.CLINC150_OOS_LABEL in names else "accuracy")


def export_hf(trainer, workdir: str, variables: dict, collections=("params",)) -> str:
    """Saves the trained model as a HF folder WORKDIR/hf that `model.pretrained` reads."""
    import lmx.hf  # noqa: PLC0415
    out = os.path.join(workdir, "hf")
    lmx.hf.save_pretrained(trainer.model.module, {k: variables[k] for k in collections}, out)
    return out


def _eval_token_batches(task: Task, split) -> Iterator[tuple[dict, dict]]:
    c = task.config
    for batch in text_pipeline.eval_token_batches(split, c.train.eval_batch_size,
                                                  pad_id=task.pad_id,
                                                  pad_multiple=c.data.pad_multiple):
        index = batch.pop("index")
        yield ({**batch, "token_types": np.zeros_like(batch["ids"])},
               {"index": index, "labels": batch["labels"]})


class TokenClassification(Task):
    """Tags per word (CoNLL column files, BIO): the first sub-token carries the word's tag;
    scored with entity-level precision / recall / F1 (seqeval's default mode)."""
    plot_metrics = ("f1", "precision", "recall")

    def load(self, config, workdir: str) -> Datasets:
        d = config.data
        tokenizer, folder = sources.tokenizer_for(config, workdir)

        def read(path, split):  # tfds' conll2003 tags are already BIO
            if path.startswith(sources.TFDS):
                return sources.tfds_records(path, split, d)
            return readers.read_conll(path, scheme=d.tag_scheme)

        train = read(d.train_file, d.train_split)
        tags = sorted({t for s in train for t in s["tags"]} - {"O"})
        names = (data.read_label_names(d.labels_file) if d.labels_file else ["O"] + tags)
        align = text_pipeline.align_labels(tokenizer, label_names=names, max_length=d.max_length)
        encode = lambda sentences: [align(s) for s in sentences]  # noqa: E731
        if sources.separate_validation(d):
            validation = encode(read(d.validation_file or d.train_file, d.validation_split))
            train = encode(train)
        else:
            train, validation = sources.carve_rows(train, d)
            train, validation = encode(train), encode(validation)
        test = encode(read(d.test_file, d.test_split)) if d.test_file else None
        return Datasets(train, validation, test, names, tokenizer.pad_id, tokenizer=tokenizer)

    def steps_per_epoch(self, split, batch_size: int) -> int:
        return len(split) // batch_size

    def train_batches(self, split, start_step: int) -> Iterator[dict]:
        c = self.config
        for batch in text_pipeline.token_batches(
                split, c.train.batch_size, seed=c.seed, start_step=start_step,
                pad_id=self.pad_id, pad_multiple=c.data.pad_multiple,
                bucket_batches=c.data.bucket_batches):
            yield {**batch, "token_types": np.zeros_like(batch["ids"])}

    def eval_batches(self, split) -> Iterator[tuple[dict, dict]]:
        return _eval_token_batches(self, split)

    outputs = staticmethod(SequenceClassification.outputs)

    def predicted_tags(self, split, collected) -> list[list[str]]:
        """Each sentence's predicted tag per word; words cut off by max_length get "O"."""
        tags = [["O"] * len(s["words"]) for s in split]
        for host, out in collected:
            for row, n in enumerate(host["index"]):
                if n < 0:
                    continue
                first_BT = host["labels"][row] != IGNORE  # first sub-token of each kept word
                predicted = out["predictions"][row][first_BT]
                tags[n][:len(predicted)] = [self.label_names[p] for p in predicted]
        return tags

    def scores(self, split, collected) -> dict[str, float]:
        true = [s["tags"] for s in split]
        report = metrics.entity_scores(true, self.predicted_tags(split, collected))
        micro = report["micro"]
        out = {"f1": micro["f1"], "precision": micro["precision"], "recall": micro["recall"]}
        out.update({f"f1_{t}": v["f1"] for t, v in report.items() if t not in ("micro", "macro")})
        return out

    def headline(self) -> str:
        return "f1"

    def finish(self, trainer, workdir: str) -> dict:
        split = trainer.datasets["validation"]
        collected = trainer.collect(split)
        report = metrics.entity_report([s["tags"] for s in split],
                                       self.predicted_tags(split, collected))
        with open(os.path.join(workdir, "entity_report.txt"), "w", encoding="utf-8") as f:
            f.write(report + "\n")
        print(report)
        return {}


class CausalLM(Task):
    """Next-token prediction on a raw text corpus: windows of T+1 tokens at offsets drawn
    from (seed, step); validation = `data.validation_file` or the corpus' last fraction."""

    def load(self, config, workdir: str) -> Datasets:
        d = config.data
        tokenizer, folder = sources.tokenizer_for(config, workdir)
        text = sources.read_corpus(d.train_file, d.train_split, d)
        if sources.separate_validation(d):
            train_text = text
            valid_text = sources.read_corpus(d.validation_file or d.train_file,
                                             d.validation_split, d)
        else:
            cut = int(len(text) * (1 - d.validation_fraction))
            train_text, valid_text = text[:cut], text[cut:]
        encode = lambda t: np.asarray(  # noqa: E731
            tokenizer.encode(t, add_special_tokens=False), np.int32)
        self.chars_per_token = len(valid_text) / max(len(encode(valid_text)), 1)
        if getattr(tokenizer, "replaced", 0):  # data.unknown_char: say how much was mapped
            logging.warning("data.unknown_char=%r stands for %d validation characters outside "
                            "the vocabulary (%.3f%%)", d.unknown_char, tokenizer.replaced,
                            100 * tokenizer.replaced / max(len(valid_text), 1))
        return Datasets(encode(train_text), encode(valid_text), None, [], tokenizer.pad_id,
                        vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)

    def steps_per_epoch(self, split, batch_size: int) -> int:
        return max(1, (len(split) - 1) // (batch_size * self.config.data.max_length))

    def train_batches(self, split, start_step: int) -> Iterator[dict]:
        B, T = self.config.train.batch_size, self.config.data.max_length
        if len(split) <= T + 1:
            raise ValueError(f"the training text has {len(split)} tokens, fewer than "
                             f"data.max_length + 1 = {T + 1}")
        for step in range(start_step, 2**62):
            offsets_B = np.random.default_rng([self.config.seed, step]).integers(
                0, len(split) - T - 1, B)
            yield self._windows(split, offsets_B, T)

    @staticmethod
    def _windows(stream, offsets_B, T) -> dict[str, np.ndarray]:
        index_BT = offsets_B[:, None] + np.arange(T + 1)
        tokens_BT = stream[index_BT]
        B = len(offsets_B)
        return {"ids": tokens_BT[:, :-1], "labels": tokens_BT[:, 1:],
                "mask": np.ones((B, T), bool), "token_types": np.zeros((B, T), np.int32),
                "weights": np.ones((B,), np.float32)}

    def eval_batches(self, split) -> Iterator[tuple[dict, dict]]:
        """Non-overlapping windows over the whole split (the tail shorter than T is skipped)."""
        B, T = self.config.train.eval_batch_size, self.config.data.max_length
        offsets = np.arange(0, len(split) - T - 1 + 1, T)
        for start in range(0, len(offsets), B):
            chunk = offsets[start:start + B]
            batch = self._windows(split, np.resize(chunk, B), T)
            batch["weights"][len(chunk):] = 0.0  # filler rows
            yield batch, {}

    def scores(self, split, collected) -> dict[str, float]:
        nll = sum(float(o["loss_sum"]) for _, o in collected)
        count = sum(float(o["count"]) for _, o in collected)
        per_char = nll / count / self.chars_per_token
        return {"perplexity": metrics.perplexity(nll, count), "nats_per_char": per_char,
                "bits_per_character": per_char / math.log(2.0)}

    def headline(self) -> str:
        return "nats_per_char"

    def finish(self, trainer, workdir: str) -> dict:
        """A sample of `data.sample_tokens`; a fully trained decoder is also exported as a HF
        GPT-2 folder (+ char_vocab.json) that `model.pretrained` reads (e.g. LoRA-adapting it)."""
        from lmx import generate  # noqa: PLC0415
        tokenizer, n = trainer.datasets["tokenizer"], self.config.data.sample_tokens
        out, variables = {}, trainer.inference_variables()
        if self.config.peft.method == "full":
            out["exported"] = export_hf(trainer, workdir, variables)
            if hasattr(tokenizer, "chars"):
                tokenizer.save(os.path.join(out["exported"], "char_vocab.json"))
        if not n:
            return out
        T = self.config.data.max_length
        prompt = trainer.datasets["validation"][:T // 4]
        sampling = generate.Sampling(temperature=0.8, top_k=min(40, tokenizer.vocab_size))
        tokens = [int(i) for i in prompt]
        # The model only ever saw T positions: sample in rounds over a sliding window (the
        # last T/2 tokens as context, then up to T/2 new ones) instead of running past them.
        for round_ in range(2**31):
            if len(tokens) - len(prompt) >= n:
                break
            window = np.asarray(tokens[-(T // 2):], np.int32)
            new = generate.generate(trainer.model.module, variables, jnp.asarray(window[None]),
                                    jnp.ones((1, len(window)), bool),
                                    max_new_tokens=T - len(window), pad_id=self.pad_id,
                                    sampling=sampling,
                                    rng=jax.random.fold_in(jax.random.key(self.config.seed),
                                                           round_))
            tokens += [int(i) for i in np.asarray(new[0])]
        sample = tokenizer.decode(tokens[:len(prompt) + n])
        print(f"--- sample ({n} tokens after a {len(prompt)}-token prompt from validation) ---\n"
              f"{sample}\n---")
        with open(os.path.join(workdir, "sample.txt"), "w", encoding="utf-8") as f:
            f.write(sample)
        return {**out, "sample": sample}


class MaskedLM(Task):
    """BERT's masked-LM pre-training on the lines of a raw text corpus (data.mlm_rate of the
    tokens picked, split by data.mlm_split, 80/10/10 by default; a new mask every epoch);
    validation uses the epoch-0 mask, so its loss is comparable across runs."""
    plot_metrics = ("masked_accuracy", "mask_token_accuracy")

    def load(self, config, workdir: str) -> Datasets:
        d = config.data
        tokenizer, folder = sources.tokenizer_for(config, workdir)

        def encode(lines):  # truncated to max_length, keeping the closing special token
            out = []
            for line in lines:
                ids = tokenizer.encode(line)
                ids = ids if len(ids) <= d.max_length else ids[:d.max_length - 1] + ids[-1:]
                out.append({"ids": np.asarray(ids, np.int32)})
            return out

        lines = sources.corpus_lines(d.train_file, d, d.train_split)
        if sources.separate_validation(d):
            valid = sources.corpus_lines(d.validation_file or d.train_file, d, d.validation_split)
        else:
            lines, valid = sources.carve_rows(lines, d)
        self._tokenizer, self._tokenizer_dir = tokenizer, folder
        self._mask_id = next((i for i in map(tokenizer.token_to_id, MASK_TOKENS)
                              if i is not None), None)
        if self._mask_id is None:
            raise ValueError(f"the tokenizer has none of the mask tokens {MASK_TOKENS}: "
                             "masked-LM pre-training needs one")
        return Datasets(encode(lines), encode(valid), None, [], tokenizer.pad_id,
                        vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)

    def _mask(self, example: dict) -> dict:
        t = self._tokenizer
        return text_pipeline.mlm_mask(example, seed=self.config.seed, mask_id=self._mask_id,
                                      vocab_size=t.vocab_size, special_ids=t.special_ids,
                                      rate=self.config.data.mlm_rate,
                                      split=tuple(self.config.data.mlm_split))

    steps_per_epoch = TokenClassification.steps_per_epoch

    def train_batches(self, split, start_step: int) -> Iterator[dict]:
        c = self.config
        for batch in text_pipeline.token_batches(
                split, c.train.batch_size, seed=c.seed, start_step=start_step,
                pad_id=self.pad_id, pad_multiple=c.data.pad_multiple,
                bucket_batches=c.data.bucket_batches, transform=self._mask):
            # the vocabulary projection runs on the masked positions only (~15% of them)
            yield text_pipeline.gather_targets(
                {**batch, "token_types": np.zeros_like(batch["ids"])},
                fraction=2 * c.data.mlm_rate)

    def eval_batches(self, split) -> Iterator[tuple[dict, dict]]:
        masked = [self._mask({**e, "index": i, "epoch": 0}) for i, e in enumerate(split)]
        for batch, host in _eval_token_batches(self, masked):
            yield batch, {**host, "at_mask": batch["ids"] == self._mask_id}

    outputs = staticmethod(SequenceClassification.outputs)

    def scores(self, split, collected) -> dict[str, float]:
        """Perplexity and accuracy over every picked token; `mask_token_accuracy` over the
        ones shown as [MASK] only (comparable across data.mlm_split: unchanged picked tokens
        are easy targets, random ones hard)."""
        nll = sum(float(o["loss_sum"]) for _, o in collected)
        count = sum(float(o["count"]) for _, o in collected)
        correct = sum(float(o["correct"]) for _, o in collected)
        hits = shown = 0
        for host, out in collected:
            at_BT = host["at_mask"] & (host["labels"] != IGNORE)
            hits += int((out["predictions"][at_BT] == host["labels"][at_BT]).sum())
            shown += int(at_BT.sum())
        return {"perplexity": metrics.perplexity(nll, count),
                "masked_accuracy": correct / max(count, 1.0),
                "mask_token_accuracy": hits / max(shown, 1)}

    def headline(self) -> str:
        return "perplexity"

    def finish(self, trainer, workdir: str) -> dict:
        """Exports the pre-trained encoder as a HF folder (+ tokenizer) for transfer runs."""
        if self.config.peft.method != "full":
            return {}
        import shutil  # noqa: PLC0415
        out = export_hf(trainer, workdir, trainer.inference_variables())
        source = self._tokenizer_dir
        for name in ("tokenizer.model", "tokenizer_config.json", "tokenizer.json", "vocab.txt",
                     "special_tokens_map.json"):
            if source and os.path.exists(os.path.join(source, name)):
                shutil.copy(os.path.join(source, name), out)
        return {"exported": out}


TASKS = {"sequence_classification": SequenceClassification,
         "token_classification": TokenClassification, "causal_lm": CausalLM, "mlm": MaskedLM}


def get(config: ml_collections.ConfigDict):
    """The task object for `config.model.task` (ResNet: sequence classification of images)."""
    task = "sequence_classification" if config.model.family == "resnet" else config.model.task
    if task == "mlm" and config.data.kind == "movielens":
        from lmx import recsys  # noqa: PLC0415
        return recsys.NextItem(config)
    return TASKS[task](config)
