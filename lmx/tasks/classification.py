"""One label per text or image: CSV / TSV / JSONL, PhraseBank, CLINC150, tfds, images."""
from __future__ import annotations

import os
from typing import Iterator

import jax
import numpy as np

from lmx import metrics, report
from lmx.data import batching, examples as data, hostdata, readers, sources
from lmx.models import families
from lmx.tasks.base import Datasets, Task, export_hf


class SequenceClassification(Task):
    """One label per text (or image): CSV / TSV / JSONL, PhraseBank, CLINC150, tfds, images,
    digits, synthetic."""
    packable = True
    plot_metrics = ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall")

    def _rows(self, path: str, split: str) -> tuple[list[str], list[str], list[int] | None]:
        d = self.config.data
        if path.startswith(sources.TFDS):
            rows = sources.tfds_records(path, split, d)
            if d.kind == "clinc150" and not d.include_oos:  # as readers.read_clinc150 has it
                rows = [r for r in rows if r["label"] != readers.CLINC150_OOS_LABEL]
            return [r["text"] for r in rows], [r["label"] for r in rows], None
        path = sources.local_file(path)
        if d.kind == "phrasebank":
            rows = readers.read_phrasebank(path)
            return [r["text"] for r in rows], [r["label"] for r in rows], None
        if d.kind == "clinc150":
            rows = readers.read_clinc150(path, split, include_oos=d.include_oos)
            return [r["text"] for r in rows], [r["label"] for r in rows], None
        if path.endswith(".jsonl"):
            rows = readers.read_jsonl(path, (d.text_column, d.label_column))
            return [str(r[d.text_column]) for r in rows], [str(r[d.label_column])
                                                          for r in rows], None
        rows = readers.read_delimited(path, d.text_column, d.label_column)  # CSV, TSV
        return [r["text"] for r in rows], [r["label"] for r in rows], [r["line"] for r in rows]

    def load(self, config, workdir: str) -> Datasets:
        d = config.data
        if d.kind in ("synthetic", "digits"):
            examples = (data.synthetic(512, 128, d.max_length, 2, d.split_seed)
                        if d.kind == "synthetic" else data.digits(config.model.image_size))
            names = [str(i) for i in range(int(examples.labels.max()) + 1)]
            examples, names = sources.keep_labels(examples, names, d.keep_labels)
            train, validation = sources.carve(examples, d, by="label")
            return Datasets(train, validation, None, names, 0)
        if d.kind == "images":
            return self._load_images(config)
        tokenizer, folder = sources.tokenizer_for(config, workdir)
        if d.host_input:  # this process tokenizes only its share (labels_file is required)
            names = readers.read_label_names(d.labels_file)
            train = self._host_train(tokenizer, folder, names, workdir)
        else:
            train_rows = self._rows(d.train_file, d.train_split)
            names = (readers.read_label_names(d.labels_file) if d.labels_file
                     else sorted(set(train_rows[1])))

        def encode(texts, label_strings, lines, path):
            label_array = data.label_ids(label_strings, names, path, lines)  # before tokenizing
            ids, types = data.tokenize(tokenizer, texts, d.max_length)
            return data.Examples(ids, types, label_array)

        if not d.host_input:
            train = encode(*train_rows, d.train_file)
        if d.validation_file or d.validation_split:
            path = d.validation_file or d.train_file
            validation = encode(*self._rows(path, d.validation_split), path)
        else:
            train, validation = sources.carve(train, d, by="label")
        test = None
        if d.test_file:
            test = encode(*self._rows(d.test_file, d.test_split), d.test_file)
        return Datasets(train, validation, test, names, tokenizer.pad_id, tokenizer=tokenizer)

    def _host_train(self, tokenizer, folder, names: list[str], workdir: str):
        """The training split through the per-host token cache (lmx.data.hostdata): this
        process encodes records i % P == p (a tfds split is read record by record, so only
        those), unless its share is cached; then every share, memory-mapped."""
        d = self.config.data
        if d.train_file.startswith(sources.TFDS):
            records = sources.tfds_source(d.train_file, d.train_split, d)
            where = f"{d.train_file}[{d.train_split}]"
        else:
            texts, labels, lines = self._rows(d.train_file, d.train_split)
            records = [(t, y, n) for t, y, n in zip(texts, labels, lines or [None] * len(texts))]
            where = f"{d.train_file} ({os.path.getsize(sources.local_file(d.train_file))} bytes)"
        if d.max_train_examples:  # the first N, as loop._first keeps them
            records = hostdata.First(records, d.max_train_examples)

        def encode(record) -> dict:
            text, label, line = ((record["text"], record["label"], None)
                                 if isinstance(record, dict) else record)
            label_id, = data.label_ids([label], names, d.train_file, None if line is None
                                       else [line])
            (ids,), (types,) = data.tokenize(tokenizer, [text], d.max_length)
            return {"ids": ids, "token_types": types, "labels": label_id}

        key = (f"{where} n={len(records)} tokenizer={folder or d.tokenizer} "
               f"max_length={d.max_length} labels={names}")
        return hostdata.cached_share(records, encode, d.token_cache or os.path.join(
            workdir, "token_cache"), key)

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
            train, validation = sources.carve(train, d, by="label")
        test = keep(read(d.test_file, d.test_split)) if d.test_file else None
        return Datasets(train, validation, test, names, 0)

    def finish(self, trainer, workdir: str) -> dict:
        """WORKDIR/confusion.json: the validation split's most frequent mistakes and lowest
        recalls (`metrics.confusion`). A fully trained image model (ResNet, ViT) is exported as
        a HF folder (WORKDIR/hf) that `config.model.pretrained` reads: the pre-training half of
        a transfer experiment."""
        collected = trainer.collect(trainer.datasets["validation"])
        labels = np.concatenate([h["labels"][h["real"]] for h, _ in collected])
        predictions = np.concatenate([o["predictions"][h["real"]] for h, o in collected])
        out = {"confusion": report.write_json(workdir, "confusion.json", metrics.confusion(
            labels, predictions, self.label_names))}
        images = families.get(self.config.model.family).inputs == "images"
        if not images or self.config.peft.method != "full":
            return out
        variables = trainer.inference_variables()
        return {**out, "exported": export_hf(trainer, workdir, variables,
                                      tuple(c for c in ("params", "batch_stats") if c in variables))}

    def eval_batches(self, split) -> Iterator[tuple[dict, dict]]:
        c = self.config
        for batch, _ in batching.eval_batches(split, c.train.eval_batch_size,
                                              pad_id=self.pad_id,
                                              pad_multiple=c.data.pad_multiple):
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
