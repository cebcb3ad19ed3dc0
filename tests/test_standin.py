"""Generated stand-ins (lmx.data.standin) read by the real readers with the planted answers:
each CoNLL entity is one of the template's name lists under its type, and every SST-2 label
agrees with the adjective list its sentence was drawn from."""
import numpy as np

from lmx import metrics
from lmx.data import readers, standin


def test_conll_standin_reads_back_its_planted_entities(tmp_path):
    paths = standin.conll(str(tmp_path), train=30, validation=10)
    assert sorted(paths) == ["train_file", "validation_file"]
    assert all("STAND-IN" in p for p in paths.values())
    sentences = readers.read_conll(paths["train_file"])
    assert len(sentences) == 30
    pools = {"PER": standin.PER, "ORG": standin.ORG, "LOC": standin.LOC, "MISC": standin.MISC}
    found = set()
    for s in sentences:
        for kind, start, end in metrics.entities(s["tags"]):
            assert " ".join(s["words"][start:end + 1]) in pools[kind], (s, kind)
            found.add(kind)
    assert found == set(pools)


def test_sst2_standin_labels_follow_the_adjectives(tmp_path):
    paths = standin.sst2(str(tmp_path), train=40, validation=10)
    rows = readers.read_delimited(paths["train_file"], paths["text_column"],
                                  paths["label_column"])
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    assert len(texts) == 40 and set(labels) == {"0", "1"}
    positive = np.array([any(a in t for a in standin.POSITIVE) for t in texts])
    assert (positive == (np.array(labels) == "1")).all()
