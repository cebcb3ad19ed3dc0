"""LoRA variants against HF PEFT 0.21: DoRA, rank / alpha patterns (import, export, merge)."""
import flax.linen as nn
import jax
import numpy as np
import peft
import pytest
import torch
from flax import traverse_util
from test_hf_adapters import TASK_TYPES, compare, round_trip
from test_hf_models import batch, reference
from test_training import _assert_unchanged, _steps

import lmx.hf
from experiments import tiny_synthetic
from lmx import config as config_lib, peft as peft_lib, peft_init
from lmx.models.layers import Dense
from lmx.train import loop, optim

TOL = 1e-5
TARGETS = {"bert": ["query", "value", "output.dense"], "llama": ["q_proj", "v_proj", "down_proj"]}
PATTERNS = {  # PEFT's keys: a suffix of the module name, or a regex over it
    "bert": (dict(value=2, **{"layer.1.attention.self.query": 3}), {r"layer\.\d\.output\.dense": 5}),
    "llama": (dict(v_proj=2, **{"layers.1.self_attn.q_proj": 3}), {"down_proj": 5})}


def lora_config(variant, family, task):
    ranks, alphas = PATTERNS[family] if variant == "patterns" else ({}, {})
    return peft.LoraConfig(task_type=TASK_TYPES[task], r=4, lora_alpha=8,
                           target_modules=TARGETS[family], use_dora=variant == "dora",
                           rank_pattern=ranks, alpha_pattern=alphas)


def peft_model(config, family, task, folder):
    """A PEFT model with every adapter tensor perturbed (B = 0 and m = ||W|| at init)."""
    base = reference(family, task, folder / "base")
    torch.manual_seed(7)
    model = peft.get_peft_model(base, config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.3)
    model.save_pretrained(folder / "adapter")
    return model


def trained_part(variables):
    head = variables["params"].get("head", {})
    has_classifier = "classifier" in str(traverse_util.flatten_dict(head))
    return {"peft": variables["peft"], **({"params": {"head": head}} if has_classifier else {})}


CASES = [("dora", "bert", "sequence_classification"), ("dora", "llama", "causal_lm"),
         ("patterns", "bert", "sequence_classification"), ("patterns", "llama", "causal_lm")]


@pytest.mark.parametrize("variant,family,task", CASES)
def test_variant_loads_from_peft_and_exports_back(variant, family, task, tmp_path):
    hf_model = peft_model(lora_config(variant, family, task), family, task, tmp_path)
    model, variables = lmx.hf.from_pretrained(tmp_path / "base", adapter=tmp_path / "adapter")
    assert model.peft.lora_dora == (variant == "dora")
    if variant == "patterns":  # the planted per-module ranks reached the lmx modules
        flat = traverse_util.flatten_dict(variables["peft"], sep="/")
        ranks = sorted({v.shape[-1] for k, v in flat.items() if k.endswith("lora_a")})
        assert ranks == [2, 3, 4]
        assert dict(model.peft.lora_alpha_pattern) and set(
            dict(model.peft.lora_alpha_pattern).values()) == {5.0}
    error = compare("lora", family, task, hf_model, model, variables)
    print(f"{variant} {family}: PEFT -> lmx max abs error {error:.2e}")
    assert error <= TOL

    error = round_trip("lora", family, task, model, variables, trained_part(variables),
                       tmp_path)
    print(f"{variant} {family}: lmx -> PEFT max abs error {error:.2e}")
    assert error <= TOL


def test_dora_merge_equals_unmerged_and_peft_merge(tmp_path):
    """merge: PEFT's merged kernel `m / ||W + dW|| (W + dW)`; unmerge with the cached norms."""
    family, task = "llama", "causal_lm"
    hf_model = peft_model(lora_config("dora", family, task), family, task, tmp_path)
    model, variables = lmx.hf.from_pretrained(tmp_path / "base", adapter=tmp_path / "adapter")
    ids_BT, mask_BT, types_BT = batch(family)
    unmerged = np.asarray(model.apply(variables, ids_BT, mask_BT, types_BT))
    norms = peft_lib.dora_norms(variables, model.peft)
    merged_vars, merged_spec = peft_lib.merge_lora(variables, model.peft)
    assert "peft" not in merged_vars and not merged_spec.lora_dora
    merged = np.asarray(model.clone(peft=merged_spec).apply(merged_vars, ids_BT, mask_BT,
                                                            types_BT))
    assert np.abs(merged - unmerged).max() <= TOL
    peft_merged = hf_model.merge_and_unload()
    kernel = merged_vars["params"]["layer_1"]["attention"]["query"]["kernel"]
    np.testing.assert_allclose(
        kernel.T, peft_merged.model.layers[1].self_attn.q_proj.weight.detach().numpy(),
        atol=TOL)
    with pytest.raises(ValueError, match="dora_norms"):
        peft_lib.unmerge_lora(merged_vars, variables, model.peft)
    restored = peft_lib.unmerge_lora(merged_vars, variables, model.peft, norms)
    for key, value in traverse_util.flatten_dict(variables["params"]).items():
        np.testing.assert_allclose(traverse_util.flatten_dict(restored["params"])[key], value,
                                   atol=1e-5, err_msg=str(key))


