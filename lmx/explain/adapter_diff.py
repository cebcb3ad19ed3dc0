"""What did the adapter change: weight-space statistics of the LoRA updates, activation-space
magnitudes of LoRA and bottleneck-adapter outputs, and the per-layer PNG.

For a LoRA target with kernel W (I, O): delta = (alpha / r) A B, reported as
||delta||_F / ||W||_F, its singular values and effective rank exp(H(s / sum s)) (Roy &
Vetterli 2007). A conv LoRA (k x k conv to R, then 1 x 1 to O) is the same as one conv with
kernel A B reshaped, so the same numbers apply. Output magnitudes are measured on a batch:
||update|| / ||base output|| per module (LoRA) or ||adapter(h) - h|| / ||h|| (bottlenecks).

Axis legend: I/O in/out features, R rank, B batch, T tokens.
"""
from __future__ import annotations

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from lmx import paths
from lmx.models.layers import Bottleneck, Dense
from lmx.peft import PEFT, PeftSpec

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def effective_rank(singular_values: np.ndarray) -> float:
    s = np.asarray(singular_values, np.float64)
    p = s / max(s.sum(), 1e-30)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum())) if p.size else 0.0


def lora_update_stats(variables: dict, spec: PeftSpec) -> list[dict]:
    """One row per LoRA target: module, layer, relative norm, singular values, effective rank."""
    flat = paths.flatten(variables)
    rows = []
    for path in sorted(p for p in flat if p.endswith("/lora_a")):
        module = path[len(PEFT) + 1:-len("/lora_a")]
        a = np.asarray(flat[path], np.float64)
        b = np.asarray(flat[f"{PEFT}/{module}/lora_b"], np.float64)
        w = np.asarray(flat[f"params/{module}/kernel"], np.float64)
        a_IR, b_RO = a.reshape(-1, a.shape[-1]), b.reshape(b.shape[-2], b.shape[-1])
        delta_IO = spec.lora_scale * a_IR @ b_RO
        singular = np.linalg.svd(delta_IO, compute_uv=False)[:a_IR.shape[-1]]
        rows.append(dict(module=module, layer=_layer(module),
                         relative_norm=float(np.linalg.norm(delta_IO) / np.linalg.norm(w)),
                         update_norm=float(np.linalg.norm(delta_IO)),
                         singular_values=[float(s) for s in singular],
                         effective_rank=effective_rank(singular)))
    return rows


def _layer(module: str) -> str:
    match = re.match(r"(layer_\d+|stage_\d+|embed|head)", module)
    return match.group(1) if match else module.split("/")[0]


def _record_update_ratio(next_fun, args, kwargs, context):
    """Sows ||update|| / ||output without it|| for LoRA Dense layers and bottleneck adapters."""
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__":
        return out
    if isinstance(module, Bottleneck):
        update = out - args[0]
    elif isinstance(module, Dense) and module.peft.is_lora_target(module.scope.path):
        x = args[0].astype(jnp.float32)
        a = module.get_variable(PEFT, "lora_a")
        b = module.get_variable(PEFT, "lora_b")
        update = module.peft.lora_scale * (x @ a) @ b
    else:
        return out
    ratio = jnp.linalg.norm(update) / jnp.maximum(jnp.linalg.norm(out - update), 1e-12)
    module.sow("intermediates", "update_ratio", ratio)
    return out


@jax.jit(static_argnums=0)
def _ratios(module, variables, args):
    with nn.intercept_methods(_record_update_ratio):
        _, state = module.apply(variables, *args, mutable=["intermediates"])
    return {k: v for k, v in paths.flatten(state).items() if k.endswith("update_ratio/0")}


def output_magnitudes(module, variables: dict, *inputs) -> dict[str, float]:
    """module path -> ||adapter or LoRA contribution|| / ||base output|| on `inputs`."""
    found = _ratios(module, variables, tuple(jnp.asarray(x) for x in inputs))
    prefix = "intermediates/"
    return {k[len(prefix):-len("/update_ratio/0")]: float(v) for k, v in found.items()}


def layers_moved_most(rows: list[dict], key: str = "relative_norm") -> list[tuple[str, float]]:
    """Layers sorted by the summed `key` of their modules, largest first."""
    totals: dict[str, float] = {}
    for row in rows:
        totals[row["layer"]] = totals.get(row["layer"], 0.0) + row[key]
    return sorted(totals.items(), key=lambda kv: -kv[1])


def plot_update_norms(rows: list[dict], magnitudes: dict[str, float], path: str) -> str:
    """Grouped bars: per layer and module, ||delta W|| / ||W|| (and output magnitudes)."""
    modules = {r["module"] for r in rows} | set(magnitudes)
    layers = sorted({_layer(m) for m in modules}, key=_sort_key)
    kinds = sorted({m[len(_layer(m)) + 1:] for m in modules})
    panels = 2 if magnitudes else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4), squeeze=False)
    width = 0.8 / max(len(kinds), 1)
    for j, kind in enumerate(kinds):
        values = [next((r["relative_norm"] for r in rows if r["module"] == f"{layer}/{kind}"), 0.0)
                  for layer in layers]
        axes[0, 0].bar(np.arange(len(layers)) + j * width, values, width, label=kind)
        if magnitudes:
            axes[0, 1].bar(np.arange(len(layers)) + j * width,
                           [magnitudes.get(f"{layer}/{kind}", 0.0) for layer in layers], width,
                           label=kind)
    titles = ["||(alpha/r) A B|| / ||W|| (weights)", "||update|| / ||base output|| (on inputs)"]
    for k in range(panels):
        ax = axes[0, k]
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2, layers, rotation=30)
        ax.set(title=titles[k], ylabel="relative norm")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _sort_key(name: str):
    match = re.search(r"(\d+)$", name)
    return (name.rsplit("_", 1)[0], int(match.group(1)) if match else -1)
