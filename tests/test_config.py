"""Bad input never reaches the compiler: every bad config key, workdir and data file is an
error naming the culprit; the CSV reader is fuzzed; nothing in lmx unpickles."""
import csv
import io
import os
import re
import types

import ml_collections
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from experiments import tiny_synthetic
from lmx import config as config_lib
from lmx.data import examples as data, readers
from lmx.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    return tiny_synthetic.get_config("runlocal")


def _replace(config, section, **values):
    """Bypasses ConfigDict's type safety the way an experiment file replacing a section can."""
    config[section] = ml_collections.ConfigDict({**config[section].to_dict(), **values})
    return config


def test_a_locked_config_refuses_unknown_keys_by_name():
    config = _config()
    config.lock()
    with pytest.raises(AttributeError, match="nmu_steps"):
        config.train.nmu_steps = 3


@pytest.mark.parametrize("section,values,message", [
    ("train", {"unknown_key": 1}, r"config\.train\.unknown_key is not a key"),
    ("train", {"batch_size": "32"}, r"config\.train\.batch_size='32' has type str, expected int"),
    ("train", {"resume": 1}, r"config\.train\.resume=1 has type int, expected bool"),
    ("peft", {"method": "loraa"}, r"config\.peft\.method='loraa' is not one of"),
    ("data", {"kind": "tsv"}, r"config\.data\.kind='tsv' is not one of"),
    ("model", {"task": "translation"}, r"config\.model\.task='translation' is not one of"),
    ("model", {"size": "bert-huge"}, r"config\.model\.size='bert-huge' is not one of"),
    ("train", {"decay": "step"}, r"config\.train\.decay='step' is not one of"),
    ("train", {"batch_size": 0}, r"config\.train\.batch_size=0 must be > 0"),
    ("train", {"learning_rate": -1.0}, r"config\.train\.learning_rate=-1\.0 must be >= 0"),
    ("data", {"validation_fraction": 1.5}, r"config\.data\.validation_fraction=1\.5 must be"),
    ("data", {"mlm_split": (0.8, 0.3)}, r"config\.data\.mlm_split=\(0\.8, 0\.3\) must be"),
    ("data", {"max_train_examples": -1}, r"config\.data\.max_train_examples=-1 must be >= 0"),
    ("train", {"batch_size": 12}, r"config\.train\.batch_size=12 is not divisible by the 8-way"),
])
def test_bad_key_is_named(section, values, message):
    with pytest.raises(ValueError, match=message):
        config_lib.validate(_replace(_config(), section, **values), num_devices=8)


@pytest.mark.parametrize("mesh,message", [
    ((("data", -1), ("fsdp", 1)), r"config\.mesh must name exactly"),
    ((("data", -1), ("fsdp", -1), ("tensor", 1)), r"config\.mesh=.*one may be -1"),
    ((("data", 3), ("fsdp", -1), ("tensor", 1)), r"config\.mesh=.* does not divide 8 devices"),
    ((("data", 2), ("fsdp", 2), ("tensor", 1)), r"config\.mesh=.* uses 4 devices, but 8"),
    ((("data", 0), ("fsdp", -1), ("tensor", 1)), r"config\.mesh=.*sizes must be >= 1"),
    ((("data", "x"), ("fsdp", 1), ("tensor", 1)), r"config\.mesh=.* is not \(name, size\) pairs"),
])
def test_impossible_mesh_is_named(mesh, message):
    config = _config()
    config.mesh = mesh
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config, num_devices=8)


def test_sharding_preset_and_data_files_are_checked(tmp_path):
    config = _config()
    config.sharding = "zero3"
    with pytest.raises(ValueError, match=r"config\.sharding='zero3' is not one of"):
        config_lib.validate(config, 8)
    config = _config()
    config.data.kind, config.data.train_file = "csv_classification", str(tmp_path / "nope.csv")
    with pytest.raises(ValueError) as error:
        config_lib.validate(config, 8)
    assert "config.data.train_file=" in str(error.value) and "nope.csv': no such file" in str(
        error.value)
    assert "config.model.pretrained, config.data.tokenizer and" in str(error.value)  # all at once


def test_run_validates_before_building_anything(tmp_path, monkeypatch):
    def no_trainer(*args, **kwargs):
        raise AssertionError("the Trainer was built from a bad config")

    monkeypatch.setattr(loop, "Trainer", no_trainer)
    config = _config()
    config.mesh = (("data", 3), ("fsdp", -1), ("tensor", 1))
    with pytest.raises(ValueError, match=r"config\.mesh"):
        loop.run(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_unwritable_workdir_fails_fast_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "Trainer", lambda *a, **k: pytest.fail("built a Trainer"))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    workdir = str(blocker / "run")  # a directory cannot live under a file
    with pytest.raises(OSError, match=re.escape(f"workdir {workdir!r} is not writable")):
        loop.run(_config(), workdir)


