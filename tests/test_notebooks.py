"""Every notebook in colab/ runs top to bottom on the CPU at its CI size (nbclient, a real
Jupyter kernel; `LMX_NOTEBOOK_SIZE=ci`), fails on any cell error, and its last cell's RESULT
line carries a value a broken notebook or library would miss. The README lists each one with
its Colab badge, and every badge and install cell names the repository the README names."""
import json
import os
import pathlib
import re

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colab").glob("0*.ipynb"))
README = (ROOT / "README.md").read_text()


def _repository() -> str:
    match = re.search(r"Repository: <(https://github\.com/[\w.-]+/[\w.-]+)>", README)
    assert match, "the README names the repository as 'Repository: <https://github.com/...>'"
    return match.group(1)


def test_six_notebooks_each_listed_in_the_readme_with_its_badge():
    repo = _repository()
    assert len(NOTEBOOKS) >= 6, NOTEBOOKS
    org_repo = repo.removeprefix("https://github.com/")
    for path in NOTEBOOKS:
        badge = f"https://colab.research.google.com/github/{org_repo}/blob/main/colab/{path.name}"
        assert badge in README, f"README lacks the badge of {path.name}"
        nb = nbformat.read(path, as_version=4)
        source = "\n".join(c.source for c in nb.cells)
        assert badge in nb.cells[0].source, f"{path.name}: first cell has no Colab badge"
        assert f'LMX_REPO = "{repo}"' in source, f"{path.name}: install cell names another repo"
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), path.name


def _result(nb) -> dict:
    for cell in reversed(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("name") == "stdout" and "RESULT " in out.get("text", ""):
                line = next(x for x in out["text"].splitlines() if x.startswith("RESULT "))
                return json.loads(line.removeprefix("RESULT "))
    raise AssertionError("no RESULT line printed")


def check_01(r):  # chance on 77 intents is 0.013; 60 steps reach ~0.24 (2-core AMD EPYC)
    assert r["accuracy"] > 0.12, r
    assert r["lmx_reload_diff"] <= 1e-5 and r["mistakes"] > 0, r
    assert r["peft_diff"] is not None and r["peft_diff"] <= 1e-5, r  # torch is in the test env


def check_02(r):  # the stand-in's entities are planted: 30 LoRA steps reach F1 ~0.88
    assert r["f1"]["lora"] > 0.5 and min(r["f1"].values()) > 0.2, r
    assert abs(r["ig_gap"]) < 0.02 * abs(r["ig_delta"]), r
    assert r["explained_tag"] != "O", r


def check_03(r):  # the stand-in's label is its adjective: soft prompts learn it
    assert r["eval_examples"] == 64, r  # runlocal: the first 64 validation sentences
    assert r["soft_prompt"] > 0.6, r
    assert 0.0 <= r["zero_shot_calibrated"] <= 1.0 and r["few_shot_raw"], r


def check_04(r):  # FSDP: the frozen weights are split, not replicated, over 8 devices
    assert r["devices"] == 8, r
    assert r["frozen_bytes_per_device"] == r["plan_frozen_bytes_per_device"], r
    assert r["frozen_bytes_per_device"] < r["frozen_bytes"] / 4, r
    assert r["validation"]["loss"] > 0, r


def check_05(r):  # mixed batches equal each adapter alone; cat is the exact sum of deltas
    assert r["mixed_vs_alone"] <= 1e-5 and r["cat_error"] <= 1e-5, r
    # 40 mixed steps (2-core AMD EPYC): every tenant's loss falls (by 0.08 / 0.31 / 0.11);
    # about_card 0.89 vs majority 0.71; intent 0.09 vs chance 0.013
    for task in r["loss_first5"]:
        assert r["loss_last5"][task] < r["loss_first5"][task] - 0.03, r
    assert r["accuracy"]["about_card"] > r["majority"]["about_card"] + 0.08, r
    assert r["accuracy"]["intent"] > 0.04, r


def check_06(r):  # pre-training beats the uniform distribution over the vocabulary by far
    import math
    assert r["pretrain_loss"] < math.log(r["vocab_size"]) - 2.0, r
    assert len(r["answers"]) == len(r["references"]) == 8, r


CHECKS = {"01": check_01, "02": check_02, "03": check_03, "04": check_04, "05": check_05,
          "06": check_06}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_cpu_and_prints_its_result(path, tmp_path, monkeypatch):
    monkeypatch.setenv("LMX_NOTEBOOK_SIZE", "ci")
    monkeypatch.setenv("LMX_NOTEBOOK_RUNS", str(tmp_path))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device unless a notebook asks
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "colab")}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    CHECKS[path.stem[:2]](_result(nb))