def test_dora_gradient_skips_the_norm():
    """The norm is detached (PEFT): d/dm of the output is x W / ||W + dW||, and A's gradient
    differs from one through an undetached norm."""
    module, variables = _tiny_dora()
    x = jax.random.normal(jax.random.key(5), (2, 6))

    def loss(peft_vars):
        return module.apply({**variables, "peft": peft_vars}, x).sum()

    grads = jax.grad(loss)(variables["peft"])
    kernel = variables["params"]["dense"]["kernel"]
    a, b, m = (variables["peft"]["dense"][k] for k in ("lora_a", "lora_b", "lora_magnitude"))
    weight = kernel + 2.0 * a @ b
    norm = np.linalg.norm(weight, axis=0)
    grads = grads["dense"]
    np.testing.assert_allclose(grads["lora_magnitude"], (x @ weight).sum(0) / norm, rtol=1e-5)
    # d/dB with the norm held constant: s * A^T x^T (m / norm) summed over rows
    expected_b = 2.0 * (x @ a).sum(0)[:, None] * (m / norm)[None, :]
    np.testing.assert_allclose(grads["lora_b"], expected_b, rtol=1e-5)


class _OneDense(nn.Module):
    peft: peft_lib.PeftSpec

    @nn.compact
    def __call__(self, x):
        return Dense(5, axes=(None, None), use_bias=False, peft=self.peft, name="dense")(x)


def _tiny_dora():
    spec = peft_lib.PeftSpec(lora_rank=2, lora_alpha=4.0, lora_targets=frozenset({"dense"}),
                             lora_dora=True)
    module = _OneDense(spec)
    variables = nn.unbox(module.init(jax.random.key(0), np.zeros((1, 6), np.float32)))
    rng = np.random.default_rng(0)
    peft_vars = {"dense": {k: rng.normal(size=np.shape(v)).astype(np.float32)
                           for k, v in variables["peft"]["dense"].items()}}
    return module, {**variables, "peft": peft_vars}


def test_dora_magnitude_is_recomputed_from_the_pretrained_base():
    """Models are initialised before pretrained weights are laid in: init_from_base sets
    m = ||W_pretrained|| so the output at init is the pretrained base's."""
    module, variables = _tiny_dora()
    dense = variables["peft"]["dense"]
    peft_vars = {"dense": {**dense, "lora_b": np.zeros_like(dense["lora_b"])}}
    kernel = np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32)
    x = np.random.default_rng(2).normal(size=(2, 6)).astype(np.float32)
    stale = {"params": {"dense": {"kernel": kernel}}, "peft": peft_vars}
    assert np.abs(module.apply(stale, x) - x @ kernel).max() > 1e-2
    fresh = peft_init.init_from_base(stale, module.peft)
    np.testing.assert_allclose(module.apply(fresh, x), x @ kernel, atol=1e-5)


def test_lora_plus_moves_b_ratio_times_a_and_leaves_frozen_alone():
    """A planted gradient, one AdamW step (no warmup, no decay): Adam's first update is
    lr * g / (|g| + eps), so |update B| / |update A| is the configured ratio; frozen leaves
    get exactly zero."""
    train = config_lib.base_config().train
    train.warmup_fraction, train.weight_decay, train.learning_rate = 0.0, 0.0, 1e-3
    tree = {"params": {"layer_0": {"query": {"kernel": np.ones((4, 3), np.float32)}}},
            "peft": {"layer_0": {"query": {"lora_a": np.ones((4, 2), np.float32),
                                           "lora_b": np.ones((2, 3), np.float32)}}}}
    labels = optim.trainable_labels(tree, (r"peft/.*",))
    tx = optim.make_optimizer(train, labels, total_steps=10, lora_plus_lr_ratio=16.0)
    grads = jax.tree.map(lambda x: np.full_like(x, 0.01), tree)
    updates, _ = tx.update(grads, tx.init(tree), tree)
    lora = updates["peft"]["layer_0"]["query"]
    np.testing.assert_allclose(np.asarray(lora["lora_b"]) / np.asarray(lora["lora_a"])[:2, :1],
                               16.0, rtol=1e-5)
    np.testing.assert_allclose(lora["lora_a"], -1e-3, rtol=1e-5)
    np.testing.assert_array_equal(updates["params"]["layer_0"]["query"]["kernel"], 0.0)


def test_dora_with_lora_plus_trains_through_the_trainer(tmp_path):
    """config.peft.lora.dora + plus_lr_ratio through lmx.train.loop: the magnitudes learn,
    the loss falls, frozen leaves stay bit-identical. Measured on tiny_synthetic's random base
    (2-core AMD EPYC, mean of the first / last 10 of 60 steps): DoRA + LoRA+ 0.695 -> 0.661,
    DoRA alone 0.695 -> 0.662, LoRA+ alone 0.695 -> 0.324, plain LoRA 0.696 -> 0.221: DoRA
    keeps each column's norm at m, so on a random base it learns slowly; margin ~half."""
    config = tiny_synthetic.get_config("lora")
    config.train.learning_rate = 3e-2
    config.peft.lora.dora, config.peft.lora.plus_lr_ratio = True, 4.0
    trainer = loop.Trainer(config, str(tmp_path))
    frozen_before = jax.tree.map(np.asarray, trainer.frozen)
    flat = traverse_util.flatten_dict(trainer.state.trainable["peft"], sep="/")
    magnitude_before = {k: np.asarray(v) for k, v in flat.items() if k.endswith("magnitude")}
    assert magnitude_before
    losses = _steps(trainer, 60)
    print(f"DoRA + LoRA+ losses: first 10 {np.mean(losses[:10]):.3f}, last 10 "
          f"{np.mean(losses[-10:]):.3f}")
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.015, losses
    _assert_unchanged(frozen_before, trainer.frozen)
    flat = traverse_util.flatten_dict(trainer.state.trainable["peft"], sep="/")
    assert all(np.abs(np.asarray(flat[k]) - v).max() > 1e-3 for k, v in magnitude_before.items())
