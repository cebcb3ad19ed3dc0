"""HF vision interop: ViT and ResNet checkpoints in and out of lmx, against transformers.

Tiny randomly initialised transformers models (every weight and BatchNorm statistic
perturbed, so a swapped or dropped tensor shows) are saved to safetensors, loaded with
lmx.hf.from_pretrained and compared on the same images (HF NCHW, lmx NHWC), float32.
"""
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from lmx import hf
from lmx.hf import resnet as hf_resnet, vit as hf_vit

TOLERANCE = 1e-5
VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           image_size=32, patch_size=8, num_labels=5)
RESNET = {"basic": dict(embedding_size=8, hidden_sizes=[8, 16, 32], depths=[2, 2, 1],
                        layer_type="basic", num_labels=3),
          "bottleneck": dict(embedding_size=8, hidden_sizes=[32, 64, 128], depths=[2, 2, 1],
                             layer_type="bottleneck", num_labels=3)}
RESNET_SIDE = 33  # odd: stem, max-pool and strided convs all round down


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values in every parameter and BatchNorm statistic (init leaves biases at 0,
    norm scales at 1 and running stats at 0/1, which would hide mapping mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    noise = lambda t, scale: torch.randn(t.shape, generator=generator) * scale
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            else:
                tensor.add_(noise(tensor, 0.1))
    return model.eval()


def _save(model: torch.nn.Module, folder) -> str:
    model.save_pretrained(folder, safe_serialization=True)
    return str(folder)


def _hf_vit(cls, folder, seed=0):
    torch.manual_seed(seed)
    return _save(_perturb(cls(transformers.ViTConfig(**VIT)), seed), folder)


def _calibrate(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """BatchNorm running statistics measured on random images (one cumulative pass), so they
    differ per channel and activations stay O(1) (random 0/1-ish stats blow them up)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.train()(torch.randn((8, 3, RESNET_SIDE, RESNET_SIDE), generator=generator) + 0.5)
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


def _hf_resnet(layer_type, folder, seed=0):
    torch.manual_seed(seed)
    config = transformers.ResNetConfig(**RESNET[layer_type])
    model = transformers.ResNetForImageClassification(config)
    return _save(_calibrate(_perturb(model, seed), seed), folder)


def _images(side, seed=1):
    """The same images for both: (B, H, W, C) for lmx, (B, C, H, W) for transformers."""
    images_BHWC = np.random.default_rng(seed).normal(size=(2, side, side, 3)).astype(np.float32)
    return images_BHWC, torch.from_numpy(images_BHWC.transpose(0, 3, 1, 2).copy())


def _hf_outputs(folder, cls, images_BCHW, **kwargs):
    model = cls.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(pixel_values=images_BCHW, **kwargs)


def _assert_close(name, lmx_out, hf_out, relative=False):
    """max |lmx - hf| <= 1e-5, or 1e-5 * max |hf| for large (relu-grown) feature maps."""
    hf_out = hf_out.numpy() if isinstance(hf_out, torch.Tensor) else hf_out
    lmx_out = np.asarray(lmx_out)
    assert lmx_out.shape == hf_out.shape, name
    err, size = float(np.max(np.abs(lmx_out - hf_out))), float(np.max(np.abs(hf_out)))
    print(f"{name}: max abs diff {err:.2e} (max |hf| {size:.2f})")
    assert err <= TOLERANCE * (max(1.0, size) if relative else 1.0), f"{name}: {err}"


def test_vit_image_classification_logits_match(tmp_path):
    folder = _hf_vit(transformers.ViTForImageClassification, tmp_path)
    images_BHWC, images_BCHW = _images(VIT["image_size"])
    module, variables = hf.from_pretrained(folder)
    assert module.task == "image_classification" and module.num_labels == VIT["num_labels"]
    expected = _hf_outputs(folder, transformers.ViTForImageClassification, images_BCHW)
    _assert_close("vit image_classification logits",
                  jax.jit(module.apply)(variables, images_BHWC), expected.logits)


def test_vit_model_hidden_states_and_pooler_match(tmp_path):
    folder = _hf_vit(transformers.ViTModel, tmp_path)
    images_BHWC, images_BCHW = _images(VIT["image_size"])
    module, variables = hf.from_pretrained(folder)
    assert module.task == "hidden"
    hidden_BTD, pooled_BD = jax.jit(module.apply)(variables, images_BHWC)
    expected = _hf_outputs(folder, transformers.ViTModel, images_BCHW)
    _assert_close("vit hidden last_hidden_state", hidden_BTD, expected.last_hidden_state)
    _assert_close("vit hidden pooler_output", pooled_BD, expected.pooler_output)


def _resnet_stages(module, variables, images_BHWC):
    """Logits and each stage's output (NHWC) of an lmx ResNet."""
    def run(v, x):
        is_stage = lambda m, _: (m.name or "").startswith("stage_")
        return module.apply(v, x, capture_intermediates=is_stage, mutable=["intermediates"])
    logits, state = jax.jit(run)(variables, images_BHWC)
    stages = [state["intermediates"][f"stage_{i}"]["__call__"][0]
              for i in range(len(module.cfg.stage_sizes))]
    return logits, stages


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_resnet_logits_and_stages_match(tmp_path, layer_type):
    folder = _hf_resnet(layer_type, tmp_path)
    images_BHWC, images_BCHW = _images(RESNET_SIDE)
    module, variables = hf.from_pretrained(folder)
    assert module.cfg.block == layer_type and set(variables) == {"params", "batch_stats"}
    logits, stages = _resnet_stages(module, variables, images_BHWC)
    expected = _hf_outputs(folder, transformers.ResNetForImageClassification, images_BCHW,
                           output_hidden_states=True)
    for i, stage_BHWC in enumerate(stages):  # hidden_states[0] is the stem's output
        _assert_close(f"resnet {layer_type} stage {i}", stage_BHWC,
                      expected.hidden_states[i + 1].numpy().transpose(0, 2, 3, 1), relative=True)
    _assert_close(f"resnet {layer_type} logits", logits, expected.logits)


@pytest.mark.parametrize("make,cls,side", [
    (_hf_vit, transformers.ViTForImageClassification, VIT["image_size"]),
    (_hf_vit, transformers.ViTModel, VIT["image_size"]),
    (_hf_resnet, transformers.ResNetForImageClassification, RESNET_SIDE),
], ids=["vit_classifier", "vit_model", "resnet_bottleneck"])
def test_save_pretrained_round_trips_through_transformers(tmp_path, make, cls, side):
    what = "bottleneck" if make is _hf_resnet else cls
    source = make(what, tmp_path / "hf")
    module, variables = hf.from_pretrained(source)
    out = hf.save_pretrained(module, variables, tmp_path / "lmx")
    _, images_BCHW = _images(side)
    original = _hf_outputs(source, cls, images_BCHW)
    reloaded = _hf_outputs(str(out), cls, images_BCHW)
    for key in ("logits", "last_hidden_state", "pooler_output"):
        if key in original:
            np.testing.assert_array_equal(reloaded[key].numpy(), original[key].numpy(), key)
    saved, written = load_file(f"{source}/model.safetensors"), load_file(out / "model.safetensors")
    weights = lambda tensors: {k for k in tensors if not k.endswith("num_batches_tracked")}
    assert weights(written) == weights(saved)


def _rewrite(folder, edit) -> None:
    path = f"{folder}/model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    folder = _hf_vit(transformers.ViTForImageClassification, tmp_path)
    name = "vit.encoder.layer.1.attention.attention.key.weight"
    _rewrite(folder, lambda tensors: tensors.pop(name))
    with pytest.raises(ValueError, match=name.removeprefix("vit.").replace(".", r"\.")):
        hf.from_pretrained(folder)


def test_missing_running_stat_and_shape_mismatch_are_named(tmp_path):
    folder = _hf_resnet("bottleneck", tmp_path)
    stat = "resnet.encoder.stages.1.layers.0.shortcut.normalization.running_var"
    conv = "resnet.encoder.stages.2.layers.0.layer.1.convolution.weight"

    def edit(tensors):
        tensors.pop(stat)
        tensors[conv] = tensors[conv][:, :, :2]  # a 2x3 kernel instead of 3x3

    _rewrite(folder, edit)
    with pytest.raises(ValueError) as error:
        hf.from_pretrained(folder)
    for name in (stat, conv):  # named without the base prefix, as lmx reads them
        assert name.removeprefix("resnet.") in str(error.value)
    assert "stage_2/block_0/conv_1/kernel" in str(error.value)


@pytest.mark.parametrize("family,config,key", [
    (hf_vit, dict(VIT, model_type="vit", qkv_bias=False), "qkv_bias"),
    (hf_vit, dict(VIT, model_type="vit", hidden_act="gelu_new"), "hidden_act"),
    (hf_vit, dict(VIT, model_type="vit", image_size=[32, 48]), "image_size"),
    (hf_vit, dict(VIT, model_type="vit", pooler_act="relu"), "pooler_act"),
    (hf_resnet, dict(RESNET["bottleneck"], downsample_in_bottleneck=True),
     "downsample_in_bottleneck"),
    (hf_resnet, dict(RESNET["basic"], downsample_in_first_stage=True),
     "downsample_in_first_stage"),
    (hf_resnet, dict(RESNET["basic"], hidden_sizes=[8, 24, 32]), "hidden_sizes"),
    (hf_resnet, dict(RESNET["basic"], hidden_act="gelu"), "hidden_act"),
    (hf_resnet, dict(RESNET["basic"], layer_type="preact"), "layer_type"),
])
def test_unsupported_config_value_is_named(family, config, key):
    with pytest.raises(ValueError, match=key):
        family.build(config, "image_classification", None, None)


def test_unsupported_config_is_refused_by_from_pretrained(tmp_path):
    folder = _hf_resnet("basic", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "downsample_in_first_stage": True}))
    with pytest.raises(ValueError, match="downsample_in_first_stage"):
        hf.from_pretrained(folder)


