"""Per-token scores for a batch of encoded texts, by method name: the one entry point the
report, the faithfulness bench, the training hook and the tests share.

Axis legend: B batch, T tokens, D width, L labels.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lmx.explain import attention, attributions as attr
from lmx.explain.target import (EmbeddingOutputLogits, TextLogits, TokenLogits, baseline_embeds, embed,
                                embedding_output, text_context)

METHODS = ("integrated_gradients", "grad_x_input", "saliency", "smoothgrad", "occlusion",
           "rollout", "flow", "random")


@dataclasses.dataclass(frozen=True)
class Options:
    ig_steps: int = 64
    ig_rule: str = "gausslegendre"
    baseline: str = "pad"  # "zero" | "pad" | "mask"
    pad_id: int = 0
    mask_id: int = 0
    smoothgrad_samples: int = 16
    smoothgrad_noise: float = 0.1
    jit: bool = True


def predict(module, variables, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and its probability per example."""
    logits_BL = _logits(module, variables, *(jnp.asarray(batch[k])
                                             for k in ("ids", "mask", "token_types")))
    probs_BL = np.asarray(jax.nn.softmax(logits_BL, axis=-1))
    predicted_B = probs_BL.argmax(-1)
    return predicted_B, probs_BL[np.arange(len(predicted_B)), predicted_B]


@jax.jit(static_argnums=0)
def _logits(module, variables, ids_BT, mask_BT, token_types_BT):
    return module.apply(variables, ids_BT, mask_BT, token_types_BT)


def scores(method: str, module, variables, batch: dict, target_B, options: Options,
           key: jax.Array | None = None, position: int | None = None
           ) -> tuple[np.ndarray, dict]:
    """(B, T) scores of `method` for `target_B` (0 on padding), and extras (IG: the gap).

    `batch`: ids, mask, token_types (B, T) and `candidate` (attributable tokens). `position`:
    a token-classification model's token whose tag is explained (`target.TokenLogits`);
    integrated gradients, saliency, SmoothGrad and occlusion take it.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    key = jax.random.key(0) if key is None else key
    context = text_context(variables, batch)
    candidate_BT = jnp.asarray(batch["candidate"]).astype(bool)
    target_B = jnp.asarray(target_B, jnp.int32)
    if position is not None and method not in ("integrated_gradients", "saliency",
                                               "smoothgrad", "occlusion"):
        raise ValueError(f"method={method!r} explains a sequence label; a token's tag "
                         "(position=) takes integrated_gradients, saliency, smoothgrad, occlusion")
    logit_fn = TextLogits(module) if position is None else TokenLogits(module, position)
    x_BTD = embed(variables, context["ids"])
    baseline_BTD = baseline_embeds(variables, context["ids"], candidate_BT, options.baseline,
                                   options.pad_id, options.mask_id)

    def run(fn, *args, **static):
        f = attr.jitted(fn, **static) if options.jit else (lambda *a: fn(*a, **static))
        return f(logit_fn, context, x_BTD, target_B, *args)

    extras = {}
    if method == "integrated_gradients":
        ig = run(attr.integrated_gradients, baseline_BTD, steps=options.ig_steps,
                 rule=options.ig_rule)
        out_BT = attr.token_scores(ig.attribution, "sum")
        extras = {"gap": np.asarray(ig.gap_B), "delta": np.asarray(ig.delta_B)}
    elif method == "grad_x_input":  # at the embedding layer's output (see EmbeddingOutputLogits)
        h_logits = EmbeddingOutputLogits(module)
        h_BSD = embedding_output(module, context)
        fn = attr.jitted(attr.grad_x_input) if options.jit else attr.grad_x_input
        h_BSD = fn(h_logits, context, h_BSD, target_B)
        out_BT = attr.token_scores(h_BSD[:, h_BSD.shape[1] - x_BTD.shape[1]:], "sum")
    elif method == "saliency":
        out_BT = attr.token_scores(run(attr.saliency), "norm")
    elif method == "smoothgrad":
        out_BT = attr.token_scores(run(attr.smoothgrad, key, samples=options.smoothgrad_samples,
                                       noise=options.smoothgrad_noise), "norm")
    elif method == "occlusion":
        out_BT = run(attr.occlusion, baseline_BTD, attr.token_masks(x_BTD.shape[1]))
    elif method == "random":
        out_BT = jax.random.uniform(key, candidate_BT.shape)
    else:
        maps_NBTS = attention.attention_maps(module, variables, context["ids"], context["mask"],
                                             context["token_types"])
        fn = attention.rollout_scores if method == "rollout" else attention.flow_scores
        out_BT = fn(maps_NBTS, np.asarray(batch["mask"]), module.pooling)
    return np.where(np.asarray(batch["mask"]).astype(bool), np.asarray(out_BT), 0.0), extras
