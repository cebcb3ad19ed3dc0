"""Local readers: formats exactly right, every malformed line an error naming file and line.

Fixtures are written to tmp_path, so everything but the real-data counts runs without
../shared/data; each real-data count is skipped with its reason where the file is missing,
and fails under CI=true (tests/shared_data.py), so CI can never shrink silently.
"""
import collections
import os

import numpy as np
import pytest

import shared_data
from lmx.data import readers

DATA = shared_data.ROOT


def _write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


# --- CoNLL ---------------------------------------------------------------------------------

CONLL = ("-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\nGerman JJ I-NP I-MISC\n"
         "call NN I-NP O\n\nPeter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\n\n"
         "-DOCSTART- -X- O O\n\nin IN I-PP O\nEngland NNP I-NP I-LOC\nLondon NNP I-NP B-LOC\n"
         "Paris NNP I-NP I-LOC\n")


def test_conll_iob1_to_bio_sentences_and_documents(tmp_path):
    sentences = readers.read_conll(_write(tmp_path, "x.conll", CONLL))
    assert [s["words"] for s in sentences] == [
        ["EU", "rejects", "German", "call"], ["Peter", "Blackburn"],
        ["in", "England", "London", "Paris"]]
    assert [s["tags"] for s in sentences] == [
        ["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"], ["O", "B-LOC", "B-LOC", "I-LOC"]]
    assert [s["document"] for s in sentences] == [0, 0, 1]


def test_iob1_to_bio_type_change_starts_an_entity():
    assert readers.iob1_to_bio(["I-PER", "I-LOC", "O", "I-LOC", "B-LOC", "I-LOC"]) == [
        "B-PER", "B-LOC", "O", "B-LOC", "B-LOC", "I-LOC"]


@pytest.mark.parametrize("text, line, what", [
    ("EU NNP I-NP I-ORG\nrejects VBZ O\n", 2, "expected 4 space-separated columns"),
    ("EU NNP I-NP I-ORG\n\nx NN O X-ORG\n", 3, "expected a tag O, B-TYPE or I-TYPE"),
    ("EU NNP I-NP I-ORG\nbad\tNN I-NP O\n", 2, "expected 4"),
    ("ok NN O O\n\xff\n", 2, "not valid utf-8"),
])
def test_conll_malformed_line_names_file_and_line(tmp_path, text, line, what):
    path = _write(tmp_path, "bad.conll", text, encoding="latin-1")
    with pytest.raises(ValueError, match=rf"bad\.conll:{line}: {what}"):
        readers.read_conll(path)


def test_conll_bio_scheme_refuses_an_orphan_inside_tag(tmp_path):
    path = _write(tmp_path, "b.conll", "a NN O B-PER\nb NN O O\nc NN O I-PER\n")
    with pytest.raises(ValueError, match=r"b\.conll:3: I-PER does not continue"):
        readers.read_conll(path, scheme="bio")


# --- CSV / TSV / JSONL / PhraseBank / CLINC / ratings ---------------------------------------

@pytest.mark.parametrize("bom", ["\ufeff", ""])
def test_csv_bom_crlf_quoted_newline_blank_line(tmp_path, bom):
    path = _write(tmp_path, "d.csv",
                  bom + 'text,category\r\n"two\r\nlines, comma",a\r\n\r\nplain,b\r\n')
    assert readers.read_delimited(path, "text", "category") == [
        {"text": "two\r\nlines, comma", "label": "a", "line": 3},
        {"text": "plain", "label": "b", "line": 5}]  # the line a row ends on; blank skipped


def test_tsv_keeps_bare_quotes(tmp_path):
    path = _write(tmp_path, "d.tsv", 'sentence\tlabel\nit \'s "fine" \t1\n')
    assert readers.read_delimited(path, "sentence", "label") == [
        {"text": 'it \'s "fine" ', "label": "1", "line": 2}]