def _add_tensors(folder, shapes) -> dict:
    """Adds random tensors to a checkpoint (a head it lacks, so no slow random init runs)."""
    rng = np.random.default_rng(2)
    added = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    _rewrite(folder, lambda tensors: tensors.update(added))
    return added


def test_resnet_model_checkpoint_gives_last_hidden_state_as_features(tmp_path):
    """ResNetModel (bare names): task 'hidden' is refused with the way out, which works."""
    torch.manual_seed(0)
    model = transformers.ResNetModel(transformers.ResNetConfig(**RESNET["bottleneck"]))
    folder = _save(_calibrate(_perturb(model, 0), 0), tmp_path)
    with pytest.raises(ValueError, match="intermediates/features"):
        hf.from_pretrained(folder)
    labels = RESNET["bottleneck"]["num_labels"]
    _add_tensors(folder, {"classifier.1.weight": (labels, 128), "classifier.1.bias": (labels,)})
    module, variables = hf.from_pretrained(folder, task="image_classification")
    images_BHWC, images_BCHW = _images(RESNET_SIDE)
    _, state = jax.jit(lambda v, x: module.apply(v, x, mutable=["intermediates"]))(
        variables, images_BHWC)
    expected = _hf_outputs(folder, transformers.ResNetModel, images_BCHW)
    _assert_close("resnet ResNetModel last_hidden_state", state["intermediates"]["features"][0],
                  expected.last_hidden_state.numpy().transpose(0, 2, 3, 1), relative=True)


