"""HF tensors <-> lmx variables through per-family rule tables; no torch unless a .bin needs it.

A family module (`lmx/hf/bert.py`, `gpt2.py`, `llama.py`, `vit.py`, `resnet.py`) exposes

  MODEL_TYPES: tuple[str, ...]            HF `config.json` "model_type" values it reads
  ARCHITECTURES: dict[str, str]           lmx task -> HF class name (read and written)
  build(hf_config, task, num_labels, peft_spec, **overrides) -> nn.Module
                                          num_labels None: from id2label; peft_spec None: none
  example_inputs(module) -> tuple         dummy positional inputs for module.init
  tensor_map(module) -> dict[str, Rule]   "collection/module/.../leaf" -> HF tensor
  is_new_for_task(path) -> bool           task-head leaves (random init when absent)
  owns(module) -> bool                    this family writes this lmx module
  to_hf_config(module) -> dict            config.json for save_pretrained

and this file turns a folder of tensors into variables and back, with one error that lists
every missing tensor and every shape mismatch.
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
from absl import logging
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from lmx.hf import stream
from lmx.models.transformer import Transformer

KINDS = ("copy", "linear", "conv")
_BUFFERS = (".position_ids", ".num_batches_tracked", "rotary_emb.inv_freq", ".masked_bias",
            ".attn.bias")  # saved by some versions; not weights


@dataclasses.dataclass(frozen=True)
class Rule:
    """Where an lmx leaf lives in a HF checkpoint.

    kind: "copy"; "linear" (torch Linear stores (O, I), lmx (I, O): transposed); "conv"
      (torch OIHW, lmx HWIO).
    part: (i, n) when the HF tensor fuses n lmx leaves along its last (lmx) axis, e.g. GPT-2's
      c_attn holds query, key, value; the leaf is the i-th of n equal chunks.
    """
    name: str
    kind: str = "copy"
    part: tuple[int, int] | None = None


class HFTransformer(Transformer):
    """A Transformer that remembers its HF model type and config fields for save_pretrained."""
    model_type: str = ""
    hf_extra: tuple[tuple[str, Any], ...] = ()


HF_KEEP = ("pad_token_id", "bos_token_id", "eos_token_id", "id2label", "label2id")


def transformer_module(cfg, hf: dict[str, Any], task: str, num_labels: int | None, peft_spec,
                       model_type: str, pooling: str) -> HFTransformer:
    """The lmx module of a HF text model; labels from `id2label` unless `num_labels` is given;
    token ids and labels of config.json kept for save_pretrained."""
    from lmx.peft import NO_PEFT  # noqa: PLC0415
    labels = num_labels if num_labels is not None else len(hf.get("id2label") or {0: 0, 1: 1})
    return HFTransformer(cfg, task=task, num_labels=labels, pooling=pooling,
                         peft=peft_spec or NO_PEFT, model_type=model_type,
                         hf_extra=tuple((k, hashable(hf[k])) for k in HF_KEEP if k in hf))


def text_inputs(module) -> tuple:
    """Dummy token ids for initialising a text model."""
    return (jnp.zeros((1, 8), jnp.int32),)


def strip_and_untie(tensors: dict[str, np.ndarray], prefix: str,
                    tied: dict[str, str]) -> dict[str, np.ndarray]:
    """Drops the base-model prefix from names, then each tied copy `name -> target` (lmx ties
    them), checking it equals its target."""
    tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
    for name, target in tied.items():
        if name in tensors:
            array = tensors.pop(name)
            tensors.setdefault(target, array)
            if not np.array_equal(array, tensors[target]):
                raise ValueError(f"{name} differs from {target}; lmx ties them")
    return tensors


def hf_extra_fields(module) -> dict[str, Any]:
    return {k: dict(v) if isinstance(v, tuple) else v for k, v in getattr(module, "hf_extra", ())}


def hashable(value):
    """Dicts (e.g. id2label) as sorted item tuples, so a module attribute stays hashable."""
    return tuple(sorted(value.items())) if isinstance(value, dict) else value


def linear(lmx_module: str, hf_module: str, bias: bool = True,
           kind: str = "linear") -> dict[str, Rule]:
    """Rules for a Dense (kernel + bias) from a torch Linear (kind "copy": GPT-2's Conv1D)."""
    rules = {f"params/{lmx_module}/kernel": Rule(f"{hf_module}.weight", kind)}
    if bias:
        rules[f"params/{lmx_module}/bias"] = Rule(f"{hf_module}.bias")
    return rules


def norm(lmx_module: str, hf_module: str, bias: bool = True) -> dict[str, Rule]:
    rules = {f"params/{lmx_module}/scale": Rule(f"{hf_module}.weight")}
    if bias:
        rules[f"params/{lmx_module}/bias"] = Rule(f"{hf_module}.bias")
    return rules


def label_fields(hf: dict[str, Any], module) -> dict[str, Any]:
    """id2label / label2id consistent with the module's number of labels."""
    if module.task not in ("sequence_classification", "token_classification"):
        return hf
    id2label = {str(k): v for k, v in (hf.get("id2label") or {}).items()}
    if len(id2label) != module.num_labels:
        id2label = {str(i): f"LABEL_{i}" for i in range(module.num_labels)}
    return hf | {"id2label": id2label, "label2id": {v: int(k) for k, v in id2label.items()}}


def to_lmx(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "linear":
        return array.T
    if kind == "conv":
        return array.transpose(2, 3, 1, 0)
    return array


def lmx_shape(tensor, kind: str) -> tuple[int, ...]:
    """The shape `to_lmx` gives `tensor` (an array or a lazy tensor), without reading it."""
    shape = tuple(np.shape(tensor))
    if kind == "linear":
        return shape[::-1]
    if kind == "conv":
        return tuple(shape[i] for i in (2, 3, 1, 0))
    return shape


def to_hf(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "linear":
        return array.T
    if kind == "conv":
        return array.transpose(3, 2, 0, 1)
    return array


def read_tensors(model_dir: pathlib.Path, filename: str = "model") -> dict[str, np.ndarray]:
    """All tensors of `{filename}*.safetensors` (sharded or not); else `{filename}.bin`-style
    torch files through `torch.load(weights_only=True)` when torch is installed."""
    files = sorted(model_dir.glob(f"{filename}*.safetensors"))
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        try:
            tensors.update(load_file(str(file)))
        except Exception as error:  # safetensors' own error does not name the file
            raise ValueError(f"{file} is not a readable safetensors file (truncated or "
                             f"corrupt?): {error}") from error
    if files:
        return tensors
    pattern = "pytorch_model*.bin" if filename == "model" else f"{filename}*.bin"
    bins = sorted(model_dir.glob(pattern))
    if not bins:
        raise FileNotFoundError(f"no {filename}*.safetensors (nor a torch .bin) in {model_dir}")
    try:
        import torch  # noqa: PLC0415  (optional: only .bin checkpoints need it)
    except ImportError as error:
        raise ImportError(f"{bins[0]} is a torch file and torch is not installed; convert it to "
                          "safetensors or install torch") from error
    for file in bins:  # weights_only: tensors and plain containers, never arbitrary objects
        state = torch.load(file, map_location="cpu", weights_only=True)
        tensors.update({k: v.float().numpy() if v.is_floating_point() else v.numpy()
                        for k, v in state.items()})
    return tensors


def write_tensors(tensors: dict[str, np.ndarray], path: pathlib.Path,
                  metadata: dict[str, str] | None = None) -> None:
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
              metadata=metadata or {"format": "pt"})


def abstract_variables(module: nn.Module, *inputs: Any) -> dict[str, Any]:
    """Flat `collection/path -> ShapeDtypeStruct` of the module's variables (no compute)."""
    shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *inputs)))
    return traverse_util.flatten_dict(dict(shapes), sep="/")


