"""Grad-CAM (Selvaraju et al. 2017) for the ResNet family, exact by construction.

The ResNet ends with a global average pool and a Dense head, so d logit / d A_hwc equals
d logit / d pooled_c / (H W) for every cell: the channel weights are that gradient's mean
over cells. It is taken by adding a zero `delta_BC` to the head's input (a flax method
interceptor) and differentiating w.r.t. `delta_BC`; the feature map comes from the sown
`intermediates/features`.

Axis legend: B batch, H/W feature-map (or image) height/width, C channels, L labels.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmx.models import resnet


class GradCam(NamedTuple):
    heatmap_BHW: jax.Array  # ReLU(sum_c alpha_c A_hwc), resized to the image, max-normalised
    raw_BHW: jax.Array  # sum_c alpha_c A_hwc on the feature grid, before ReLU / resizing
    weights_BC: jax.Array  # alpha_c
    logits_BL: jax.Array


def _apply_with_delta(module, variables, images_BHWC, delta_BC):
    """Logits with `delta_BC` added to the pooled features, and the sown feature map."""
    def add_delta(next_fun, args, kwargs, context):
        if isinstance(context.module, resnet.Head) and context.method_name == "__call__":
            args = (args[0] + delta_BC.astype(args[0].dtype),) + tuple(args[1:])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(add_delta):
        logits_BL, state = module.apply(variables, images_BHWC, train=False,
                                        mutable=["intermediates"])
    return logits_BL, state["intermediates"]["features"][0]


def grad_cam(module, variables, images_BHWC: jax.Array, target_B: jax.Array) -> GradCam:
    """Grad-CAM heatmaps of `target_B` (jit with `module` static, or use `grad_cam_jit`)."""
    B = images_BHWC.shape[0]

    def score(delta_BC):
        logits_BL, features_BHWC = _apply_with_delta(module, variables, images_BHWC, delta_BC)
        chosen_B = jnp.take_along_axis(logits_BL, target_B[:, None], axis=1)[:, 0]
        return chosen_B.sum(), (logits_BL, features_BHWC)

    channels = _feature_channels(module, variables, images_BHWC)
    grad_BC, (logits_BL, features_BHWC) = jax.grad(score, has_aux=True)(
        jnp.zeros((B, channels), jnp.float32))
    H, W = features_BHWC.shape[1:3]
    weights_BC = grad_BC / (H * W)
    raw_BHW = jnp.einsum("bc,bhwc->bhw", weights_BC, features_BHWC.astype(jnp.float32))
    cam_BHW = jax.image.resize(jax.nn.relu(raw_BHW), (B, *images_BHWC.shape[1:3]), "bilinear")
    cam_BHW = cam_BHW / jnp.maximum(cam_BHW.max(axis=(1, 2), keepdims=True), 1e-12)
    return GradCam(cam_BHW, raw_BHW, weights_BC, logits_BL)


def _feature_channels(module, variables, images_BHWC) -> int:
    shapes = jax.eval_shape(lambda: module.apply(variables, images_BHWC, train=False,
                                                 mutable=["intermediates"]))
    return shapes[1]["intermediates"]["features"][0].shape[-1]


grad_cam_jit = jax.jit(grad_cam, static_argnums=0)
