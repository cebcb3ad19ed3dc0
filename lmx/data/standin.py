"""Generated stand-ins for datasets that cannot be shipped or downloaded (CoNLL-2003 is
research-use only; SST-2 has no stated licence): small files in the real ones' formats, built
from templates, so a notebook or a test runs the real readers and tasks without network.

They are NOT the datasets: every file carries "STAND-IN" in its name, and scores on them say
nothing about CoNLL-2003 or SST-2. A user with internet reads the real ones (tfds
`conll2003`, `glue/sst2`; `lmx.data.catalog`).

    paths = standin.conll(DIR, train=400, validation=100)     # {"train_file", "validation_file"}
    paths = standin.sst2(DIR, train=400, validation=100)      # + text / label columns
    config.data.update(paths)
"""
from __future__ import annotations

import os

import numpy as np

PER = ["Anna Schmidt", "John Smith", "Maria Rossi", "Kenji Tanaka", "Omar Haddad", "Li Wei",
       "Sarah Connor", "Pierre Dubois", "Ines Garcia", "Tom Baker"]
ORG = ["Reuters", "Siemens", "the United Nations", "Barclays", "Toyota", "FIFA", "Nokia",
       "the European Commission", "Ajax Amsterdam", "Unilever"]
LOC = ["Berlin", "London", "Tokyo", "Brazil", "Nairobi", "Lake Geneva", "Ohio", "Madrid",
       "South Korea", "Sydney"]
MISC = ["Olympic", "German", "Japanese", "World Cup", "French", "Nobel", "Brazilian",
        "Grand Slam", "Australian", "Euro"]
NER_TEMPLATES = [
    "{PER} joined {ORG} in {LOC} .", "{ORG} shares fell 3 percent in {LOC} on Monday .",
    "{PER} said {ORG} will open an office in {LOC} .", "{PER} won the {MISC} title in {LOC} .",
    "The {MISC} team beat {ORG} 2-1 in {LOC} .", "{ORG} named {PER} chief executive .",
    "Police in {LOC} questioned {PER} on Tuesday .", "{PER} and {PER} met in {LOC} .",
    "{ORG} reported profits above {MISC} forecasts .", "Rain stopped play in {LOC} .",
]
POSITIVE = ["a wonderful", "a moving", "a funny", "a brilliant", "an honest", "a gripping"]
NEGATIVE = ["a dull", "a tedious", "a clumsy", "a lifeless", "a boring", "a messy"]
NOUNS = ["film", "story", "performance", "comedy", "thriller", "script", "drama"]
SST_TEMPLATES = ["{adj} {noun} .", "it is {adj} {noun} from start to finish .",
                 "{adj} {noun} with a strong cast .", "what {adj} {noun} this turned out to be ."]


def _conll_sentence(rng: np.random.Generator) -> list[tuple[str, str]]:
    template = NER_TEMPLATES[rng.integers(len(NER_TEMPLATES))]
    tokens = []
    for piece in template.split(" "):
        kind = piece[1:-1] if piece.startswith("{") else None
        if kind is None:
            tokens.append((piece, "O"))
            continue
        pool = {"PER": PER, "ORG": ORG, "LOC": LOC, "MISC": MISC}[kind]
        words = pool[rng.integers(len(pool))].split(" ")
        tokens += [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)]
    return tokens


def conll(out_dir: str, train: int = 400, validation: int = 100, seed: int = 0) -> dict:
    """CoNLL-2003-format files (`word POS chunk tag`, BIO tags, which the IOB1 reader keeps)."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {}
    for split, n in (("train", train), ("validation", validation)):
        path = os.path.join(out_dir, f"STAND-IN-conll.{split}")
        with open(path, "w", encoding="utf-8") as f:
            f.write("-DOCSTART- -X- -X- O\n\n")
            for _ in range(n):
                f.writelines(f"{word} X X {tag}\n" for word, tag in _conll_sentence(rng))
                f.write("\n")
        paths[f"{split}_file"] = path
    return paths


def sst2(out_dir: str, train: int = 400, validation: int = 100, seed: int = 0) -> dict:
    """GLUE SST-2-format TSVs (`sentence<TAB>label`, 1 = positive) with the config keys."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {"text_column": "sentence", "label_column": "label"}
    for split, n in (("train", train), ("validation", validation)):
        path = os.path.join(out_dir, f"STAND-IN-sst2.{split}.tsv")
        with open(path, "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n")
            for _ in range(n):
                label = int(rng.integers(2))
                adjectives = POSITIVE if label else NEGATIVE
                text = SST_TEMPLATES[rng.integers(len(SST_TEMPLATES))].format(
                    adj=adjectives[rng.integers(len(adjectives))],
                    noun=NOUNS[rng.integers(len(NOUNS))])
                f.write(f"{text}\t{label}\n")
        paths[f"{split}_file"] = path
    return paths
