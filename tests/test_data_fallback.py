"""Every experiment runs without ../shared/data: lmx.data.catalog falls back to a tfds catalog
name or a checksummed download. Each fallback is read end to end here with no network: a tiny
local copy (the fast path) and the same examples served by `tfds.testing.mock_data` (or by a
file:// mirror of the download) must load into the same task data - label names, tag scheme,
the OOS class, the ratings table, splits."""
import glob
import hashlib
import importlib.util
import json
import os
import zipfile

import numpy as np
import pytest

from lmx import config as config_lib, tasks
from lmx.data import catalog, fetch, sources
from lmx.tasks import prompting
from lmx.train import loop

tfds = pytest.importorskip("tensorflow_datasets")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))


def _config(name: str, arg: str = "runlocal"):
    path = os.path.join(ROOT, "experiments", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture
def root(monkeypatch, tmp_path):
    """catalog.LOCAL_ROOT at an empty folder: the fallback, until a test writes the local copy."""
    folder = tmp_path / "shared_data"
    folder.mkdir()
    monkeypatch.setattr(catalog, "LOCAL_ROOT", str(folder))
    return folder


def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))


def _mock(splits: dict[str, list[dict]]):
    """tfds.testing.mock_data serving `splits` (a "+"-joined split reads its parts in order)."""
    def source(self, split, **kwargs):
        return [example for part in str(split).split("+") for example in splits[part]]
    return tfds.testing.mock_data(num_examples=1, as_data_source_fn=source)


def _load(config, workdir):
    config_lib.validate(config, 1)
    return tasks.get(config).load(config, str(workdir))


