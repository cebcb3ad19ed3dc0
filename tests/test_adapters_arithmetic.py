"""add_weighted_adapter: every PEFT 0.21 combination type, lmx's merged adapter against PEFT's
on the same inputs (<= 1e-5; DARE with PEFT's random pruning fed lmx's masks); jittable;
scanned models combine layer by layer."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
from peft.utils import merge_utils
from test_hf_models import batch, hf_outputs, reference

import lmx.hf
import lmx.peft
from lmx.adapters import arithmetic, mixed
from lmx.models.transformer import stack_layers

TOL = 1e-5
CONFIGS = {  # a, b share a rank (linear / ties / dare / magnitude_prune need it); c is rsLoRA
    "a": dict(r=4, lora_alpha=8, target_modules=["query", "value"]),
    "b": dict(r=4, lora_alpha=4, target_modules=["value", "key"]),
    "c": dict(r=2, lora_alpha=4, target_modules=["query", "intermediate.dense"], use_rslora=True),
}


@functools.cache
def setup(folder):
    base = reference("bert", "hidden", folder / "base")
    torch.manual_seed(3)
    model = peft.get_peft_model(base, peft.LoraConfig(**CONFIGS["a"]), adapter_name="a")
    for name in ("b", "c"):
        model.add_adapter(name, peft.LoraConfig(**CONFIGS[name]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.2)
    model.save_pretrained(folder / "adapters")  # PEFT's layout: one sub-folder per name
    adapters = {}
    for name in CONFIGS:
        module, variables = lmx.hf.from_pretrained(folder / "base",
                                                   adapter=folder / "adapters" / name)
        adapters[name] = mixed.from_variables(module.peft, {"peft": variables["peft"]})
        base_module = module.clone(peft=lmx.peft.NO_PEFT)
        params = variables["params"]
    return model, base_module, params, adapters


def _dare_masks(adapters, names, how, key, density):
    """lmx's DARE masks in PEFT's layout, next to the tensor each one prunes."""
    table = []
    for module in sorted(frozenset().union(*(adapters[n].spec.lora_targets for n in names))):
        for i, name in enumerate(names):
            spec = adapters[name].spec
            if module not in spec.lora_targets:
                continue
            node = arithmetic._node(adapters[name].peft, module)
            a, b = node["lora_a"], node["lora_b"]
            tensors = ({"delta": spec.lora_scale * a @ b} if how.endswith("svd")
                       else {"a": a, "b": b})
            for part, t in tensors.items():
                mask = arithmetic.dare_mask(key, module, i, part, t.shape, density)
                table.append((torch.tensor(np.asarray(t).T), torch.tensor(np.asarray(mask).T)))
    return table


def _fake_random_pruning(table):
    def random_pruning(tensor, density, rescale):
        found = [m for t, m in table if t.shape == tensor.shape
                 and torch.allclose(t, tensor, atol=1e-6)]
        assert len(found) == 1, "a tensor PEFT prunes is not one lmx masked"
        return tensor * found[0] / density if rescale else tensor * found[0]
    return random_pruning


@pytest.mark.parametrize("how", arithmetic.COMBINATIONS)
def test_combination_equals_peft(how, tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.getbasetemp() / "arithmetic"
    model, base_module, params, adapters = setup(folder)
    names = ["a", "b"] if how in arithmetic._SAME_RANK else ["a", "b", "c"]
    weights = [0.7, -0.4, 1.3][:len(names)]
    density, key = 0.5, jax.random.key(5)
    if how.startswith("dare"):
        monkeypatch.setattr(merge_utils, "random_pruning", _fake_random_pruning(
            _dare_masks(adapters, names, how, key, density)))
    kwargs = dict(density=density) if how not in ("linear", "cat", "svd") else {}
    model.add_weighted_adapter(names, weights, f"m_{how}", combination_type=how, **kwargs)
    model.set_adapter(f"m_{how}")
    ids_BT, mask_BT, types_BT = batch("bert")
    expected = hf_outputs(model, "hidden", ids_BT, mask_BT, types_BT)

    combine = jax.jit(functools.partial(arithmetic.add_weighted_adapter,
                                        combination_type=how, key=key, **kwargs))
    merged = combine([adapters[n] for n in names], jnp.asarray(weights))  # weights traced
    assert merged.spec.lora_rank == model.peft_config[f"m_{how}"].r
    module = base_module.clone(peft=merged.spec)
    actual = module.apply({"params": params, "peft": merged.peft}, ids_BT, mask_BT, types_BT)
    error = float(np.abs(expected - np.asarray(actual))[mask_BT.astype(bool)].max())
    print(f"{how:20s} max abs error {error:.2e}")
    assert error <= TOL


def test_scanned_combination_equals_unrolled(tmp_path_factory):
    _, base_module, _, adapters = setup(tmp_path_factory.getbasetemp() / "arithmetic")
    num_layers = base_module.cfg.num_layers
    scanned = {}
    for name in ("a", "b"):
        spec = lmx.peft.scanned_spec(adapters[name].spec, num_layers)
        scanned[name] = mixed.Adapter(
            spec, stack_layers({"peft": adapters[name].peft}, num_layers)["peft"])
    for how in ("ties", "svd"):
        unrolled = arithmetic.add_weighted_adapter([adapters["a"], adapters["b"]], [0.7, 0.5],
                                                   how, density=0.5)
        stacked = arithmetic.add_weighted_adapter([scanned["a"], scanned["b"]], [0.7, 0.5],
                                                  how, density=0.5)
        expect = stack_layers({"peft": unrolled.peft}, num_layers)["peft"]
        deltas = lambda t: jax.tree.map(  # compare A @ B: SVD factors are unique up to sign
            lambda x: x, {k: np.einsum("lir,lro->lio", v["lora_a"], v["lora_b"])
                          for k, v in t["layers"]["block"]["attention"].items()})
        for k, v in deltas(expect).items():
            np.testing.assert_allclose(deltas(stacked.peft)[k], v, atol=1e-6, err_msg=k)


def test_bad_combinations_are_named(tmp_path_factory):
    _, _, _, adapters = setup(tmp_path_factory.getbasetemp() / "arithmetic")
    with pytest.raises(ValueError, match="one rank"):
        arithmetic.add_weighted_adapter([adapters["a"], adapters["c"]], [1, 1], "linear")
    with pytest.raises(ValueError, match="density"):
        arithmetic.add_weighted_adapter([adapters["a"], adapters["b"]], [1, 1], "ties")
    with pytest.raises(ValueError, match="combination_type"):
        arithmetic.add_weighted_adapter([adapters["a"], adapters["b"]], [1, 1], "mean")