@pytest.mark.parametrize("cls,task,head", [
    (transformers.ViTModel, "image_classification",
     {"classifier.weight": (VIT["num_labels"], 32), "classifier.bias": (VIT["num_labels"],)}),
    (transformers.ViTForImageClassification, "hidden",
     {"vit.pooler.dense.weight": (32, 32), "vit.pooler.dense.bias": (32,)}),
], ids=["vit_model_as_classifier", "vit_classifier_as_hidden"])
def test_vit_checkpoints_serve_either_task(tmp_path, cls, task, head):
    """Either class's names (with or without `vit.`) load for either task, backbone intact."""
    folder = _hf_vit(cls, tmp_path)
    _, native = hf.from_pretrained(folder)
    added = _add_tensors(folder, head)
    module, crossed = hf.from_pretrained(folder, task=task)
    assert module.task == task
    native, crossed = (traverse_util.flatten_dict(v, sep="/") for v in (native, crossed))
    new = {p for p in crossed if p.startswith(("params/head/", "params/pooler/"))}
    backbone = {p for p in native if p.split("/")[1] not in ("head", "pooler")}
    assert len(new) == 2 and set(crossed) - new == backbone
    for path in set(crossed) - new:
        np.testing.assert_array_equal(crossed[path], native[path], path)
    kernel = next(p for p in new if p.endswith("kernel"))
    weight = next(n for n in added if n.endswith("weight"))
    np.testing.assert_array_equal(crossed[kernel], added[weight].T)


def test_peft_lora_on_vit_loads_and_round_trips(tmp_path):
    """A PEFT LoRA (query / value, classifier in modules_to_save) on a ViT classifier."""
    import peft
    folder = _hf_vit(transformers.ViTForImageClassification, tmp_path / "base")
    torch.manual_seed(3)
    base = transformers.ViTForImageClassification.from_pretrained(folder).eval()
    model = peft.get_peft_model(base, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.3)
    model.eval().save_pretrained(tmp_path / "adapter")
    images_BHWC, images_BCHW = _images(VIT["image_size"])
    with torch.no_grad():
        expected = model(pixel_values=images_BCHW).logits
    module, variables = hf.from_pretrained(folder, adapter=tmp_path / "adapter")
    _assert_close("vit + PEFT LoRA logits", module.apply(variables, images_BHWC), expected)
    hf.save_adapter(module, {"peft": variables["peft"],
                             "params": {"head": variables["params"]["head"]}}, tmp_path / "again")
    _, again = hf.from_pretrained(folder, adapter=tmp_path / "again")
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    reloaded = peft.PeftModel.from_pretrained(
        transformers.ViTForImageClassification.from_pretrained(folder).eval(),
        tmp_path / "again").eval()
    with torch.no_grad():
        _assert_close("lmx-saved ViT LoRA in PEFT", reloaded(pixel_values=images_BCHW).logits,
                      expected)
