"""Every results.json says what produced it (commit, dirty flag, stack versions, lock hash,
devices, command line) and `lmx.report` shows it."""
import hashlib
import json
import re

import jax

from experiments import tiny_synthetic
from lmx import provenance, report
from lmx.train import loop


def test_results_json_records_provenance_and_the_report_shows_it(tmp_path):
    config = tiny_synthetic.get_config("runlocal")
    config.train.num_steps, config.train.eval_every = 2, 2
    loop.run(config, str(tmp_path / "run"))
    record = json.loads((tmp_path / "run" / "results.json").read_text())["provenance"]
    if (provenance.ROOT / ".git").exists():  # a checkout (CI's clean clone is one)
        assert re.fullmatch(r"[0-9a-f]{40}", record["commit"]), record["commit"]
        assert isinstance(record["dirty"], bool)
    assert record["versions"]["jax"] == jax.__version__
    assert record["versions"]["flax"] and record["versions"]["orbax-checkpoint"]
    lock = provenance.ROOT / provenance.LOCK_FILE
    assert record["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert record["devices"]["count"] == jax.device_count()
    assert record["devices"]["platform"] == "cpu"
    assert record["command"] and isinstance(record["command"], list)
    row = report.table_row(str(tmp_path / "run"))
    assert row["produced by"].startswith((record["commit"] or "no commit")[:7])
    assert f"jax {jax.__version__}" in row["produced by"]


def test_outside_a_checkout_there_is_no_commit_to_name(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    assert provenance.git_state() == {"commit": None, "dirty": None}
    assert provenance.lock_sha256() is None
    assert provenance.summary(None) == "?"
    assert provenance.summary({"commit": "a" * 40, "dirty": True,
                               "versions": {"jax": "1.0"}}) == "aaaaaaa (dirty), jax 1.0"
