"""ResNet: shapes, torchvision parameter counts, a training step, PEFT identity at init, axes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from lmx import paths
from lmx.models import resnet
from lmx.models.layers import Conv
from lmx.peft import PeftSpec

NUM_LABELS = 5


def _images(batch=4, side=32, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, side, side, 3), jnp.float32)


def _init(model, images, seed=0):
    return nn.unbox(jax.jit(model.init)(jax.random.key(seed), images))


@pytest.mark.parametrize("name", ["resnet-tiny", "resnet-tiny-bottleneck"])
def test_shapes(name):
    cfg = resnet.size(name)
    model = resnet.ResNet(cfg, NUM_LABELS)
    images = _images()
    variables = _init(model, images)
    assert jax.jit(model.apply)(variables, images).shape == (4, NUM_LABELS)
    last = cfg.width * 2 ** (len(cfg.stage_sizes) - 1) * cfg.expansion
    assert variables["params"]["head"]["classifier"]["kernel"].shape == (last, NUM_LABELS)


@pytest.mark.parametrize("name,expected", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)])
def test_param_count_matches_torchvision(name, expected):
    model = resnet.ResNet(resnet.size(name), 1000)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), _images(1, 224)))
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == expected


def test_resnet50_strides_on_the_3x3_conv():
    """v1.5: the first bottleneck of a downsampling stage strides in conv_1, not conv_0."""
    model = resnet.ResNet(resnet.size("resnet50"), 1000)
    apply = lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"])
    variables = jax.eval_shape(model.init, jax.random.key(0), _images(1, 224))
    _, state = jax.eval_shape(apply, nn.unbox(variables), _images(1, 224))
    block = state["intermediates"]["stage_1"]["block_0"]
    assert block["conv_0"]["__call__"][0].shape == (1, 56, 56, 128)
    assert block["conv_1"]["__call__"][0].shape == (1, 28, 28, 128)
    assert block["proj_conv"]["__call__"][0].shape == (1, 28, 28, 512)


def test_train_step_updates_params_and_batch_stats():
    model = resnet.ResNet(resnet.size("resnet-tiny"), NUM_LABELS)
    images = _images()
    labels = jnp.array([0, 1, 2, 3])
    variables = _init(model, images)
    params, batch_stats = variables["params"], variables["batch_stats"]
    optimizer = optax.sgd(0.1)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, batch_stats, opt_state):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                          images, train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates["batch_stats"]
        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    new_params, new_stats, _, loss = train_step(params, batch_stats, opt_state)
    assert np.isfinite(loss)
    for path, old in paths.flatten(params).items():
        assert not np.array_equal(old, paths.flatten(new_params)[path]), path
    for path, old in paths.flatten(batch_stats).items():
        assert not np.array_equal(old, paths.flatten(new_stats)[path]), path


def _conv_targets(params) -> frozenset[str]:
    modules = (p.rsplit("/", 1)[0] for p in paths.flatten(params))
    return frozenset(m for m in modules if "conv" in m.rsplit("/", 1)[-1])


def _perturb(tree, suffix: str):
    """`tree` with every leaf whose path ends in `suffix` replaced by standard normal noise."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    noisy = [jax.random.normal(jax.random.key(i), x.shape)
             if paths.path_str(kp).endswith(suffix) else x for i, (kp, x) in enumerate(leaves)]
    return treedef.unflatten(noisy)


def test_lora_and_adapters_identity_at_init_and_live_after():
    cfg = resnet.size("resnet-tiny")
    images = _images()
    base = resnet.ResNet(cfg, NUM_LABELS)
    targets = _conv_targets(_init(base, images)["params"])
    assert len(targets) == 6  # stem, 2 x (conv_0, conv_1), one projection
    spec = PeftSpec(lora_rank=2, lora_targets=targets, adapter="houlsby", adapter_size=4)
    model = resnet.ResNet(cfg, NUM_LABELS, peft=spec)
    variables = _init(model, images, seed=1)
    peft = variables["peft"]
    lora_modules = {p.rsplit("/", 1)[0] for p in paths.flatten(peft) if p.endswith("lora_b")}
    assert lora_modules == set(targets)
    assert {"adapter_0", "adapter_1"} <= set(peft)
    frozen = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    expected = base.apply(frozen, images)
    np.testing.assert_array_equal(model.apply({**frozen, "peft": peft}, images), expected)
    apply = jax.jit(model.apply)

    noisy = _perturb(peft, "lora_b")
    for target in sorted(targets):  # every LoRA hook is live on its own
        only_target = jax.tree_util.tree_map_with_path(
            lambda kp, new, old: new if paths.path_str(kp).startswith(target + "/") else old,
            noisy, peft)
        out = apply({**frozen, "peft": only_target}, images)
        assert not np.allclose(out, expected, atol=1e-6), target
    for i in range(len(cfg.stage_sizes)):  # every adapter is live on its own
        noisy = _perturb({f"adapter_{i}": peft[f"adapter_{i}"]}, "up_kernel")
        out = apply({**frozen, "peft": {**peft, **noisy}}, images)
        assert not np.allclose(out, expected, atol=1e-6), i


def test_every_parameter_has_logical_axes():
    spec = PeftSpec(lora_rank=2, lora_targets=frozenset({"stage_1/block_0/conv_1"}),
                    adapter="pfeiffer", adapter_size=4)
    model = resnet.ResNet(resnet.size("resnet-tiny-bottleneck"), NUM_LABELS, peft=spec)
    boxed = model.init(jax.random.key(0), _images())
    is_spec = lambda s: isinstance(s, PartitionSpec)
    specs = nn.get_partition_spec(boxed)
    arrays = nn.unbox(boxed)
    for collection in ("params", "peft"):
        flat_specs = jax.tree_util.tree_flatten_with_path(specs[collection], is_leaf=is_spec)[0]
        flat_arrays = paths.flatten(arrays[collection])
        assert len(flat_specs) == len(flat_arrays) > 0
        for kp, partition in flat_specs:
            path = paths.path_str(kp)
            assert is_spec(partition), path
            assert len(partition) == flat_arrays[path].ndim, (collection, path, partition)
    kernel_spec = specs["params"]["stage_1"]["block_0"]["conv_1"]["kernel"]
    assert tuple(kernel_spec) == (None, None, "conv_in", "conv_out")
    assert tuple(specs["params"]["stem_norm"]["bias"]) == ("conv_out",)


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_1x1_conv_as_matmul_equals_convolution(strides):
    x = jax.random.normal(jax.random.key(3), (2, 7, 7, 16), jnp.float32)
    conv = Conv(8, (1, 1), strides)
    variables = nn.unbox(conv.init(jax.random.key(4), x))
    kernel = variables["params"]["kernel"]
    reference = lambda k: jax.lax.conv_general_dilated(
        x, k, strides, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv.apply(variables, x), reference(kernel), rtol=1e-5, atol=1e-5)
    weights = jax.random.normal(jax.random.key(5), reference(kernel).shape)
    grad_ours = jax.grad(lambda k: jnp.sum(conv.apply({"params": {"kernel": k}}, x) * weights))
    grad_ref = jax.grad(lambda k: jnp.sum(reference(k) * weights))
    np.testing.assert_allclose(grad_ours(kernel), grad_ref(kernel), rtol=1e-4, atol=1e-4)