@pytest.mark.parametrize("name, text, line, what", [
    ("d.csv", "text,category\nok,a\ntoo,many,fields\n", 3, "expected 2 fields"),
    ("d.csv", 'text,category\r\n"multi\r\nline",a\r\nshort\r\n', 4, "expected 2 fields"),
    ("d.csv", "text,category\nok,\n", 2, "expected a label"),
    ("d.csv", "sentence,category\nok,a\n", 1, "expected a column 'text'"),
    ("d.csv", 'text,category\n"a"b,c\n', 2, "malformed CSV"),
    ("d.tsv", "text\tcategory\nok\ta\nno tab here\n", 3, "expected 2 fields"),
])
def test_delimited_malformed(tmp_path, name, text, line, what):
    path = _write(tmp_path, name, text)
    with pytest.raises(ValueError, match=rf"d\.(csv|tsv):{line}: {what}"):
        readers.read_delimited(path, "text", "category")


def test_jsonl_fields_and_errors(tmp_path):
    path = _write(tmp_path, "d.jsonl", '{"t": "a", "y": 1, "z": 0}\n\n{"t": "b", "y": 2}\n')
    assert readers.read_jsonl(path, ["t", "y"]) == [{"t": "a", "y": 1}, {"t": "b", "y": 2}]
    for text, line, what in (('{"t": "a", "y": 1}\n{"t": "b"}\n', 2, r"expected fields .*missing \['y'\]"),
                             ('{"t": "a", "y": 1}\n{"t": \n', 2, "expected a JSON object"),
                             ('[1, 2]\n', 1, "expected a JSON object, got list")):
        with pytest.raises(ValueError, match=rf"e\.jsonl:{line}: {what}"):
            readers.read_jsonl(_write(tmp_path, "e.jsonl", text), ["t", "y"])


def test_phrasebank_latin1_last_at(tmp_path):
    path = _write(tmp_path, "p.txt", "Profit \xe9 up @ 5 %@positive\nFlat.@neutral", "latin-1")
    assert readers.read_phrasebank(path) == [
        {"text": "Profit \xe9 up @ 5 %", "label": "positive"},
        {"text": "Flat.", "label": "neutral"}]
    for text, line, what in (("a@neutral\nno label here\n", 2, "expected 'sentence@label'"),
                             ("a@neutral\nb@neutral\nc@good\n", 3, "expected a label in")):
        with pytest.raises(ValueError, match=rf"q\.txt:{line}: {what}"):
            readers.read_phrasebank(_write(tmp_path, "q.txt", text, "latin-1"))


CLINC = ('{\n "val": [\n  ["what is my balance", "balance"],\n  ["hi", "greeting"]\n ],\n'
         ' "oos_val": [\n  ["a show on broadway", "oos"]\n ],\n "train": []\n}\n')


def test_clinc150_splits_and_oos(tmp_path):
    path = _write(tmp_path, "c.json", CLINC)
    records = readers.read_clinc150(path, "val")
    assert [r["label"] for r in records] == ["balance", "greeting", "oos"]
    assert len(readers.read_clinc150(path, "val", include_oos=False)) == 2
    with pytest.raises(ValueError, match=r"no key 'oos_train'"):
        readers.read_clinc150(path, "train")


@pytest.mark.parametrize("old, new, line, what", [
    ('["hi", "greeting"]', '["hi"]', 4, r"val: expected \[text, intent\]"),
    ('["a show on broadway", "oos"]', '["a show", "weather"]', 7, "oos_val: expected label 'oos'"),
    ('"balance"],', '"balance"]', 4, "expected one of ',]', got '\\['"),
    ('["hi", "greeting"]', '["hi", greeting]', 4, "invalid JSON"),
])
def test_clinc150_malformed_entry_names_its_line(tmp_path, old, new, line, what):
    path = _write(tmp_path, "c.json", CLINC.replace(old, new))
    with pytest.raises(ValueError, match=rf"c\.json:{line}: {what}"):
        readers.read_clinc150(path, "val")


def test_read_text_is_byte_exact_and_names_bad_bytes(tmp_path):
    text = "First line\r\nsecond\x0cpage\n\nlast"
    assert readers.read_text(_write(tmp_path, "t.txt", text)) == text
    path = tmp_path / "b.txt"
    path.write_bytes(b"ok\nok\n\xff\n")
    with pytest.raises(ValueError, match=r"b\.txt:3: not valid utf-8"):
        readers.read_text(str(path))


