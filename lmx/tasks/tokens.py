"""Tags per word (NER): first-sub-token alignment, entity-level scores."""
from __future__ import annotations

import os

from lmx import metrics
from lmx.data import readers, sources, transforms
from lmx.tasks.base import IGNORE, Datasets, Task
from lmx.tasks.classification import SequenceClassification


class TokenClassification(Task):
    """Tags per word (CoNLL column files, BIO): the first sub-token carries the word's tag;
    scored with entity-level precision / recall / F1 (seqeval's default mode)."""
    packable = True
    plot_metrics = ("f1", "precision", "recall")

    def load(self, config, workdir: str) -> Datasets:
        d = config.data
        tokenizer, folder = sources.tokenizer_for(config, workdir)

        def read(path, split):  # tfds' conll2003 tags are already BIO
            if path.startswith(sources.TFDS):
                return sources.tfds_records(path, split, d)
            return readers.read_conll(sources.local_file(path), scheme=d.tag_scheme)

        train = read(d.train_file, d.train_split)
        tags = sorted({t for s in train for t in s["tags"]} - {"O"})
        names = (readers.read_label_names(d.labels_file) if d.labels_file else ["O"] + tags)
        align = transforms.align_labels(tokenizer, label_names=names, max_length=d.max_length)
        encode = lambda sentences: [align(s) for s in sentences]  # noqa: E731
        if sources.separate_validation(d):
            validation = encode(read(d.validation_file or d.train_file, d.validation_split))
            train = encode(train)
        else:
            train, validation = sources.carve(train, d, by="row")
            train, validation = encode(train), encode(validation)
        test = encode(read(d.test_file, d.test_split)) if d.test_file else None
        return Datasets(train, validation, test, names, tokenizer.pad_id, tokenizer=tokenizer)

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
