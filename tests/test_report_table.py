"""`python -m lmx.report`: one markdown row per run folder; a folder without results is an error."""
import json
import os
import subprocess
import sys

import pytest
from absl import app, flags

from lmx import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_dir(parent, name, results, method="lora"):
    run = parent / name
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.json").write_text(json.dumps({"peft": {"method": method}, "seed": 0}))
    return str(run)


@pytest.fixture
def runs(tmp_path):
    classification = _run_dir(tmp_path, "banking77_lora", {
        "validation": {"accuracy": 0.92423, "loss": 0.31, "macro_f1": 0.93},
        "trainable_percent": 1.5764, "adapter_bytes": 1412260, "train_seconds": 573.7,
        "step": 843, "examples_per_second": 47.0})
    headline = _run_dir(tmp_path, "run_b", {
        "experiment": "squad_ia3", "headline": {"name": "f1", "value": 0.81234},
        "validation": {"accuracy": 0.5, "loss": 1.0}, "trainable_percent": 0.0312,
        "adapter_bytes": 900, "train_seconds": 3725.0, "hardware": "1x NVIDIA H200",
        "provenance": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": True,
                       "versions": {"jax": "0.10.2", "flax": "0.12.8"}}},
        method="ia3")
    return classification, headline


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_table_rows_and_columns(runs):
    lines = report.markdown_table(list(runs)).splitlines()
    assert _cells(lines[0]) == list(report.TABLE_COLUMNS)
    assert set(_cells(lines[1])) == {"---"}
    assert len(lines) == 4  # header, rule, one row per run in the order given
    assert _cells(lines[2]) == ["banking77_lora", "lora", "1.58%", "accuracy 0.9242", "1.3 MiB",
                                "9m 34s", "?", "?"]  # no hardware / provenance recorded
    # "experiment" names the task over the folder; "headline" wins over validation accuracy
    assert _cells(lines[3]) == ["squad_ia3", "ia3", "0.03%", "f1 0.8123", "900 B", "1h 02m",
                                "1x NVIDIA H200", "0123456 (dirty), jax 0.10.2, flax 0.12.8"]


def test_metric_falls_back_to_f1_then_loss(tmp_path):
    f1 = _run_dir(tmp_path, "a", {"validation": {"f1": 0.7, "loss": 2.0}})
    loss = _run_dir(tmp_path, "b", {"validation": {"loss": 2.0}})
    assert report.table_row(f1)["metric"] == "f1 0.7000"
    assert report.table_row(loss)["metric"] == "loss 2.0000"


def test_human_units():
    assert report.human_bytes(512) == "512 B"
    assert report.human_bytes(2048) == "2.0 KiB"
    assert report.human_bytes(3 * 2**30) == "3.0 GiB"
    assert report.human_seconds(12.34) == "12.3s"
    assert report.human_seconds(61) == "1m 01s"


def test_cli_writes_the_table(runs, tmp_path):
    out = tmp_path / "results.md"
    assert report.main([*(f"--workdir={r}" for r in runs), "--out", str(out)]) == 0
    assert out.read_text() == report.markdown_table(list(runs))


def test_missing_results_is_an_error_naming_the_folder(runs, tmp_path, capsys):
    empty = tmp_path / "not_finished"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not_finished.*results.json"):
        report.markdown_table([runs[0], str(empty)])
    assert report.main(["--workdir", runs[0], "--workdir", str(empty)]) != 0
    err = capsys.readouterr().err
    assert "not_finished" in err and "results.json" in err


def test_module_entry_point_fails_on_missing_run(tmp_path):
    missing = str(tmp_path / "nowhere")
    proc = subprocess.run([sys.executable, "-m", "lmx.report", "--workdir", missing], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "nowhere" in proc.stderr and not proc.stdout


def test_bad_headline_names_the_file(tmp_path):
    bad = _run_dir(tmp_path, "bad", {"headline": {"value": 1.0}})
    with pytest.raises(ValueError, match=r"bad.results\.json.*headline"):
        report.table_row(bad)


def test_hardware_is_a_short_description():
    text = report.hardware()
    assert text.endswith("CPU") and "-core " in text  # the tests run on CPU
    assert text.split("-core")[0] == str(os.cpu_count())


def test_run_folders_are_named_with_workdir_and_define_no_global_flag(runs):
    with pytest.raises(app.UsageError, match="--workdir"):
        report.main(["--workdir", runs[0], runs[1]])  # a second folder without its flag
    assert "lmx.report" not in flags.FLAGS.flags_by_module_dict()  # import defines no flag