def test_full_disk_fails_before_training_with_the_estimate(tmp_path, monkeypatch):
    array = np.zeros((1024, 1024), np.float32)  # 4 MiB
    trainer = types.SimpleNamespace(
        checkpoint_bytes=lambda: 3 * array.nbytes, config=_config(),
        state=types.SimpleNamespace(trainable={"w": array}))
    monkeypatch.setattr(loop.shutil, "disk_usage", lambda path: types.SimpleNamespace(
        free=50 << 20))
    with pytest.raises(OSError, match=r"50\.0 MiB free, the run needs about 104\.0 MiB"):
        loop.check_free_space(trainer, str(tmp_path))
    monkeypatch.setattr(loop.shutil, "disk_usage", lambda path: types.SimpleNamespace(
        free=200 << 20))
    assert loop.check_free_space(trainer, str(tmp_path)) == 104 << 20


def test_nothing_in_lmx_unpickles():
    offenders = []
    for folder, _, files in os.walk(os.path.join(ROOT, "lmx")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            source = open(path, encoding="utf-8").read()
            for pattern in (r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|shelve|marshal)\b",
                            r"allow_pickle\s*=\s*True", r"torch\.load\((?![^)]*weights_only=True)"):
                offenders += [f"{path}: {m.group(0)}" for m in re.finditer(pattern, source, re.M)]
    assert not offenders


# --- data files: errors name file and line; fuzzed ---------------------------------------

def _write(tmp_path, blob, name="d.csv"):
    path = tmp_path / name
    path.write_bytes(blob)
    return str(path)


@pytest.mark.parametrize("blob,line", [
    (b"text,category\nok,a\n\xff\xfe,b\n", 3),  # not UTF-8
    (b"text,category\n", 1),  # header only
    (b"", 1),  # empty
    (b'text,category\nok,a\n"never closed,b\n', 3),
])
def test_csv_errors_name_file_and_line(tmp_path, blob, line):
    path = _write(tmp_path, blob)
    with pytest.raises(ValueError, match=re.escape(f"{path}:") + r"\d+"):
        readers.read_delimited(path, "text", "category")
    try:
        readers.read_delimited(path, "text", "category")
    except ValueError as e:
        assert str(e).startswith(f"{path}:{line}:"), str(e)


def test_unknown_label_names_its_line(tmp_path):
    path = _write(tmp_path, b'text,category\n"a\nb",x\nok,zzz\n')
    rows = readers.read_delimited(path, "text", "category")
    labels, lines = [r["label"] for r in rows], [r["line"] for r in rows]
    assert lines == [3, 4]
    with pytest.raises(ValueError, match=re.escape(f"{path}:4: labels not in the label set")):
        data.label_ids(labels, ["x"], path, lines)


@pytest.mark.parametrize("blob,message", [
    (b'["a", "b"', r":1: not JSON"), (b'{"a": 1}', r":1: expected a non-empty JSON list"),
    (b'["a",\n "a"]', r":1: duplicate label names \['a'\]"), (b"\xff", r":1: not valid utf-8")])
def test_bad_label_file_names_file_and_line(tmp_path, blob, message):
    path = _write(tmp_path, blob, "labels.json")
    with pytest.raises(ValueError, match=re.escape(path) + message):
        readers.read_label_names(path)


CSV_PIECES = st.sampled_from(["text", "category", ",", '"', "\n", "\r\n", "\r", "a", "b c",
                              "\x00", "é", "\ufeff", "\t", "''", '""'])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(CSV_PIECES, max_size=40), raw=st.binary(max_size=40),
       use_raw=st.booleans())
def test_fuzzed_csv_parses_or_names_file_and_line(tmp_path, pieces, raw, use_raw):
    blob = (b"text,category\n" + raw) if use_raw else "".join(pieces).encode("utf-8")
    path = _write(tmp_path, blob)
    try:
        rows = readers.read_delimited(path, "text", "category")
        texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    except ValueError as e:
        match = re.match(re.escape(path) + r":(\d+): ", str(e))
        assert match, str(e)
        assert 1 <= int(match.group(1)) <= blob.count(b"\n") + blob.count(b"\r") + 1, str(e)
    else:
        assert len(texts) == len(labels) > 0
        assert all(isinstance(t, str) for t in texts + labels)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.text(max_size=20), st.text(min_size=1, max_size=5)),
                     min_size=1, max_size=10))
def test_csv_round_trips_whatever_csv_writer_writes(tmp_path, rows):
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["text", "category"])
    writer.writerows(rows)
    path = _write(tmp_path, buffer.getvalue().encode("utf-8"))
    read = readers.read_delimited(path, "text", "category")
    assert [(r["text"], r["label"]) for r in read] == [tuple(r) for r in rows]
