"""What an explanation differentiates: the logits as a function of the input embeddings
(text) or the pixels (images), everything else held fixed in a `context` pytree.

Axis legend: B batch, T tokens, D model width, V vocabulary, L labels,
H/W image height/width, C channels.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BASELINES = ("zero", "pad", "mask")


@dataclasses.dataclass(frozen=True)
class TextLogits:
    """`logits_BL = f(context, embeds_BTD)`; context: variables, ids, mask, token_types.

    Hashable (a static jit argument): one compile per model, not per call.
    """
    module: nn.Module

    def __call__(self, context: dict, embeds_BTD: jax.Array) -> jax.Array:
        return self.module.apply(context["variables"], context["ids"], context["mask"],
                                 context["token_types"], embeds_BTD=embeds_BTD)


@dataclasses.dataclass(frozen=True)
class TokenLogits:
    """`logits_BL` of one token position of a token-classification model (NER): what an
    entity tag at `position` was decided from. Hashable, like TextLogits."""
    module: nn.Module
    position: int

    def __call__(self, context: dict, embeds_BTD: jax.Array) -> jax.Array:
        return TextLogits(self.module)(context, embeds_BTD)[:, self.position]


@dataclasses.dataclass(frozen=True)
class ImageLogits:
    """`logits_BL = f(context, images_BHWC)`; context: variables (BatchNorm in eval mode)."""
    module: nn.Module

    def __call__(self, context: dict, images_BHWC: jax.Array) -> jax.Array:
        return self.module.apply(context["variables"], images_BHWC, train=False)


def _is_embedding_call(context) -> bool:
    from lmx.models.transformer import Embeddings  # noqa: PLC0415
    return isinstance(context.module, Embeddings) and context.method_name == "__call__"


@dataclasses.dataclass(frozen=True)
class EmbeddingOutputLogits:
    """`logits_BL = f(context, h_BSD)` with `h` the embedding layer's output (after its
    LayerNorm, S = soft-prompt + real tokens), as Captum's layer methods on HF `embeddings`.

    Grad x input needs it on post-LN encoders: there the logits depend on the token embedding
    x only through LN(x + position + type), which is scale invariant, so grad . x equals
    -grad . (position + type) and says nothing about the token."""
    module: nn.Module

    def __call__(self, context: dict, h_BSD: jax.Array) -> jax.Array:
        def replace(next_fun, args, kwargs, call):
            out = next_fun(*args, **kwargs)
            return (h_BSD, out[1]) if _is_embedding_call(call) else out

        with nn.intercept_methods(replace):
            return self.module.apply(context["variables"], context["ids"], context["mask"],
                                     context["token_types"])


def embedding_output(module: nn.Module, context: dict) -> jax.Array:
    """The embedding layer's output h_BSD for these inputs (what EmbeddingOutputLogits takes)."""
    captured = []

    def keep(next_fun, args, kwargs, call):
        out = next_fun(*args, **kwargs)
        if _is_embedding_call(call):
            captured.append(out[0])
        return out

    with nn.intercept_methods(keep):
        module.apply(context["variables"], context["ids"], context["mask"],
                     context["token_types"])
    return captured[0]


def target_logit(logit_fn, context: Any, x_BX: jax.Array, target_B: jax.Array) -> jax.Array:
    """The explained output: each example's logit of its target class."""
    logits_BL = logit_fn(context, x_BX)
    return jnp.take_along_axis(logits_BL, target_B[:, None], axis=1)[:, 0]


def target_prob(logit_fn, context: Any, x_BX: jax.Array, target_B: jax.Array) -> jax.Array:
    probs_BL = jax.nn.softmax(logit_fn(context, x_BX).astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(probs_BL, target_B[:, None], axis=1)[:, 0]


def token_table(variables: dict) -> jax.Array:
    return variables["params"]["embed"]["token"]["embedding"]


def text_context(variables: dict, batch: dict) -> dict:
    return {"variables": variables, "ids": jnp.asarray(batch["ids"]),
            "mask": jnp.asarray(batch["mask"]).astype(bool),
            "token_types": jnp.asarray(batch["token_types"])}


def embed(variables: dict, ids_BT: jax.Array) -> jax.Array:
    return jnp.take(token_table(variables), ids_BT, axis=0).astype(jnp.float32)


def baseline_embeds(variables: dict, ids_BT: jax.Array, candidate_BT: jax.Array, kind: str,
                    pad_id: int = 0, mask_id: int = 0) -> jax.Array:
    """The IG / occlusion reference: candidate tokens become zero, [PAD] or [MASK] embeddings;
    special tokens and padding keep theirs (so they carry no attribution)."""
    if kind not in BASELINES:
        raise ValueError(f"baseline={kind!r} is not one of {BASELINES}")
    x_BTD = embed(variables, ids_BT)
    if kind == "zero":
        reference_BTD = jnp.zeros_like(x_BTD)
    else:
        reference_BTD = embed(variables, jnp.full_like(ids_BT, pad_id if kind == "pad" else mask_id))
    return jnp.where(candidate_BT[..., None], reference_BTD, x_BTD)


def read_vocabulary(model_dir: str | pathlib.Path) -> list[str]:
    """Token strings by id, from the folder's tokenizer.json (else vocab.txt)."""
    model_dir = pathlib.Path(model_dir)
    if (model_dir / "tokenizer.json").is_file():
        vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
        words = [""] * (max(vocab.values()) + 1)
        for word, i in vocab.items():
            words[i] = word
        return words
    return (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()


def candidates(ids_BT: np.ndarray, mask_BT: np.ndarray, vocabulary: list[str] | None
               ) -> np.ndarray:
    """Real tokens that may be attributed: not padding, not `[CLS]`-style special tokens."""
    mask_BT = np.asarray(mask_BT).astype(bool)
    if vocabulary is None:
        return mask_BT
    special = np.array([w.startswith("[") and w.endswith("]") for w in vocabulary])
    return mask_BT & ~special[np.asarray(ids_BT)]


def to_words(tokens: list[str], scores_T: np.ndarray) -> list[tuple[str, float]]:
    """Sums WordPiece pieces (`##` continuations) into words; other tokens stay as they are."""
    words: list[list] = []
    for token, score in zip(tokens, scores_T):
        if token.startswith("##") and words:
            words[-1][0] += token[2:]
            words[-1][1] += float(score)
        else:
            words.append([token, float(score)])
    return [(w, s) for w, s in words]
