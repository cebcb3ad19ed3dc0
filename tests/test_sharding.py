"""Sharding presets: PartitionSpecs of base and PEFT leaves, large tensors really sharded,
every preset on a (2, 4) mesh equals one device, and a 256-device pod lowered on this CPU."""
import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from experiments import tiny_synthetic
from lmx import paths
from lmx.scale import aot, sharding
from lmx.train import build, loop

MESHES = {  # (2, 4) meshes for each preset
    "data_parallel": (("data", 2), ("fsdp", 4), ("tensor", 1)),
    "fsdp": (("data", 2), ("fsdp", 4), ("tensor", 1)),
    "fsdp_tensor": (("data", 1), ("fsdp", 2), ("tensor", 4)),
}


def _boxed(config):
    """The model's variables as shapes boxed with logical axis names (nothing materialised)."""
    mesh = sharding.abstract_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), 1)
    return build.create(config, 2, mesh, sharding.rules_for(config.sharding),
                        jax.random.key(0), abstract=True).abstract


def _mesh_specs(method: str, preset: str) -> dict:
    config = tiny_synthetic.get_config()
    config.peft.method = method
    boxed = _boxed(config)
    logical = paths.flatten(nn.get_partition_spec(boxed))
    rules = sharding.RULE_PRESETS[preset]
    return {p: nn.logical_to_mesh_axes(s, rules) for p, s in logical.items()}


def test_partition_specs_of_base_and_peft_leaves():
    specs = {m: _mesh_specs(m, "fsdp_tensor") for m in ("lora", "ia3", "prompt")}
    lora, layer = specs["lora"], "layer_0/attention"
    assert lora[f"params/{layer}/query/kernel"] == P("fsdp", "tensor")
    assert lora[f"params/{layer}/out/kernel"] == P("tensor", "fsdp")
    assert lora["params/layer_0/mlp/down/kernel"] == P("tensor", "fsdp")
    assert lora["params/embed/token/embedding"] == P("tensor", "fsdp")
    for target in ("query", "value"):  # A and B share the kernel's axes; the rank is replicated
        assert lora[f"peft/{layer}/{target}/lora_a"] == P("fsdp", None)
        assert lora[f"peft/{layer}/{target}/lora_b"] == P(None, "tensor")
    ia3 = {p: s for p, s in specs["ia3"].items() if p.startswith("peft/")}
    assert set(ia3) >= {f"peft/{layer}/key/ia3", "peft/layer_0/mlp/down/ia3"}
    assert all(s == P(None) for s in ia3.values()), ia3
    assert specs["prompt"]["peft/embed/prompt"] == P(None, None)
    fsdp = _mesh_specs("lora", "fsdp")
    assert fsdp[f"params/{layer}/query/kernel"] == P("fsdp", None)
    assert fsdp[f"peft/{layer}/query/lora_a"] == P("fsdp", None)
    assert fsdp[f"peft/{layer}/query/lora_b"] == P(None, None)
    data_parallel = _mesh_specs("lora", "data_parallel")
    assert all(all(a is None for a in s) for s in data_parallel.values())


@pytest.fixture(scope="module")
def single_device_losses(tmp_path_factory):
    config = tiny_synthetic.get_config()
    config.mesh = (("data", 1), ("fsdp", 1), ("tensor", 1))
    trainer = loop.Trainer(config, str(tmp_path_factory.mktemp("one")), devices=jax.devices()[:1])
    return trainer.steps(3)


# fsdp is covered the same way by test_training.py::test_sharded_2x4_mesh_matches_single_device.
@pytest.mark.parametrize("preset", ["data_parallel", "fsdp_tensor"])
def test_preset_on_2x4_mesh_equals_one_device(tmp_path, preset, single_device_losses):
    config = tiny_synthetic.get_config()
    config.sharding, config.mesh = preset, MESHES[preset]
    trainer = loop.Trainer(config, str(tmp_path))
    np.testing.assert_allclose(trainer.steps(3), single_device_losses, rtol=1e-5, atol=1e-6)
    leaves = jax.tree_util.tree_leaves_with_path(
        (trainer.frozen, trainer.state.trainable, trainer.state.opt_state))
    big = [(jax.tree_util.keystr(p), x) for p, x in leaves if x.size >= 1024]  # bert-tiny
    assert len(big) >= 10, [p for p, _ in big]  # token / position tables, every kernel
    for path, x in big:  # every large tensor is split (data parallel: replicated)
        ways = x.size // int(np.prod(x.sharding.shard_shape(x.shape)))
        assert (ways == 1) == (preset == "data_parallel"), (path, x.shape, x.sharding)


def test_pod_config_lowers_for_256_tpu_devices_on_this_cpu():
    config = tiny_synthetic.get_config()
    config.sharding, config.train.batch_size = "fsdp_tensor", 256
    config.train.eval_batch_size = 256
    config.mesh = (("data", 16), ("fsdp", 8), ("tensor", 2))
    lowered, report = aot.lower(config, num_devices=256, platform="tpu")
    text = lowered.as_text()
    assert '<@mesh, [{"data", "fsdp"}' in text  # the batch is split over data x fsdp
    assert report["mesh"] == {"data": 16, "fsdp": 8, "tensor": 2}
    # Kernels are split 16 ways (embed over fsdp=8 x heads/mlp/vocab over tensor=2); norms,
    # biases and the position table fewer: between 1/16 and 1/4 of the weights per device.
    boxed = _boxed(config)
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nn.unbox(boxed)["params"]))
    assert total / 16 <= report["per_device_frozen_bytes"] < total / 4
    config.mesh = (("data", 2), ("fsdp", 64), ("tensor", 2))  # embed_dim 32 cannot split 64 ways
    with pytest.raises(ValueError, match=r"\['params'\]\[.*\) cannot be split as .*'fsdp'"):
        aot.lower(config, num_devices=256)