def _assert_same(a, b):
    """Two task Datasets hold the same label names and the same arrays in every split."""
    assert a.label_names == b.label_names
    for name in ("train", "validation", "test"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            assert len(x) == len(y), name
            for i in range(len(x)):
                for key in ("ids", "labels"):
                    np.testing.assert_array_equal(x[i][key], y[i][key], err_msg=f"{name}[{i}]")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_without_local_data_no_experiment_reads_it(path, root):
    """`../shared/data` is a fast path only: without it every data file of every experiment is
    a tfds name, a download, or a file inside the repository, and the config validates."""
    spec = importlib.util.spec_from_file_location("experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["runlocal"] + {"tiny_shakespeare_gpt.py": ["adapt"],
                           "financial_phrasebank.py": ["50agree"]}.get(os.path.basename(path), [])
    for arg in args:
        config = module.get_config(arg)
        for key in ("train_file", "validation_file", "test_file"):
            value = config.data[key]
            assert (not value or value.startswith(("tfds:", "fetch:"))
                    or os.path.realpath(value).startswith(ROOT + os.sep)), (arg, key, value)
        config_lib.validate(config, 1)


def test_local_copy_is_the_fast_path_and_a_partial_one_is_not(root):
    for folder, local, _ in catalog.DATASETS.values():
        for key, name in local.items():
            if key.endswith("_file"):
                _write(root / folder / name, "x")
    for name, (folder, local, _) in catalog.DATASETS.items():
        keys = catalog.data(name)
        assert keys["train_file"] == str(root / folder / local["train_file"]), name
    assert _config("conll03_ner").data.validation_file == str(root / "conll2003" / "eng.testa")
    os.remove(root / "conll2003" / "eng.testa")  # one file missing: the whole fallback
    data = _config("conll03_ner").data
    assert (data.train_file, data.validation_file) == ("tfds:conll2003", "tfds:conll2003")
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        catalog.data("nope")


# --- SST-2: sst2.py, prompt_sst2.py, mlm_pretrain.py --------------------------------------

SST2 = {"train": [("a gripping , funny film ", 1), ("dull and long ", 0),
                  ("the best thing this year ", 1), ("it never ends ", 0)],
        "validation": [("a small wonder . ", 1), ("nothing works . ", 0)]}


def _sst2_local(root):
    for split, name in (("train", "train.tsv"), ("validation", "dev.tsv")):
        _write(root / "sst2" / name,
               "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in SST2[split]))


def _sst2_tfds():
    return _mock({split: [{"sentence": t.encode(), "label": y, "idx": i}
                          for i, (t, y) in enumerate(rows)] for split, rows in SST2.items()})


def test_sst2_experiments_read_tfds_glue_sst2_as_the_tsv_files(root, tmp_path):
    fallback = _config("sst2")
    assert (fallback.data.train_file, fallback.data.validation_split) == ("tfds:glue/sst2",
                                                                          "validation")
    with _sst2_tfds():
        remote = _load(fallback, tmp_path / "tfds")
        prompt = _config("prompt_sst2")
        prompt_eval = prompting.read_examples(prompt.data.validation_file,
                                              prompt.data.validation_split, prompt)
        mlm = _config("mlm_pretrain").data
        mlm_lines = sources.corpus_lines(mlm.train_file, mlm, mlm.train_split)
    _sst2_local(root)
    _assert_same(_load(_config("sst2"), tmp_path / "local"), remote)
    assert remote.label_names == ["0", "1"] and len(remote.validation) == 2
    prompt = _config("prompt_sst2")
    assert prompt_eval == prompting.read_examples(prompt.data.validation_file,
                                                  prompt.data.validation_split, prompt)
    mlm = _config("mlm_pretrain").data
    assert mlm_lines == sources.corpus_lines(mlm.train_file, mlm, mlm.train_split)
    assert mlm_lines == [t for t, _ in SST2["train"]]  # the train split only


# --- CoNLL-2003: conll03_ner.py ------------------------------------------------------------

CONLL = {"train": [[("EU", "I-ORG"), ("rejects", "O"), ("German", "I-MISC"), ("call", "O")],
                   [("Peter", "I-PER"), ("Blackburn", "I-PER")],
                   [("Paris", "I-LOC"), ("Rome", "B-LOC"), ("and", "O"), ("Bonn", "I-LOC")]],
         "validation": [[("Japan", "I-LOC"), ("wins", "O")], [("Mary", "I-PER"), ("Smith", "I-PER")]]}


def test_conll03_reads_tfds_conll2003_as_the_iob1_files(root, tmp_path):
    from lmx.data import readers  # noqa: PLC0415
    import tensorflow_datasets.text  # noqa: F401, PLC0415  (registers conll2003)
    names = tfds.builder("conll2003").info.features["ner"].feature.names

    def example(sentence):
        bio = readers.iob1_to_bio([t for _, t in sentence])  # tfds' copy is already BIO
        return {"tokens": np.asarray([w.encode() for w, _ in sentence], object),
                "ner": np.asarray([names.index(t) for t in bio]),
                "pos": np.zeros(len(sentence), np.int64),
                "chunks": np.zeros(len(sentence), np.int64)}

    with _mock({s: [example(x) for x in rows] for s, rows in CONLL.items()}):
        remote = _load(_config("conll03_ner"), tmp_path / "tfds")
    for split, name in (("train", "eng.train"), ("validation", "eng.testa")):
        _write(root / "conll2003" / name, "-DOCSTART- -X- O O\n\n" + "\n".join(
            "".join(f"{w} NNP I-NP {t}\n" for w, t in s) for s in CONLL[split]))
    _assert_same(_load(_config("conll03_ner"), tmp_path / "local"), remote)
    assert remote.label_names == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER"]  # BIO
    assert [s["tags"] for s in remote.train][2] == ["B-LOC", "B-LOC", "O", "B-LOC"]


# --- CLINC150: clinc150.py -----------------------------------------------------------------

CLINC = {"train": [("how do i say hi in french", "translate"),
                   ("move 100 dollars to savings", "transfer"),
                   ("translate cat to german", "translate"), ("send money to bob", "transfer")],
         "val": [("what is hello in spanish", "translate"), ("wire 5 dollars", "transfer")],
         "test": [("say thanks in italian", "translate")],
         "oos_train": [("what is the meaning of life", "oos"), ("sing me a song", "oos")],
         "oos_val": [("how tall is everest", "oos")], "oos_test": [("tell me a joke", "oos")]}
TFDS_CLINC = {"train": "train", "validation": "val", "test": "test", "train_oos": "oos_train",
              "validation_oos": "oos_val", "test_oos": "oos_test"}


def _clinc_tfds(repeat: int = 1):
    intents = {"translate": 84, "transfer": 7, "oos": 150}  # tfds: OOS is intent 150, "oos"
    return _mock({split: [{"text": t.encode(), "intent": intents[y], "intent_name": y.encode(),
                           "domain": 0, "domain_name": b"x"} for t, y in CLINC[key]]
                  * (repeat if split.startswith("train") else 1)
                  for split, key in TFDS_CLINC.items()})


def test_clinc150_reads_tfds_clinc_oos_as_data_full_json(root, tmp_path):
    config = _config("clinc150")
    with _clinc_tfds():
        remote = _load(config, tmp_path / "tfds")
        config.data.include_oos = False
        remote_in_scope = _load(config, tmp_path / "tfds_in")
    _write(root / "clinc150" / "data_full.json",
           json.dumps({k: [list(r) for r in v] for k, v in CLINC.items()}))
    config = _config("clinc150")
    assert config.data.train_file.endswith("data_full.json")
    _assert_same(_load(config, tmp_path / "local"), remote)
    assert remote.label_names == ["oos", "transfer", "translate"]
    assert list(remote.validation.labels) == [2, 1, 0]  # val, then oos_val
    config.data.include_oos = False
    _assert_same(_load(config, tmp_path / "local_in"), remote_in_scope)
    assert remote_in_scope.label_names == ["transfer", "translate"]


def test_clinc150_fallback_trains_and_scores_oos(root, tmp_path):
    from test_tasks import _tiny_bert_folder  # noqa: PLC0415
    config = _config("clinc150")
    config.model.pretrained = _tiny_bert_folder(tmp_path / "bert")
    config.train.num_steps, config.train.batch_size, config.train.eval_every = 2, 8, 2
    with _clinc_tfds(repeat=2):  # 12 training queries: one batch of 8
        results = loop.run(config, str(tmp_path / "run"))
    assert results["data"]["validation_examples"] == 3
    assert {"in_scope_accuracy", "oos_recall"} <= set(results["validation"])


# --- tiny Shakespeare: tiny_shakespeare_gpt.py ---------------------------------------------

def test_tiny_shakespeare_reads_tfds_splits_as_input_txt(root, tmp_path):
    text = "".join(f"CITIZEN {i}:\nBefore we proceed any further, hear me speak.\n\n"
                   for i in range(60))
    i = int(len(text) * 0.9)  # tfds' tiny_shakespeare: 90 / 5 / 5 of input.txt
    j = i + int((len(text) - i) * 0.5)
    parts = {"train": text[:i], "validation": text[i:j], "test": text[j:]}
    with _mock({s: [{"text": t.encode()}] for s, t in parts.items()}):
        remote = _load(_config("tiny_shakespeare_gpt"), tmp_path / "tfds")
    _write(root / "tiny_shakespeare" / "input.txt", text)
    local = _load(_config("tiny_shakespeare_gpt"), tmp_path / "local")
    _assert_same(local, remote)
    assert remote.tokenizer.vocab_size == local.tokenizer.vocab_size
    assert len(remote.train) + len(remote.validation) == len(text)  # one text, carved 90 / 10


# --- MovieLens: movielens_rec.py -----------------------------------------------------------

def _ratings():
    """ratings.csv rows (userId, movieId, rating, timestamp) sorted by user then movie, as
    GroupLens ships them; equal timestamps make the file order matter."""
    rng = np.random.default_rng(0)
    rows = set()
    for user in range(1, 9):
        for movie in rng.choice([1, 3, 6, 47, 50, 70, 101, 110, 151, 157], 6, replace=False):
            rows.add((user, int(movie), float(rng.integers(1, 11)) / 2,
                      964980000 + int(rng.integers(0, 4))))
    return sorted(rows)


def test_movielens_reads_tfds_ratings_as_ratings_csv(root, tmp_path):
    rows = _ratings()
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    fake = [{"user_id": str(u).encode(), "movie_id": str(m).encode(), "user_rating": r,
             "timestamp": t, "movie_title": b"t", "movie_genres": np.zeros(1, np.int64)}
            for u, m, r, t in shuffled]  # tfds shuffles its records
    config = _config("movielens_rec")
    with _mock({"train": fake}):
        table = sources.read_ratings(config.data.train_file, config.data.train_split,
                                     config.data)
        remote = _load(config, tmp_path / "tfds")
    _write(root / "movielens_ml_latest_small" / "ratings.csv",
           "userId,movieId,rating,timestamp\r\n" + "".join(
               f"{u},{m},{r},{t}\r\n" for u, m, r, t in rows))
    config = _config("movielens_rec")
    local_table = sources.read_ratings(config.data.train_file, "", config.data)
    for key in ("user_id", "item_id", "rating", "timestamp"):
        np.testing.assert_array_equal(table[key], local_table[key], err_msg=key)
        assert table[key].dtype == local_table[key].dtype
    task = tasks.get(config)
    local = task.load(config, str(tmp_path / "local"))
    for a, b in zip(local.validation + local.test, remote.validation + remote.test):
        assert a["target"] == b["target"]
        np.testing.assert_array_equal(a["ids"], b["ids"])
        np.testing.assert_array_equal(a["seen"], b["seen"])
    assert len(local.validation) == len(remote.validation) == 8


# --- Financial PhraseBank: financial_phrasebank.py (a download, not in tfds) ---------------

PHRASEBANK = ("Operating profit rose to EUR 13.1 mn .@positive\n"
              "Sales in Finland decreased by 10.5 % .@negative\n"
              "The company is based in Espoo , Finland .@neutral\n"
              "Profit fell , says K\xe4rkk\xe4inen .@negative\n"
              "Net sales increased to EUR 193.3 mn .@positive\n"
              "Tieto is a Nordic IT company .@neutral")


def mirror_zip(folder, files: dict[str, str]) -> tuple[str, str]:
    """A zip of `files` (ISO-8859-1, as the corpus is) and its sha256."""
    path = os.path.join(folder, "FinancialPhraseBank-v1.0.zip")
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text.encode("iso-8859-1"))
    with open(path, "rb") as f:
        return path, hashlib.sha256(f.read()).hexdigest()


def test_financial_phrasebank_fetches_from_a_mirror_and_reads_as_the_local_file(
        root, tmp_path, monkeypatch):
    monkeypatch.setenv("LMX_DATA_DIR", str(tmp_path / "cache"))
    path, sha = mirror_zip(str(tmp_path), {
        "FinancialPhraseBank-v1.0/Sentences_AllAgree.txt": PHRASEBANK,
        "FinancialPhraseBank-v1.0/Sentences_50Agree.txt": PHRASEBANK})
    spec = fetch.DOWNLOADS["financial_phrasebank"]
    monkeypatch.setitem(fetch.DOWNLOADS, "financial_phrasebank", fetch.Download(
        url="file://" + path, sha256=sha, licence=spec.licence, files=spec.files))
    config = _config("financial_phrasebank")
    assert config.data.train_file.startswith("fetch:financial_phrasebank/")
    assert not os.path.exists(tmp_path / "cache")  # building a config fetches nothing
    remote = _load(config, tmp_path / "fetched")
    assert os.path.isfile(tmp_path / "cache" / "financial_phrasebank" / spec.files[0])
    os.remove(path)  # cached: the next load needs no mirror
    again = _load(_config("financial_phrasebank"), tmp_path / "again")
    _write(root / "financial_phrasebank" / "Sentences_AllAgree.txt", PHRASEBANK,
           encoding="iso-8859-1")
    local = _load(_config("financial_phrasebank"), tmp_path / "local")
    _assert_same(local, remote)
    _assert_same(local, again)
    assert remote.label_names == ["negative", "neutral", "positive"]
