"""Reparameterised virtual tokens, as HF PEFT builds them: P-tuning's prompt encoder (MLP or
bidirectional LSTM) and prefix tuning's projection MLP. Their weights live in the `peft`
collection and train; the model reads only their output (the soft prompt, or every layer's
prefix keys / values).

Axis legend: P virtual tokens, D the width they encode (P-tuning: the model width; prefix
tuning: G * K, one layer's keys), H encoder hidden width (the LSTM's per direction), X =
L * 2 * G * K every layer's prefix keys and values (L layers, G key/value heads, K head dim),
I a layer's input width, F = 4 * H the LSTM's gates (i, f, g, o, torch's order).

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

ENCODERS = ("mlp", "lstm")  # P-tuning reparameterisations (PEFT's encoder_reparameterization_type)


def _linear(layer: dict, x_PI: jax.Array) -> jax.Array:
    return add_bias(matmul(x_PI, layer["kernel"], jnp.float32), layer["bias"])


def _lstm_direction(layer: dict, x_PI: jax.Array, reverse: bool) -> jax.Array:
    """One direction of one torch.nn.LSTM layer over the P virtual tokens (h, c start at 0):
    gates = x W_ih + h W_hh + (b_ih + b_hh) split i, f, g, o; c = f c + i g; h = o tanh(c)."""
    recurrent_HF = layer["recurrent"]
    gates_PF = _linear(layer, x_PI)  # the input part of every step at once

    def step(carry, gates_F):
        h_H, c_H = carry
        z_F = gates_F + matmul(h_H[None], recurrent_HF, jnp.float32)[0]
        i_H, f_H, g_H, o_H = jnp.split(z_F, 4)
        c_H = jax.nn.sigmoid(f_H) * c_H + jax.nn.sigmoid(i_H) * jnp.tanh(g_H)
        h_H = jax.nn.sigmoid(o_H) * jnp.tanh(c_H)
        return (h_H, c_H), h_H

    zeros_H = jnp.zeros(recurrent_HF.shape[:1], jnp.float32)
    _, h_PH = jax.lax.scan(step, (zeros_H, zeros_H), gates_PF, reverse=reverse)
    return h_PH  # reverse=True keeps token order: row t read tokens t..P-1


def _lstm(encoder: dict, x_PI: jax.Array) -> jax.Array:
    """torch.nn.LSTM(bidirectional=True): each layer reads the previous one's (P, 2H)
    concatenated forward and reverse outputs."""
    layer = 0
    while f"lstm_{layer}_forward" in encoder:
        x_PI = jnp.concatenate([_lstm_direction(encoder[f"lstm_{layer}_{d}"], x_PI, d == "reverse")
                                for d in ("forward", "reverse")], axis=-1)
        layer += 1
    return x_PI


def soft_prompt(encoder: dict) -> jax.Array:
    """P-tuning's encoder (PEFT `PromptEncoder`): (P, D) virtual tokens from `embedding`.
    MLP: Linear -> ReLU -> Linear -> ReLU -> Linear. LSTM (weights `lstm_*`): a 2-layer
    bidirectional LSTM (H per direction) -> Linear(2H, 2H) -> ReLU -> Linear(2H, D)."""
    if "lstm_0_forward" in encoder:
        h_PH = jax.nn.relu(_linear(encoder["head_0"], _lstm(encoder, encoder["embedding"])))
        return _linear(encoder["head_1"], h_PH)
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
        return {"embedding": self._embedding(), **self._linears(self.width)}

    def _embedding(self) -> jax.Array:
        # PEFT's init: torch.nn.Embedding N(0, 1), torch.nn.Linear's uniform
        return _peft_variable(self, "embedding", nn.initializers.normal(1.0),
                              (self.num_tokens, self.width), (ax.RANK, None))

    def _linears(self, fan_in: int) -> dict:
        out = {}
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


class LSTMPromptEncoder(_Reparameterised):
    """P-tuning with PEFT's LSTM encoder: `soft_prompt` of the embedding, `num_layers`
    bidirectional LSTM layers of `hidden` units per direction and the `layer_sizes` head."""
    hidden: int = 0  # H
    num_layers: int = 2  # PEFT's encoder_num_layers default

    def weights(self) -> dict:
        out = {"embedding": self._embedding()}
        H, fan_in = self.hidden, self.width
        uniform = _torch_linear_init(H)  # torch.nn.LSTM: every weight and bias U(+-1/sqrt(H))
        for layer in range(self.num_layers):
            for direction in ("forward", "reverse"):
                name = f"lstm_{layer}_{direction}"
                out[name] = {
                    "kernel": _peft_variable(self, f"{name}_kernel", uniform, (fan_in, 4 * H),
                                             (None, None)),
                    "recurrent": _peft_variable(self, f"{name}_recurrent", uniform, (H, 4 * H),
                                                (None, None)),
                    # torch's bias_ih + bias_hh, one vector (the LSTM reads only their sum)
                    "bias": _peft_variable(
                        self, f"{name}_bias",
                        lambda key, shape: sum(uniform(k, shape) for k in jax.random.split(key)),
                        (4 * H,), (None,))}
            fan_in = 2 * H
        return out | self._linears(fan_in)

    @nn.compact
    def __call__(self) -> jax.Array:
        return soft_prompt(self.weights())


class PrefixProjection(_Reparameterised):
    """Prefix tuning with projection: every layer's prefix (P, X) is `projected_prefix`."""

    @nn.compact
    def __call__(self) -> jax.Array:
        return projected_prefix(self.weights())


def prompt_encoder(kind: str, num_tokens: int, width: int, hidden: int, name: str
                   ) -> PromptEncoder | LSTMPromptEncoder:
    if kind not in ENCODERS:
        raise ValueError(f"config.peft.prompt_encoder={kind!r} is not one of {ENCODERS}")
    if kind == "lstm":
        return LSTMPromptEncoder(num_tokens, width, (("head_0", 2 * hidden), ("head_1", width)),
                                 hidden=hidden, name=name)
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
