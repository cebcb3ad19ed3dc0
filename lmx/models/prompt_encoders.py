"""Reparameterised virtual tokens, as HF PEFT builds them: P-tuning's prompt encoder and
prefix tuning's projection MLP. Their weights live in the `peft` collection and train; the
model reads only their output (the soft prompt, or every layer's prefix keys / values).

Axis legend: P virtual tokens, D the width they encode (P-tuning: the model width; prefix
tuning: G * K, one layer's keys), H encoder hidden width, X = L * 2 * G * K every layer's
prefix keys and values (L layers, G key/value heads, K head dim).

PEFT saves neither encoder: `get_prompt_embedding_to_save` writes their output, and PEFT
reloads that as a plain table (inference mode). `soft_prompt` / `projected_prefix` compute
the same output from the weights here, so lmx exports it (lmx.hf.adapters).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmx.models.layers import _peft_variable, add_bias, lora_a_init, matmul
from lmx.scale import sharding as ax

ENCODERS = ("mlp",)  # P-tuning reparameterisations (PEFT's encoder_reparameterization_type)


def _linear(layer: dict, x_PI: jax.Array) -> jax.Array:
    return add_bias(matmul(x_PI, layer["kernel"], jnp.float32), layer["bias"])


def soft_prompt(encoder: dict) -> jax.Array:
    """P-tuning's MLP encoder (PEFT `PromptEncoder`, MLP): (P, D) virtual tokens from
    `embedding` through Linear -> ReLU -> Linear -> ReLU -> Linear."""
    h_PH = jax.nn.relu(_linear(encoder["mlp_0"], encoder["embedding"]))
    h_PH = jax.nn.relu(_linear(encoder["mlp_1"], h_PH))
    return _linear(encoder["mlp_2"], h_PH)


def projected_prefix(encoder: dict) -> jax.Array:
    """Prefix tuning's projection (PEFT `PrefixEncoder`, prefix_projection=True): (P, X)
    every layer's keys and values from `embedding` through Linear -> tanh -> Linear."""
    return _linear(encoder["transform_1"], jnp.tanh(_linear(encoder["transform_0"],
                                                            encoder["embedding"])))


def _torch_linear_init(fan_in: int):
    """torch.nn.Linear's weight and bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = fan_in ** -0.5
    return lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class _Reparameterised(nn.Module):
    """P learned (P, D) vectors and a stack of Linear layers over them (weights in `peft`)."""
    num_tokens: int
    width: int  # D
    layer_sizes: tuple[tuple[str, int], ...]  # (name, output features) per Linear

    def weights(self) -> dict:
        # PEFT's init: torch.nn.Embedding N(0, 1), torch.nn.Linear's uniform
        out = {"embedding": _peft_variable(self, "embedding", nn.initializers.normal(1.0),
                                           (self.num_tokens, self.width), (ax.RANK, None))}
        fan_in = self.width
        for name, features in self.layer_sizes:
            out[name] = {
                "kernel": _peft_variable(self, f"{name}_kernel", lora_a_init, (fan_in, features),
                                         (None, None)),
                "bias": _peft_variable(self, f"{name}_bias", _torch_linear_init(fan_in),
                                       (features,), (None,))}
            fan_in = features
        return out


class PromptEncoder(_Reparameterised):
    """P-tuning: the soft prompt (P, D) is `soft_prompt` of these weights."""

    @nn.compact
    def __call__(self) -> jax.Array:
        return soft_prompt(self.weights())


class PrefixProjection(_Reparameterised):
    """Prefix tuning with projection: every layer's prefix (P, X) is `projected_prefix`."""

    @nn.compact
    def __call__(self) -> jax.Array:
        return projected_prefix(self.weights())


def prompt_encoder(kind: str, num_tokens: int, width: int, hidden: int, name: str
                   ) -> PromptEncoder:
    if kind not in ENCODERS:
        raise ValueError(f"config.peft.prompt_encoder={kind!r} is not one of {ENCODERS} "
                         "(PEFT's LSTM reparameterisation is not built in lmx)")
    return PromptEncoder(num_tokens, width, (("mlp_0", hidden), ("mlp_1", hidden),
                                             ("mlp_2", width)), name=name)


def prefix_projection(num_tokens: int, width: int, hidden: int, num_layers: int, name: str
                      ) -> PrefixProjection:
    return PrefixProjection(num_tokens, width, (("transform_0", hidden),
                                                ("transform_1", num_layers * 2 * width)),
                            name=name)


def layer_prefixes(cfg, spec):
    """Prefix tuning with projection: every layer's prefix keys and values (L, 2, P, G, K)
    from one `PrefixProjection` (a child of the calling module, `prefix_encoder`); None
    without a projection (each attention layer then holds its own prefix vectors)."""
    if not (spec.num_prefix_tokens and spec.prefix_projection):
        return None
    if cfg.scan_layers:
        raise ValueError("config.peft.prefix_projection=True needs config.model.scan_layers="
                         "False (a scanned block takes no per-layer slice of the projection)")
    P, L, G, K = spec.num_prefix_tokens, cfg.num_layers, cfg.kv_heads, cfg.head_dim
    prefix_PX = prefix_projection(P, G * K, spec.encoder_hidden_size or G * K, L,
                                  name="prefix_encoder")()
    return prefix_PX.reshape(P, L, 2, G, K).transpose(1, 2, 0, 3, 4)


def encoder_weights(flat: dict, prefix: str) -> dict:
    """The nested weights `soft_prompt` / `projected_prefix` take, from flat `peft/...` paths
    (`{prefix}/embedding`, `{prefix}/mlp_0_kernel`, ...)."""
    out: dict = {}
    for path, value in flat.items():
        if not path.startswith(prefix + "/"):
            continue
        name = path[len(prefix) + 1:]
        if name == "embedding":
            out[name] = value
        else:
            layer, part = name.rsplit("_", 1)
            out.setdefault(layer, {})[part] = value
    return out
