"""HuggingFace interop: checkpoints, tokenizers and PEFT adapters in and out of lmx.

    model, variables = lmx.hf.from_pretrained("path/or/hub-id", task="sequence_classification")
    logits = model.apply(variables, ...)
    lmx.hf.save_pretrained(model, variables, "out_dir")   # loads in transformers

One family module per HF architecture family (bert.py, distilbert.py, gpt2.py, llama.py,
qwen2.py, qwen3.py, mistral.py, gemma2.py, gemma3.py, vit.py, resnet.py), each a rule table over `core.py`'s generic loader; see core.py for the contract.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from flax import traverse_util

from lmx.hf import adapters, core, stream
from lmx.models.transformer import stack_layers, unstack_layers
from lmx.peft import NO_PEFT

FAMILIES = ("distilbert", "bert", "gpt2", "llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3",
            "vit", "resnet")  # first owner wins


def family_of(hf_config: dict[str, Any]):
    """The family module that reads this `config.json`; unknown model types are an error."""
    model_type = hf_config.get("model_type")
    known = {}
    for name in FAMILIES:
        module = importlib.import_module(f"lmx.hf.{name}")
        known.update({t: module for t in module.MODEL_TYPES})
    if model_type not in known:
        raise ValueError(f"model_type={model_type!r} (architectures "
                         f"{hf_config.get('architectures')}) is not supported; lmx reads "
                         f"{sorted(known)}")
    return known[model_type]


def family_of_module(module: nn.Module):
    for name in FAMILIES:
        family = importlib.import_module(f"lmx.hf.{name}")
        if family.owns(module):
            return family
    raise ValueError(f"no HF family writes a {type(module).__name__}")


def task_of(family, hf_config: dict[str, Any], task: str | None) -> str:
    """`task`, else the one named by the checkpoint's `architectures`, else "hidden"."""
    if task is not None:
        return task
    by_class = {cls: t for t, cls in family.ARCHITECTURES.items()}
    for architecture in hf_config.get("architectures") or []:
        if architecture in by_class:
            return by_class[architecture]
    return "hidden"


def load_tokenizer(path_or_id: str | pathlib.Path, pad_token: str | None = None):
    """The tokenizer of a HF folder, installed model package or hub id (see
    `lmx.hf.tokenizer.load_tokenizer`)."""
    from lmx.hf import pretrained, tokenizer  # noqa: PLC0415
    return tokenizer.load_tokenizer(pretrained.resolve_model_dir(str(path_or_id)), pad_token)


def module_from_config(path_or_id: str | pathlib.Path, task: str | None = None,
                       num_labels: int | None = None, **config_overrides: Any) -> nn.Module:
    """The lmx module a HF folder describes (its config.json only: no weights are read)."""
    from lmx.hf import pretrained  # noqa: PLC0415
    hf_config = core.read_config(pretrained.resolve_model_dir(str(path_or_id)))
    family = family_of(hf_config)
    return family.build(hf_config, task_of(family, hf_config, task), num_labels, None,
                        **config_overrides)


