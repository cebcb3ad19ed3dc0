"""`python -m lmx.hf`: an lmx training run exported as a PEFT adapter / merged HF model, and
a HF folder + PEFT adapter converted."""
import importlib.util
import os

import numpy as np
import peft
import pytest
import torch
import transformers
from absl import app, flags
from test_hf_models import hf_outputs

from lmx.explain.run import load_run
from lmx.hf.__main__ import main
from lmx.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_bert(folder):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=64, num_labels=2)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)


def _run(tmp_path, method):
    path = os.path.join(ROOT, "experiments", "tiny_synthetic.py")
    spec = importlib.util.spec_from_file_location("tiny_synthetic", path)
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)
    config = experiment.get_config(f"runlocal,{method}")
    config.model.pretrained = str(tmp_path / "base")
    config.model.dropout_rate = 0.0
    config.model.attention_dropout_rate = 0.0
    config.train.num_steps = 5
    loop.run(config, str(tmp_path / "run"))
    return load_run(str(tmp_path / "run"))


def _batch():
    rng = np.random.default_rng(0)
    ids_BT = rng.integers(1, 128, (4, 12)).astype(np.int32)
    mask_BT = np.ones_like(ids_BT)
    mask_BT[1, 8:] = 0
    return ids_BT, mask_BT, np.zeros_like(ids_BT)


def test_export_adapter_from_a_run_loads_in_peft(tmp_path):
    _tiny_bert(tmp_path / "base")
    run = _run(tmp_path, "lora")
    b = run.variables["peft"]["layer_0"]["attention"]["query"]["lora_b"]
    assert np.abs(b).max() > 0  # trained
    main(["export-adapter", "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "adapter")])
    batch = _batch()
    expected = np.asarray(run.module.apply(run.variables, *batch))
    base = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    hf_model = peft.PeftModel.from_pretrained(base.eval(), tmp_path / "adapter").eval()
    assert np.abs(hf_outputs(hf_model, "sequence_classification", *batch) - expected).max() <= 1e-5

    main(["export-adapter", "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "merged"),
          "--merge"])
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "merged").eval()
    assert np.abs(hf_outputs(merged, "sequence_classification", *batch) - expected).max() <= 1e-5

    # convert: HF base + that adapter -> one merged HF folder with the same outputs
    main(["convert", "--src", str(tmp_path / "base"), "--out", str(tmp_path / "converted"),
          "--adapter", str(tmp_path / "adapter"), "--merge"])
    converted = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "converted").eval()
    assert np.abs(hf_outputs(converted, "sequence_classification", *batch)
                  - expected).max() <= 1e-5


def test_each_command_needs_its_flags_and_refuses_the_others():
    with pytest.raises(app.UsageError, match="export-adapter: needs --workdir; does not take "
                                             "--src, --task"):
        main(["export-adapter", "--src", "x", "--out", "y", "--task", "mlm"])
    with pytest.raises(app.UsageError, match="convert: needs --src, --out$"):
        main(["convert", "--merge"])
    with pytest.raises(app.UsageError, match="convert or export-adapter"):
        main(["export", "--workdir", "x", "--out", "y"])
    assert "lmx.hf.__main__" not in flags.FLAGS.flags_by_module_dict()  # import defines none
