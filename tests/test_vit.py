"""ViT: shapes, logical axes on every parameter, LoRA/adapters identity at init, input checks."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lmx.models import vit
from lmx.peft import PeftSpec

NUM_LABELS = 5


def _images(cfg, batch=2, seed=0):
    shape = (batch, cfg.image_size, cfg.image_size, cfg.num_channels)
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("task,use_pooler", [("image_classification", False), ("hidden", False),
                                             ("hidden", True)])
def test_shapes_and_every_param_has_logical_axes(task, use_pooler):
    cfg = vit.size("vit-tiny", use_pooler=use_pooler)
    model = vit.ViT(cfg, task=task, num_labels=NUM_LABELS)
    images = _images(cfg)
    boxed = jax.eval_shape(model.init, jax.random.key(0), images)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    out = jax.eval_shape(model.apply, nn.unbox(boxed), images)
    T, D = cfg.num_patches + 1, cfg.encoder.embed_dim
    expected = {"image_classification": (2, NUM_LABELS), "hidden": (2, T, D)}[task]
    shapes = jax.tree.map(lambda x: x.shape, out)
    assert shapes == ((expected, (2, D)) if use_pooler else expected)


def test_patch_embed_is_the_strided_convolution():
    cfg = vit.size("vit-tiny")
    images = _images(cfg)
    params = nn.unbox(vit.PatchEmbed(cfg).init(jax.random.key(1), images))
    got_BTD = vit.PatchEmbed(cfg).apply(params, images)
    p = cfg.patch_size
    conv_BhwD = jax.lax.conv_general_dilated(
        images, params["params"]["kernel"], (p, p), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["params"]["bias"][None, None, None]
    np.testing.assert_allclose(got_BTD, conv_BhwD.reshape(got_BTD.shape), atol=1e-5)


def test_lora_and_adapters_at_init_equal_the_base():
    """Through transformer.Block: LoRA (B = 0) and Houlsby adapters (up = 0) start as the
    identity; only float reassociation between the two compiled programs may differ."""
    cfg = vit.size("vit-tiny")
    images = _images(cfg)
    targets = frozenset({"layer_0/attention/query", "layer_1/mlp/up"})
    spec = PeftSpec(lora_rank=2, lora_targets=targets, adapter="houlsby", adapter_size=4)
    model = vit.ViT(cfg, num_labels=NUM_LABELS, peft=spec)
    variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), images))
    peft_paths = set(traverse_util.flatten_dict(variables["peft"], sep="/"))
    assert {f"{m}/lora_{x}" for m in targets for x in "ab"} <= peft_paths
    assert {"layer_1/adapter_mlp/up_kernel", "layer_0/adapter_attention/down_kernel"} <= peft_paths
    base = vit.ViT(cfg, num_labels=NUM_LABELS)
    expected = jax.jit(base.apply)({"params": variables["params"]}, images)
    np.testing.assert_allclose(jax.jit(model.apply)(variables, images), expected,
                               rtol=0, atol=1e-6)


def test_wrong_image_size_and_prompt_tuning_are_refused():
    cfg = vit.size("vit-tiny")
    with pytest.raises(ValueError, match="takes"):
        jax.eval_shape(vit.ViT(cfg, num_labels=2).init, jax.random.key(0),
                       jnp.zeros((1, 24, 24, 3)))
    with pytest.raises(ValueError, match="prompt"):
        jax.eval_shape(vit.ViT(cfg, num_labels=2, peft=PeftSpec(num_prompt_tokens=2)).init,
                       jax.random.key(0), _images(cfg))
