"""The family registry from the launcher: ViT trains like the others; scan_layers / remat are
config keys that work with LoRA targets written for unrolled layers, pretrained folders and
HF export, or are refused naming the reason; keys a family or task does not read are errors."""
import flax.linen as nn
import jax
import numpy as np
import pytest

import lmx.hf
from experiments import tiny_synthetic, vit_digits
from lmx import config as config_lib
from lmx.models import transformer
from lmx.peft import ALL_LINEAR
from lmx.train import build, loop


def test_vit_trains_from_the_launcher(tmp_path):
    config = vit_digits.get_config("runlocal")
    config.train.num_steps, config.train.eval_every = 400, 400  # 0.706 measured
    results = loop.run(config, str(tmp_path / "vit"))
    assert results["validation"]["accuracy"] > 0.5, results["validation"]  # chance: 0.1
    assert (tmp_path / "vit" / "hf" / "config.json").is_file()  # full runs export a HF ViT


def test_vit_lora_from_its_export_trains_adapters_only(tmp_path):
    pre = vit_digits.get_config("runlocal")
    pre.train.num_steps = 2
    loop.run(pre, str(tmp_path / "pre"))
    config = vit_digits.get_config("runlocal,lora")
    config.model.pretrained = str(tmp_path / "pre" / "hf")
    config.peft.lora.targets = ALL_LINEAR
    trainer = loop.Trainer(config, str(tmp_path / "lora"))
    assert set(trainer.state.trainable) == {"params", "peft"}
    assert set(trainer.state.trainable["params"]) == {"head"}
    assert "lora_a" in trainer.state.trainable["peft"]["layer_1"]["mlp"]["down"]


def _synthetic(scan: bool, remat: str = "none"):
    config = tiny_synthetic.get_config()
    config.model.dropout_rate = config.model.attention_dropout_rate = 0.0
    config.model.scan_layers, config.model.remat = scan, remat
    config.peft.lora.targets = ALL_LINEAR
    config.mesh = (("data", 1), ("fsdp", 1), ("tensor", 1))
    return config


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_scan_layers_from_config_equals_unrolled(tmp_path, remat):
    unrolled = loop.Trainer(_synthetic(False), str(tmp_path / "u"), devices=jax.devices()[:1])
    scanned = loop.Trainer(_synthetic(True, remat), str(tmp_path / "s"), devices=jax.devices()[:1])
    assert "layers" in scanned.frozen["params"]  # really scanned: one stacked block
    assert "lora_a" in scanned.state.trainable["peft"]["layers"]["block"]["attention"]["query"]
    # Start both from the same weights: the scanned ones are the unrolled ones stacked.
    stacked = transformer.stack_layers(jax.device_get(unrolled.state.trainable), 2)
    assert jax.tree.structure(stacked) == jax.tree.structure(scanned.state.trainable)
    scanned.state = scanned.state.replace(trainable=jax.device_put(stacked))
    scanned.frozen = transformer.stack_layers(jax.device_get(unrolled.frozen), 2)
    np.testing.assert_allclose(scanned.steps(3), unrolled.steps(3), rtol=1e-5, atol=1e-6)


def test_scan_layers_refuses_targets_that_differ_between_layers(tmp_path):
    config = _synthetic(True)
    config.peft.lora.targets = (r"params/layer_0/attention/query/kernel",)
    with pytest.raises(ValueError, match=r"selects 'attention/query' in layers \[0\] only"):
        loop.Trainer(config, str(tmp_path), devices=jax.devices()[:1])
    config = _synthetic(True)
    config.peft.trainable = (r"peft/layer_\d+/.*",)
    with pytest.raises(ValueError, match=r"config.peft.trainable names unrolled layers"):
        config_lib.validate(config, 1)


def _tiny_bert_folder(path) -> str:
    module = transformer.Transformer(transformer.size("bert-tiny", use_pooler=True),
                                     task="sequence_classification", num_labels=2)
    variables = nn.unbox(module.init(jax.random.key(3), np.zeros((1, 8), np.int32)))
    lmx.hf.save_pretrained(module, variables, path)
    return str(path)


def test_scan_layers_loads_a_pretrained_folder_and_exports_it_unrolled(tmp_path):
    folder = _tiny_bert_folder(tmp_path / "bert")
    outs = {}
    for scan in (False, True):
        config = _synthetic(scan)
        config.model.pretrained = folder
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
        built = build.build(config, 2, mesh=mesh, rules=())
        ids = np.arange(16, dtype=np.int32).reshape(2, 8) % 100
        variables = jax.device_get({**built.frozen, "peft": built.state.trainable["peft"]})
        variables["params"].update(jax.device_get(built.state.trainable["params"]))
        outs[scan] = np.asarray(built.module.apply(variables, ids))
        if scan:  # written in the unrolled layout HF reads, and read back to the same outputs
            module, merged = built.module, variables
            base, spec = lmx.peft.merge_lora(merged, module.peft)
            lmx.hf.save_pretrained(module.clone(peft=spec), base, tmp_path / "export")
            back, loaded = lmx.hf.from_pretrained(tmp_path / "export")
            assert not back.cfg.scan_layers and "layer_1" in loaded["params"]
            np.testing.assert_allclose(np.asarray(back.apply(loaded, ids)), outs[True],
                                       atol=1e-5)
    np.testing.assert_allclose(outs[True], outs[False], atol=1e-5)


@pytest.mark.parametrize("section,key,value,message", [
    ("peft.lora", "rank", 0, r"config.peft.lora.rank=0 must be > 0 for peft.method='lora'"),
    ("peft.lora", "alpha", -1.0, r"config.peft.lora.alpha=-1.0 must be > 0"),
    ("model", "scan_layers", True, r"config.model.scan_layers=True is not read by "
                                   r"model.family='resnet'"),
    ("model", "pooling", "mean", r"config.model.pooling='mean' is not read by model.family="),
    ("data", "tag_scheme", "bio", r"config.data.tag_scheme='bio' applies to data.kind"),
])
def test_nonsense_and_unread_keys_are_errors_naming_the_key(section, key, value, message):
    from experiments import resnet_images
    config = (resnet_images.get_config("runlocal") if "model" == section
              else tiny_synthetic.get_config())
    node = config
    for part in section.split("."):
        node = node[part]
    node[key] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config, 8)


def test_a_test_file_for_a_language_model_is_refused_not_ignored(tmp_path):
    from experiments import tiny_shakespeare_gpt
    config = tiny_shakespeare_gpt.get_config("runlocal")
    stub = tmp_path / "t.txt"
    stub.write_text("x")
    config.data.test_file = str(stub)
    with pytest.raises(ValueError, match=r"model.task='causal_lm' scores its validation split"):
        config_lib.validate(config, 8)