def test_ratings_arrays_and_errors(tmp_path):
    path = _write(tmp_path, "r.csv", "userId,movieId,rating,timestamp\r\n1,31,2.5,1260759144\r\n"
                                     "2,10,4.0,835355493\r\n")
    ratings = readers.read_ratings(path)
    np.testing.assert_array_equal(ratings["item_id"], [31, 10])
    assert ratings["rating"].dtype == np.float32 and ratings["timestamp"][1] == 835355493
    for text, line, what in (("userId,movieId,rating,timestamp\n1,2,3.0,4\n1,2,x,4\n", 3, "expected"),
                             ("userId,movieId,rating,timestamp\n1,2,3.0\n", 2, "3 fields"),
                             ("userId,movieId,rating,timestamp\n1,2,7.5,4\n", 2, "outside"),
                             ("user,movie,rating,ts\n1,2,3.0,4\n", 1, "expected header"),
                             ('"', 1, "malformed CSV")):  # an unclosed quote (found by fuzzing)
        with pytest.raises(ValueError, match=rf"s\.csv:{line}: .*{what}"):
            readers.read_ratings(_write(tmp_path, "s.csv", text))


# --- the real files, where /work/shared/data exists ---------------------------------------

def _counts_conll(path):
    sentences = readers.read_conll(path)
    entities = collections.Counter(t[2:] for s in sentences for t in s["tags"] if t[0] == "B")
    return (len(sentences), sentences[-1]["document"] + 1,
            sum(len(s["words"]) for s in sentences),
            tuple(entities[k] for k in ("LOC", "MISC", "ORG", "PER")))


def _labels(records):
    return len(records), dict(collections.Counter(r["label"] for r in records))


# (relative path, function of the path, the counts in that folder's SOURCE.md)
REAL = [
    ("conll2003/eng.train", _counts_conll, (14041, 946, 203621, (7140, 3438, 6321, 6600))),
    ("conll2003/eng.testa", _counts_conll, (3250, 216, 51362, (1837, 922, 1341, 1842))),
    ("sst2/train.tsv", lambda p: _labels(readers.read_delimited(p, "sentence", "label")),
     (67349, {"0": 29780, "1": 37569})),
    ("sst2/dev.tsv", lambda p: _labels(readers.read_delimited(p, "sentence", "label")),
     (872, {"0": 428, "1": 444})),
    ("banking77/train.csv",
     lambda p: (lambda r: (len(r), len({x["label"] for x in r})))(
         readers.read_delimited(p, "text", "category")), (10003, 77)),
    ("financial_phrasebank/Sentences_50Agree.txt", lambda p: _labels(readers.read_phrasebank(p)),
     (4846, {"positive": 1363, "negative": 604, "neutral": 2879})),
    ("financial_phrasebank/Sentences_AllAgree.txt", lambda p: _labels(readers.read_phrasebank(p)),
     (2264, {"positive": 570, "negative": 303, "neutral": 1391})),
    ("clinc150/data_full.json",
     lambda p: [(len(r), len({x["label"] for x in r}), sum(x["label"] == "oos" for x in r))
                for r in (readers.read_clinc150(p, s) for s in ("train", "val", "test"))],
     [(15100, 151, 100), (3100, 151, 100), (5500, 151, 1000)]),
    ("tiny_shakespeare/input.txt", lambda p: (lambda t: (len(t), len(set(t))))(readers.read_text(p)),
     (1115394, 65)),
    ("movielens_ml_latest_small/ratings.csv",
     lambda p: (lambda r: (len(r["user_id"]), len(set(r["user_id"].tolist())),
                           len(set(r["item_id"].tolist())), len(set(r["rating"].tolist()))))(
         readers.read_ratings(p)), (100836, 610, 9724, 10)),
]
@pytest.mark.parametrize("relative, count, expected", REAL, ids=[c[0] for c in REAL])
def test_real_file_counts_match_source_md(relative, count, expected):
    shared_data.require(os.path.join(DATA, relative))  # skipped off CI, never shrinks on CI
    assert count(os.path.join(DATA, relative)) == expected


def test_real_data_counting_on_a_fixture(tmp_path):
    """Runs with or without the data folder: the counting the real-data test relies on."""
    assert _counts_conll(_write(tmp_path, "x.conll", CONLL)) == (3, 2, 10, (2, 1, 1, 1))
