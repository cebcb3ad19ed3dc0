"""Input pipeline: a real CSV parser, errors that name file and line, exact resume."""
import numpy as np
import pytest

from lmx.data import examples as data


def _write(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def test_csv_handles_quoted_newlines_and_crlf(tmp_path):
    path = _write(tmp_path, 'text,category\r\n"two\r\nlines, and a comma",a\r\nplain,b\r\n')
    texts, labels = data.read_csv_classification(path, "text", "category")
    assert texts == ["two\r\nlines, and a comma", "plain"]
    assert labels == ["a", "b"]


def test_malformed_row_names_file_and_line(tmp_path):
    path = _write(tmp_path, "text,category\nok,a\ntoo,many,fields\n")
    with pytest.raises(ValueError, match=r"d\.csv:3"):
        data.read_csv_classification(path, "text", "category")


def test_missing_column_and_unknown_label(tmp_path):
    path = _write(tmp_path, "sentence,category\nok,a\n")
    with pytest.raises(ValueError, match="no column 'text'"):
        data.read_csv_classification(path, "text", "category")
    with pytest.raises(ValueError, match=r"labels not in the label set: \['zzz'\]"):
        data.label_ids(["a", "zzz"], ["a", "b"], "x.csv")


def test_stratified_split_is_fixed_disjoint_and_covers_every_class():
    labels = np.repeat(np.arange(5), [3, 10, 20, 7, 40])
    train, valid = data.stratified_split(labels, 0.1, seed=0)
    again_train, again_valid = data.stratified_split(labels, 0.1, seed=0)
    np.testing.assert_array_equal(valid, again_valid)
    assert not set(train) & set(valid)
    assert len(train) + len(valid) == len(labels)
    assert set(labels[valid]) == set(range(5))


def _examples(n=100):
    return data.synthetic(n, vocab_size=50, max_length=20, num_labels=2, seed=1)


def test_train_stream_resumes_exactly_at_any_step():
    examples = _examples()
    kwargs = dict(seed=3, pad_multiple=8, bucket_batches=2, pad_id=0)
    stream = data.train_batches(examples, 8, start_step=0, **kwargs)
    reference = [next(stream) for _ in range(30)]  # crosses epoch boundaries (12 steps each)
    for start in (5, 12, 17):
        resumed = data.train_batches(examples, 8, start_step=start, **kwargs)
        for expected in reference[start:start + 8]:
            got = next(resumed)
            for key in expected:
                np.testing.assert_array_equal(got[key], expected[key])


def test_batches_are_bucketed_and_padded_to_a_multiple():
    examples = _examples()
    batch = next(data.train_batches(examples, 8, seed=0, start_step=0, pad_multiple=8,
                                    bucket_batches=4, pad_id=0))
    assert batch["ids"].shape[1] % 8 == 0
    lengths = batch["mask"].sum(1)
    assert batch["ids"].shape[1] - lengths.max() < 8
    assert (batch["ids"][~batch["mask"]] == 0).all()


def test_eval_batches_cover_every_example_once():
    examples = _examples(37)
    batches = list(data.eval_batches(examples, 8, pad_multiple=8, pad_id=0))
    assert sum(int(b["weights"].sum()) for b in batches) == 37
    seen = sorted(tuple(b["ids"][i][b["mask"][i]]) for b in batches for i in range(8)
                  if b["weights"][i] > 0)
    assert seen == sorted(tuple(x) for x in examples.ids)
