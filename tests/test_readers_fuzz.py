"""Every lmx.data.readers reader, fuzzed: any bytes either parse or raise a ValueError naming the
file (and, for line-level problems, the line) -- never another exception."""
import re
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from lmx.data import readers

PIECES = {  # fragments each format is made of, so that fuzzing reaches deep into the parsers
    "conll": [b"EU NNP I-NP I-ORG", b"rejects VBZ I-VP O", b"-DOCSTART- -X- -X- O", b"",
              b"German JJ I-NP B-MISC", b"x y z", b"a b c I-", b"\xff", b"\r", b" ", b"\t"],
    "csv": [b"text,label", b'"a, quoted\nline",x', b"plain,y", b",", b'"', b"\r\n", b"\xef\xbb\xbf",
            b"\xff", b"only one field"],
    "tsv": [b"sentence\tlabel", b"good movie\t1", b"\t", b"no tab", b'"q', b"\xff"],
    "jsonl": [b'{"text": "hi", "label": "a"}', b"{", b'{"text": 1}', b"[]", b"null", b"\xff"],
    "phrasebank": [b"Sales rose .@positive", b"@neutral", b"no at sign", b"x@@negative",
                   b"a@unknown", b"\xe9\xe8", b"\r"],
    "clinc": [b'{"train": [["hi", "greet"]], "val": [], "test": [], "oos_train": [],'
              b' "oos_val": [], "oos_test": []}', b"{", b'"train"', b"[[", b"]]", b",", b"1"],
    "ratings": [b"userId,movieId,rating,timestamp", b"1,2,3.5,964982703", b"1,2,9,1",
                b"a,b,c,d", b"1,2", b"\xff"],
}


def _content(kind):
    return st.lists(st.sampled_from(PIECES[kind]), max_size=8).map(b"\n".join)


def _read(kind, path):
    if kind == "conll":
        return readers.read_conll(path)
    if kind in ("csv", "tsv"):
        return readers.read_delimited(path, "text" if kind == "csv" else "sentence", "label")
    if kind == "jsonl":
        return readers.read_jsonl(path, ["text", "label"])
    if kind == "phrasebank":
        return readers.read_phrasebank(path)
    if kind == "clinc":
        return readers.read_clinc150(path, "train")
    return readers.read_ratings(path)


def _check(kind, content: bytes):
    suffix = {"csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl"}.get(kind, ".txt")
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
        f.write(content)
        f.flush()
        try:
            _read(kind, f.name)
        except ValueError as error:
            assert re.match(re.escape(f.name) + r"(:\d+)?: ", str(error)), str(error)


FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@FUZZ
@given(content=st.one_of(*[_content(k).map(lambda c, k=k: (k, c)) for k in PIECES]))
def test_readers_parse_or_name_file_and_line(content):
    _check(*content)


@FUZZ
@given(kind=st.sampled_from(sorted(PIECES)), content=st.binary(max_size=200))
def test_readers_on_arbitrary_bytes(kind, content):
    _check(kind, content)
