"""python -m lmx.data.tokenizer train: a model lmx.hf.tokenizer loads and round-trips; flag errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import app, flags

from lmx.data import tokenizer as tokenizer_cli
from lmx.hf.tokenizer import load_tokenizer

WORDS = ["the", "king", "queen", "castle", "speaks", "to", "of", "and", "a", "horse", "sword",
         "night", "day", "crown", "whither", "thou", "goest", "Citizen", "ROMEO:", "JULIET:"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = WORDS * 20 + ["".join(rng.choice(letters, size=rng.integers(3, 9))) for _ in range(400)]
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 15))) + rng.choice([".", "!", "?"])
             for _ in range(1500)]
    path = tmp_path_factory.mktemp("corpus") / "a.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lmx.data.tokenizer", *args], capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_cli_trains_a_model_that_loads_and_round_trips(corpus, tmp_path):
    second = tmp_path / "b.txt"
    second.write_text("Whither goest thou, fair Citizen?\n")
    out = tmp_path / "tok"
    result = _cli("train", "--input", corpus, "--input", str(second), "--vocab_size", "400",
                  "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "training a unigram sentencepiece model, vocab 400, on 2 file(s)" in result.stdout
    assert "wrote" in result.stdout and "(400 pieces)" in result.stdout
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer"
    tok = load_tokenizer(out)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.token_to_id("<mask>")) == (1, 2, 3, 4)
    for text in ("the king speaks to the queen.", "ROMEO:\nWhither  goest thou?",
                 "unseen: é 世界 \t tab"):
        ids = tok.encode(text)
        assert ids[0] == tok.bos_id and tok.decode(ids) == text
    assert len(tok.encode("the king and the queen", add_special_tokens=False)) < 10  # learned
    masked = tok.encode("the <mask> speaks", add_special_tokens=False)
    assert 4 in masked and tok.decode(masked, skip_special_tokens=False) == "the <mask> speaks"


@pytest.mark.parametrize("model_type", ["bpe", "char"])
def test_other_model_types_round_trip(corpus, tmp_path, model_type):
    out = tokenizer_cli.train([corpus], 400, str(tmp_path / model_type), model_type,
                              log=lambda m: None)
    tok = load_tokenizer(out)
    text = "Whither goest thou, ROMEO?\né"
    assert tok.decode(tok.encode(text)) == text
    if model_type == "char":
        assert len(tok.encode("castle", add_special_tokens=False)) == 7  # "▁" + 6 letters


def test_errors_name_the_flag(corpus, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n")
    result = _cli("train", "--input", str(empty), "--vocab_size", "400", "--out", str(tmp_path))
    assert result.returncode == 2 and "--input" in result.stderr and "empty" in result.stderr
    with pytest.raises(ValueError, match=r"--vocab_size 100000 is too large .* at most \d+"):
        tokenizer_cli.train([corpus], 100000, str(tmp_path / "big"), log=lambda m: None)
    with pytest.raises(ValueError, match=r"--vocab_size 280 is too small: .* needing 3\d\d"):
        tokenizer_cli.train([corpus], 280, str(tmp_path / "chars"), "bpe", log=lambda m: None)
    with pytest.raises(ValueError, match=r"--vocab_size 50 is too small"):
        tokenizer_cli.train([corpus], 50, str(tmp_path / "small"), log=lambda m: None)
    with pytest.raises(ValueError, match=r"--input .*missing.txt: no such file"):
        tokenizer_cli.train([str(tmp_path / "missing.txt")], 300, str(tmp_path / "m"),
                            log=lambda m: None)


def test_flags_reach_train_in_process_and_define_no_global_flag(corpus, tmp_path, capsys):
    args = ["--input", corpus, "--vocab_size", "5", "--out", str(tmp_path / "t")]
    assert tokenizer_cli.main(["train", *args]) == 2
    assert "256 byte pieces need >= 262" in capsys.readouterr().err
    assert tokenizer_cli.main(["train", *args, "--nobyte_fallback"]) == 2
    assert "special tokens need >= 6" in capsys.readouterr().err  # byte_fallback=False
    with pytest.raises(app.UsageError, match="train"):
        tokenizer_cli.main(["fit", *args])
    assert "lmx.data.tokenizer" not in flags.FLAGS.flags_by_module_dict()