def from_pretrained(path_or_id: str | pathlib.Path, task: str | None = None,
                    num_labels: int | None = None, adapter: str | pathlib.Path | None = None,
                    fresh_heads: bool = True, lazy: bool = False,
                    **config_overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """An lmx module and its variables (numpy, float32) from a HF folder or hub id.

    Args:
      path_or_id: a local folder (config.json + safetensors), an installed package that ships
        one, or a hub id (needs internet).
      task: lmx task ("hidden", "mlm", "causal_lm", "sequence_classification",
        "token_classification", "image_classification"); default: from `architectures`.
      num_labels: classification labels; default from the config's `id2label`.
      adapter: a PEFT adapter folder to load into the `peft` collection.
      fresh_heads: initialise task-head weights the checkpoint lacks (seed 0, as
        transformers does); False leaves them out (lmx's trainer initialises them itself).
      lazy: nothing is read yet: checkpoint leaves are `stream.LazyLeaf`s (safetensors
        only) that `stream.place` / `stream.place_tree` read slice by slice straight into
        their shardings (peak host memory about one tensor); needs no adapter.
      config_overrides: lmx config fields to replace (e.g. dtype, dropout_rate).
    """
    if config_overrides.get("scan_layers"):  # load unrolled, then stack the layers
        module, variables = from_pretrained(path_or_id, task, num_labels, adapter, fresh_heads,
                                            lazy, **{**config_overrides, "scan_layers": False})
        if module.peft != NO_PEFT:
            raise ValueError("scan_layers with an adapter: load unrolled, then stack_layers")
        scanned = module.clone(cfg=dataclasses.replace(module.cfg, scan_layers=True))
        stack = _stack_lazy if lazy else stack_layers
        return scanned, stack(variables, module.cfg.num_layers)
    from lmx.hf import pretrained  # noqa: PLC0415
    model_dir = pretrained.resolve_model_dir(str(path_or_id))
    hf_config = core.read_config(model_dir)
    family = family_of(hf_config)
    task = task_of(family, hf_config, task)
    module = family.build(hf_config, task, num_labels, None, **config_overrides)
    adapter_data = None
    if adapter is not None and lazy:
        raise ValueError(f"from_pretrained(adapter={adapter}, lazy=True): load adapters eagerly")
    if adapter is not None:
        peft_spec, adapter_data = adapters.read(pathlib.Path(adapter), family, module)
        module = module.clone(peft=peft_spec)
    tensors = _read_hook(family, module, _tensors(model_dir, lazy))
    expected = core.abstract_variables(module, *family.example_inputs(module))
    rules = {p: r for p, r in family.tensor_map(module).items() if p in expected}
    head_rules = {p: rules.pop(p) for p in list(rules) if family.is_new_for_task(p)}
    if num_labels is not None:  # a new label set: a checkpoint head of another size is replaced
        _drop_resized_heads(head_rules, tensors, expected, str(model_dir))
    variables = core.load(rules, tensors, expected, str(model_dir))
    variables = _load_head(variables, head_rules, tensors, expected, module, str(model_dir),
                           fresh_heads)
    if adapter_data is not None:
        variables = adapters.apply(variables, module, family, adapter_data, expected,
                                   str(adapter))
    core.unused(tensors, str(model_dir))
    return module, variables


def _drop_resized_heads(head_rules, tensors, expected, source):
    for path, rule in head_rules.items():
        if rule.name in tensors and rule.part is None:
            shape = core.lmx_shape(tensors[rule.name], rule.kind)
            if shape != tuple(expected[path].shape):
                logging.warning("%s: %s has shape %s, the requested head %s: initialised anew",
                                source, rule.name, shape, tuple(expected[path].shape))
                tensors.pop(rule.name)


def _tensors(model_dir: pathlib.Path, lazy: bool) -> dict[str, Any]:
    """The checkpoint's tensors: read (`core.read_tensors`), or listed lazily from its
    safetensors (a folder with only torch .bin files is read as before)."""
    if lazy and (list(model_dir.glob("model*.safetensors"))):
        return stream.open_tensors(model_dir)
    return core.read_tensors(model_dir)


def _stack_lazy(variables: dict, num_layers: int) -> dict:
    """`stack_layers` for lazy leaves: each stacked leaf reads its layers when placed."""
    def stack(*leaves):
        return stream.LazyStack(leaves) if stream.is_lazy(leaves[0]) else np.stack(leaves)
    out = {}
    for collection, node in variables.items():
        if not isinstance(node, dict) or "layer_0" not in node:
            out[collection] = node
            continue
        rest = {k: v for k, v in node.items() if not k.startswith("layer_")}
        layers = [node[f"layer_{i}"] for i in range(num_layers)]
        rest["layers"] = {"block": jax.tree.map(stack, *layers, is_leaf=stream.is_lazy)}
        out[collection] = rest
    return out


def _read_hook(family, module, tensors):
    hook = getattr(family, "read_hook", None)
    return hook(tensors, module) if hook else tensors


def _load_head(variables, head_rules, tensors, expected, module, source, fresh: bool):
    """Task-head modules the checkpoint has are loaded; the others are initialised (seed 0),
    as transformers does; a module with only some of its tensors is an error."""
    modules: dict[str, dict] = {}
    for path, rule in head_rules.items():
        modules.setdefault(path.rsplit("/", 1)[0], {})[path] = rule
    present = {}
    for name, group in modules.items():
        found = [r.name for r in group.values() if r.name in tensors]
        if found and len(found) != len(group):
            raise ValueError(f"{source}: {name} is partly in the checkpoint: has {found}, lacks "
                             f"{sorted(r.name for r in group.values() if r.name not in tensors)}")
        if found:
            present |= group
    variables = _merge(variables, core.load(present, tensors, expected, source))
    flat = _flat(variables)
    missing = [p for p in expected if p not in flat and p.startswith("params/")]
    if missing and fresh:
        logging.warning("%s: no weights for %s; initialised randomly (seed 0)", source, missing)
        family = family_of_module(module)
        fresh = _flat(dict(nn.unbox(module.init(jax.random.key(0),
                                                *family.example_inputs(module)))))
        variables = _merge(variables, {p: np.asarray(fresh[p]) for p in missing})
    return variables


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def _merge(a, b):
    return traverse_util.unflatten_dict({**_flat(a), **_flat(b)}, sep="/")


def save_pretrained(module: nn.Module, variables: dict[str, Any],
                    out_dir: str | pathlib.Path) -> pathlib.Path:
    """Writes config.json + model.safetensors that `transformers.AutoModelFor...` loads.

    A model with unmerged LoRA weights is refused: merge them first (`lmx.hf.merge_lora`)."""
    module, variables = _unrolled(module, variables)
    family = family_of_module(module)
    if variables.get("peft"):
        raise ValueError("variables carry a `peft` collection; save it with save_adapter, or "
                         "merge LoRA into the base first (lmx.hf.merge_lora)")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = core.abstract_variables(module, *family.example_inputs(module))
    rules = {p: r for p, r in family.tensor_map(module).items() if p in expected}
    tensors = core.save(rules, variables)
    hook = getattr(family, "write_hook", None)
    tensors = hook(tensors, module) if hook else tensors
    core.write_tensors(tensors, out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(json.dumps(family.to_hf_config(module), indent=2))
    return out_dir


def save_adapter(module: nn.Module, variables: dict[str, Any], out_dir: str | pathlib.Path,
                 base_model_name_or_path: str = "", initial: dict | None = None
                 ) -> pathlib.Path:
    """Writes `variables["peft"]` (and any task-head `variables["params"]` given, which
    become PEFT `modules_to_save`) as a folder `peft.PeftModel.from_pretrained` loads; bottleneck
    adapters, which PEFT lacks, go in lmx's format (`lmx_adapter.json`), which
    `from_pretrained(..., adapter=DIR)` reads too. Pass only the trained params. A PiSSA /
    OLoRA adapter is saved as such (PEFT recomputes the residual from the original base on
    load), or, given `initial` (its A, B at init: `lmx.peft_init.initial_lora(base, spec)[1]`),
    as plain LoRA of twice the rank for the original base."""
    module, variables = _unrolled(module, variables)
    return adapters.save(module, family_of_module(module), variables, pathlib.Path(out_dir),
                         base_model_name_or_path, initial)


def _unrolled(module: nn.Module, variables: dict) -> tuple[nn.Module, dict]:
    """A scanned Transformer (`layers/block`, stacked) as its unrolled twin (`layer_N`): the
    layout HF folders and PEFT adapters name."""
    cfg = getattr(module, "cfg", None)
    if not getattr(cfg, "scan_layers", False):
        return module, variables
    unrolled = module.clone(cfg=dataclasses.replace(cfg, scan_layers=False))
    if module.peft.lora_targets or module.peft.ia3_targets:
        from lmx.peft import unscanned_spec  # noqa: PLC0415
        unrolled = unrolled.clone(peft=unscanned_spec(module.peft, cfg.num_layers))
    return unrolled, unstack_layers(variables, cfg.num_layers)