def load(rules: dict[str, Rule], tensors: dict[str, np.ndarray],
         expected: dict[str, Any], source: str) -> dict[str, Any]:
    """Nested variables for every `expected` leaf that has a rule, from HF `tensors`.

    Consumed tensors are removed from `tensors`; what remains is the caller's to report.
    `stream.LazyTensor`s give `stream.LazyLeaf`s (nothing read; `stream.place` reads them).
    Raises ValueError listing all missing HF tensors and all shape mismatches at once.
    """
    flat, missing, mismatched, used = {}, [], [], set()
    for path, rule in rules.items():
        if path not in expected:
            raise KeyError(f"rule for {path!r}, which the lmx module does not have")
        if rule.name not in tensors:
            missing.append(rule.name)
            continue
        array = _lmx_leaf(tensors[rule.name], rule)
        used.add(rule.name)
        shape = tuple(expected[path].shape)
        if array.shape != shape:
            mismatched.append(f"{rule.name} -> {path}: checkpoint gives {array.shape}, "
                              f"lmx expects {shape}")
            continue
        dtype = np.dtype(expected[path].dtype)
        flat[path] = (array.astype(dtype) if stream.is_lazy(array)
                      else np.ascontiguousarray(array, dtype=dtype))
    if missing or mismatched:
        raise ValueError(f"{source} does not fit lmx:\n  missing tensors: {sorted(missing)}\n"
                         f"  shape mismatches: {mismatched}")
    for name in used:
        tensors.pop(name)
    return traverse_util.unflatten_dict(flat, sep="/")


def _lmx_leaf(tensor, rule: Rule):
    """The lmx leaf `rule` takes from `tensor`: an array, or a `stream.LazyLeaf` (nothing
    read) when the tensor is a `stream.LazyTensor`."""
    if stream.is_lazy(tensor):
        return stream.LazyLeaf.of(tensor, rule.kind, rule.part)
    array = to_lmx(np.asarray(tensor), rule.kind)
    if rule.part is not None:
        i, n = rule.part
        array = np.split(array, n, axis=-1)[i]
    return array


def unused(tensors: dict[str, np.ndarray], source: str) -> list[str]:
    """Warns about (and returns) tensors no rule consumed, ignoring known buffers."""
    left = sorted(k for k in tensors if not k.endswith(_BUFFERS))
    if left:
        logging.warning("%s: %d tensors not loaded: %s", source, len(left), left)
    return left


def save(rules: dict[str, Rule], variables: dict[str, Any]) -> dict[str, np.ndarray]:
    """HF tensors from lmx variables (fused tensors re-assembled from their parts)."""
    flat = traverse_util.flatten_dict(jax.device_get(dict(variables)), sep="/")
    parts: dict[str, dict[int, np.ndarray]] = {}
    tensors: dict[str, np.ndarray] = {}
    for path, rule in rules.items():
        if path not in flat:
            raise KeyError(f"lmx variables lack {path!r} (needed for {rule.name})")
        array = np.asarray(flat[path], np.float32) if jnp.issubdtype(
            flat[path].dtype, jnp.floating) else np.asarray(flat[path])
        if rule.part is None:
            tensors[rule.name] = to_hf(array, rule.kind)
        else:
            parts.setdefault(rule.name, {})[rule.part[0]] = (array, rule)
    for name, pieces in parts.items():
        n = next(iter(pieces.values()))[1].part[1]
        if sorted(pieces) != list(range(n)):
            raise ValueError(f"{name}: fused from parts {sorted(pieces)} of {n}")
        joined = np.concatenate([pieces[i][0] for i in range(n)], axis=-1)
        tensors[name] = to_hf(joined, pieces[0][1].kind)
    return tensors


def read_config(model_dir: pathlib.Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not JSON ({error.msg})") from error
