"""HF PEFT adapter folders <-> lmx `peft` collections: LoRA (incl. rsLoRA), IA3, prompt,
P- and prefix tuning, LN tuning; bottleneck adapters (which PEFT lacks) in lmx's own format.

A PEFT folder is `adapter_config.json` + `adapter_model.safetensors`. Tensor names are
`base_model.model.<HF module>.lora_A.weight` (R, I), `.lora_B.weight` (O, R), `.ia3_l`
((O, 1) on outputs, (1, I) on feed-forward inputs), `prompt_embeddings` (P, D) for prompt
tuning and (P, L * 2 * G * K) for prefix tuning (per layer: key then value, G kv heads);
LoRA on the token table is `<HF module>.lora_embedding_A` (R, V) and `.lora_embedding_B`
(D, R), and PEFT saves the table itself beside them (`.base_layer.weight`);
`modules_to_save` (task heads) are full tensors under their HF names. LN tuning saves each
tuned norm as `<HF norm>.ln_tuning_layers.weight` (and `.bias`). P-tuning and prefix
projection save their encoder's output, not the encoder (PEFT's `get_prompt_embedding_to_save`)
and PEFT reloads that table: so does lmx (a P-tuning folder loads as a soft prompt).

lmx's format (`lmx_adapter.json` + `adapter_model.safetensors` keyed by lmx variable paths)
holds any `peft` collection, bottleneck adapters included.
"""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import numpy as np
from flax import traverse_util

from lmx import peft_init
from lmx.hf import core
from lmx.models import prompt_encoders
from lmx.peft import ALL_NORMS, NO_PEFT, TOKEN_TABLE, PeftSpec

PEFT_CONFIG, LMX_CONFIG = "adapter_config.json", "lmx_adapter.json"
WEIGHTS = "adapter_model.safetensors"
TASK_TYPES = {"sequence_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS",
              "causal_lm": "CAUSAL_LM", "hidden": "FEATURE_EXTRACTION", "mlm": None,
              "image_classification": None}
HEAD_MODULES = ("classifier", "score")  # PEFT's modules_to_save for classification tasks
_UNSUPPORTED = {"lora_bias": "LoRA biases", "layers_to_transform": "layers_to_transform",
                "trainable_token_indices":
                "trainable tokens", "layer_replication": "layer replication"}


def hf_modules(family, module) -> dict[str, tuple[str, tuple[int, int] | None]]:
    """lmx module path -> (HF module name as PEFT sees it, fused part) for every Dense and
    the token table."""
    rules = family.tensor_map(module.clone(peft=NO_PEFT))
    names = {rule.name: rule.name for rule in rules.values()}
    hook = getattr(family, "write_hook", None)
    if hook and module.task != "hidden":
        names = {old: new for old, new in zip(names, hook(dict(names), module))}
    live = getattr(family, "peft_module_name", lambda name: name)
    return {path.split("/", 1)[1].rsplit("/", 1)[0]:
            (live(names[rule.name].removesuffix(".weight")), rule.part)
            for path, rule in rules.items()
            if path.endswith("/kernel") or path == f"params/{TOKEN_TABLE}/embedding"}


def _matches(hf_name: str, targets) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, hf_name) is not None
    return any(hf_name == t or hf_name.endswith("." + t) for t in targets or ())


def _check_supported(config: dict[str, Any], source: str) -> None:
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise ValueError(f"{source}: {key}={config[key]!r}: {what} is not supported by lmx")


def _pattern_of(pattern: dict | None, targets, names, kind) -> tuple[tuple[str, Any], ...]:
    r"""PEFT's rank_pattern / alpha_pattern on lmx module paths: for each target, the first key
    `k` (in the config's order) with `re.match(rf"(.*\.)?({k})$", HF module name)` (PEFT's
    `get_pattern_key`)."""
    chosen = {}
    for module in sorted(targets):
        for key, value in (pattern or {}).items():
            if re.match(rf"(.*\.)?({key})$", names[module][0]):
                chosen[module] = kind(value)
                break
    return tuple(sorted(chosen.items()))


def _lora_init(config: dict[str, Any], source: str) -> str:
    """lmx's `lora_init` of PEFT's `init_lora_weights`. PEFT re-runs PiSSA / OLoRA on the
    base it loads an adapter onto (the residual is not saved); lmx does the same. A random
    init (pissa_niter_K) would draw another residual on every load, and other base-changing
    inits are not built: both are refused by name."""
    value = config.get("init_lora_weights", True)
    if value in (True, False, "gaussian"):
        return "default"
    if value in ("pissa", "olora"):
        return value
    why = ("a randomized SVD: loading draws another residual base each time (convert it with "
           "PEFT's path_initial_model_for_weight_conversion)" if str(value).startswith("pissa")
           else "not supported by lmx")
    raise ValueError(f"{source}: init_lora_weights={value!r}: {why}")


def spec_of(config: dict[str, Any], names: dict[str, tuple], source: str) -> PeftSpec:
    """The PeftSpec of a PEFT `adapter_config.json` for a module whose Dense names are `names`."""
    _check_supported(config, source)
    kind = config.get("peft_type")
    if kind == "LORA":
        targets = frozenset(m for m, (hf, _) in names.items()
                            if _matches(hf, config["target_modules"]))
        if not targets:
            examples = sorted(v[0] for v in names.values())[:4]
            raise ValueError(f"{source}: target_modules={config['target_modules']!r} match no "
                             f"module of this model (e.g. {examples})")
        return PeftSpec(lora_rank=config["r"], lora_alpha=float(config["lora_alpha"]),
                        lora_dropout=config.get("lora_dropout", 0.0),
                        lora_rslora=bool(config.get("use_rslora")), lora_targets=targets,
                        lora_dora=bool(config.get("use_dora")),
                        lora_init=_lora_init(config, source),
                        lora_rank_pattern=_pattern_of(config.get("rank_pattern"), targets,
                                                      names, int),
                        lora_alpha_pattern=_pattern_of(config.get("alpha_pattern"), targets,
                                                       names, float))
    if kind == "IA3":
        targets = frozenset(m for m, (hf, _) in names.items()
                            if _matches(hf, config["target_modules"]))
        feedforward = frozenset(m for m in targets
                                if _matches(names[m][0], config.get("feedforward_modules")))
        return PeftSpec(ia3_targets=targets, ia3_feedforward=feedforward)
    if kind == "PROMPT_TUNING":
        return PeftSpec(num_prompt_tokens=config["num_virtual_tokens"], prompt_in_pooling=True)
    if kind == "P_TUNING":  # the folder holds the encoder's output only: a soft prompt
        return PeftSpec(num_prompt_tokens=config["num_virtual_tokens"], prompt_in_pooling=True)
    if kind == "PREFIX_TUNING":  # with prefix_projection too: the projected prefix is saved
        return PeftSpec(num_prefix_tokens=config["num_virtual_tokens"])
    if kind == "LN_TUNING":
        return PeftSpec(ln_tuning=True)
    raise ValueError(f"{source}: peft_type={kind!r} is not supported (LORA, IA3, "
                     "PROMPT_TUNING, P_TUNING, PREFIX_TUNING, LN_TUNING)")


def _from_json(field: str, value):
    """A PeftSpec field back from JSON: patterns are ((path, value), ...), lists frozensets."""
    if field.endswith("_pattern"):
        return tuple((path, v) for path, v in value)
    return frozenset(value) if isinstance(value, list) else value


def read(adapter_dir: pathlib.Path, family, module) -> tuple[PeftSpec, dict]:
    """(PeftSpec, adapter) of a PEFT or lmx adapter folder for this (PEFT-free) module."""
    if (adapter_dir / LMX_CONFIG).is_file():
        config = json.loads((adapter_dir / LMX_CONFIG).read_text())
        spec = PeftSpec(**{k: _from_json(k, v) for k, v in config["peft"].items()})
        return spec, {"format": "lmx", "tensors": core.read_tensors(adapter_dir, "adapter_model")}
    if not (adapter_dir / PEFT_CONFIG).is_file():
        raise FileNotFoundError(f"{adapter_dir}: neither {PEFT_CONFIG} nor {LMX_CONFIG}")
    config = json.loads((adapter_dir / PEFT_CONFIG).read_text())
    spec = spec_of(config, hf_modules(family, module), str(adapter_dir / PEFT_CONFIG))
    return spec, {"format": "peft", "config": config,
                  "tensors": core.read_tensors(adapter_dir, "adapter_model")}


def apply(variables: dict, module, family, adapter: dict, expected: dict, source: str) -> dict:
    """`variables` with the adapter's `peft` collection and its task-head tensors laid in."""
    tensors = dict(adapter["tensors"])
    if adapter["format"] == "lmx":
        flat = {p: np.asarray(v) for p, v in tensors.items()}
    else:
        flat = _peft_to_lmx(module, family, tensors, expected, source)
    wrong = [f"{p}: {np.shape(v)} vs {tuple(expected[p].shape)}" if p in expected else p
             for p, v in flat.items() if p not in expected or np.shape(v) != expected[p].shape]
    needed = [p for p in expected if p.startswith("peft/") and p not in flat]
    if wrong or needed:
        raise ValueError(f"{source} does not fit the model: unknown or mis-shaped {wrong}; "
                         f"missing {needed}")
    merged = traverse_util.unflatten_dict(
        {**traverse_util.flatten_dict(variables, sep="/"), **flat}, sep="/")
    if module.peft.lora_init != "default":  # as PEFT's load: the residual of this base
        merged["params"] = peft_init.initial_lora(merged, module.peft)[0]
    return merged


def _peft_to_lmx(module, family, tensors, expected, source) -> dict[str, np.ndarray]:
    spec, names = module.peft, hf_modules(family, module)
    tensors = {re.sub(r"^base_model\.(model\.)?", "", k): v for k, v in tensors.items()}
    if spec.ln_tuning:  # a tuned norm replaces the base's: load it where the base's goes
        tensors = {k.replace(".ln_tuning_layers.", "."): v for k, v in tensors.items()}
    flat: dict[str, np.ndarray] = {}
    if spec.num_prompt_tokens:
        flat["peft/embed/prompt"] = tensors.pop("prompt_embeddings")
    if spec.num_prefix_tokens:
        flat |= _prefix_to_lmx(tensors.pop("prompt_embeddings"), module.cfg)
    missing = _untargeted(spec, names, tensors)
    if missing:  # e.g. target_modules=["query"] saved from a shallower base
        raise ValueError(f"{source} does not fit the model (an adapter for another base?): "
                         f"its {PEFT_CONFIG} targets modules it holds no tensors for: {missing}")
    for lmx_module, (hf, part) in names.items():
        i, n = part or (0, 1)
        split = lambda x, axis: np.split(x, n, axis=axis)[i]
        if lmx_module == TOKEN_TABLE and spec.is_lora_target((TOKEN_TABLE,)):
            flat[f"peft/{lmx_module}/lora_a"] = tensors.pop(f"{hf}.lora_embedding_A").T
            flat[f"peft/{lmx_module}/lora_b"] = tensors.pop(f"{hf}.lora_embedding_B").T
            if f"{hf}.base_layer.weight" in tensors:  # PEFT saves the table too: as its load
                flat[f"params/{lmx_module}/embedding"] = tensors.pop(f"{hf}.base_layer.weight")
        elif spec.is_lora_target(tuple(lmx_module.split("/"))):
            flat[f"peft/{lmx_module}/lora_a"] = tensors[f"{hf}.lora_A.weight"].T
            flat[f"peft/{lmx_module}/lora_b"] = split(tensors[f"{hf}.lora_B.weight"], 0).T
            if spec.lora_dora:  # the norm is per output feature: a fused module splits
                flat[f"peft/{lmx_module}/lora_magnitude"] = split(
                    tensors[f"{hf}.lora_magnitude_vector"], 0)
        mode = spec.ia3_mode(tuple(lmx_module.split("/")))
        if mode:
            scale = tensors[f"{hf}.ia3_l"].reshape(-1)
            flat[f"peft/{lmx_module}/ia3"] = scale if mode == "input" else split(scale, 0)
    for name in {f"{hf}.{s}" for hf, _ in names.values() for s in ("lora_A.weight",
                                                                  "lora_B.weight", "ia3_l",
                                                                  "lora_magnitude_vector")}:
        tensors.pop(name, None)
    flat |= _heads_to_lmx(module, family, tensors, expected, source)
    return flat


def _untargeted(spec, names, tensors) -> list[str]:
    """The tensor names this model's targeted modules need that the adapter lacks."""
    wanted = set()
    for lmx_module, (hf, _) in names.items():
        path = tuple(lmx_module.split("/"))
        if spec.is_lora_target(path):
            wanted |= ({f"{hf}.lora_embedding_A", f"{hf}.lora_embedding_B"}
                       if lmx_module == TOKEN_TABLE else
                       {f"{hf}.lora_A.weight", f"{hf}.lora_B.weight"})
        if spec.ia3_mode(path):
            wanted.add(f"{hf}.ia3_l")
    return sorted(wanted - set(tensors))


def _prefix_to_lmx(embeddings: np.ndarray, cfg) -> dict[str, np.ndarray]:
    P = embeddings.shape[0]
    per_layer = embeddings.reshape(P, cfg.num_layers * 2, cfg.kv_heads, cfg.head_dim)
    flat = {}
    for i in range(cfg.num_layers):
        flat[f"peft/layer_{i}/attention/prefix_key"] = per_layer[:, 2 * i]
        flat[f"peft/layer_{i}/attention/prefix_value"] = per_layer[:, 2 * i + 1]
    return flat


def _heads_to_lmx(module, family, tensors, expected, source) -> dict[str, np.ndarray]:
    """`modules_to_save` tensors (full task-head weights) through the family's rules."""
    if not tensors:
        return {}
    hf_names = {v: v for v in tensors}
    rules = {p: r for p, r in family.tensor_map(module).items() if p in expected}
    tensors = dict(tensors)
    hook = getattr(family, "read_hook", None)
    if hook:
        tensors = hook(tensors, module)
    head_rules = {p: r for p, r in rules.items() if r.name in tensors}
    loaded = core.load(head_rules, tensors, expected, source)
    if tensors:
        raise ValueError(f"{source}: tensors lmx cannot place: {sorted(tensors)} (of "
                         f"{sorted(hf_names)})")
    return traverse_util.flatten_dict(loaded, sep="/")


def save(module, family, variables: dict, out_dir: pathlib.Path,
         base_model_name_or_path: str = "", initial: dict | None = None) -> pathlib.Path:
    """Writes `variables["peft"]` (+ trained task-head `variables["params"]`) as a PEFT folder
    when PEFT has the method, else in lmx's format (bottleneck adapters, mixed methods).
    `initial` (a PiSSA / OLoRA adapter's A, B at init, `lmx.peft_init.initial_lora`) converts it
    to plain LoRA for the original base (PEFT's `path_initial_model_for_weight_conversion`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = module.peft
    prompted = bool(spec.num_prompt_tokens)
    if initial is not None:
        peft_vars, spec = peft_init.as_plain_lora(variables["peft"], initial, spec)
        module, variables = module.clone(peft=spec), {**variables, "peft": peft_vars}
    elif spec.lora_init.startswith("pissa_niter"):
        raise ValueError(f"lora_init={spec.lora_init!r} is a randomized SVD: PEFT would draw "
                         "another residual base on load; pass initial= (the adapter at init) "
                         "to save it as plain LoRA")
    methods = [m for m, on in (("LORA", spec.lora_rank), ("IA3", spec.ia3_targets),
                               ("PROMPT_TUNING", prompted and not spec.prompt_encoder),
                               ("P_TUNING", prompted and spec.prompt_encoder),
                               ("PREFIX_TUNING", spec.num_prefix_tokens),
                               ("LN_TUNING", spec.ln_tuning),
                               ("ADAPTER", spec.adapter != "none")) if on]
    if len(methods) != 1 or methods[0] == "ADAPTER":
        return _save_lmx(spec, variables, out_dir)
    kind = methods[0]
    prompt_kind = kind in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")
    prefix = "base_model." if prompt_kind else "base_model.model."
    params = variables.get("params", {})
    if kind == "LN_TUNING":
        params, norms = _split_norms(params)
        tensors, config = _ln_tuning_to_peft(module, family, norms)
    else:
        tensors, config = _lmx_to_peft(module, family, variables.get("peft", {}), kind)
    if not prompt_kind:
        tensors = {prefix + name: array for name, array in tensors.items()}
    heads = _heads_to_peft(module, family, params)
    tensors |= {prefix + name: array for name, array in heads.items()}
    config |= dict(peft_type=kind, task_type=TASK_TYPES[module.task], inference_mode=True,
                   base_model_name_or_path=base_model_name_or_path or None,
                   modules_to_save=sorted({n.split(".")[0] for n in heads}) or None)
    core.write_tensors(tensors, out_dir / WEIGHTS)
    (out_dir / PEFT_CONFIG).write_text(json.dumps(config, indent=2))
    return out_dir


def _save_lmx(spec: PeftSpec, variables: dict, out_dir: pathlib.Path) -> pathlib.Path:
    flat = traverse_util.flatten_dict({k: variables[k] for k in ("peft", "params")
                                       if k in variables}, sep="/")
    core.write_tensors({p: np.asarray(v) for p, v in flat.items()}, out_dir / WEIGHTS,
                       metadata={"format": "lmx"})
    # the base's storage (QLoRA) is not the adapter's: an adapter loads on either base
    fields = {k: sorted(v) if isinstance(v, frozenset) else v
              for k, v in spec.__dict__.items() if k not in ("quantized", "quantization")}
    (out_dir / LMX_CONFIG).write_text(json.dumps({"peft": fields}, indent=2))
    return out_dir


def _lmx_to_peft(module, family, peft_vars: dict, kind: str) -> tuple[dict, dict]:
    spec, cfg = module.peft, module.cfg
    flat = {p: np.asarray(v, np.float32) for p, v in
            traverse_util.flatten_dict({"peft": peft_vars}, sep="/").items()}
    if kind in ("PROMPT_TUNING", "P_TUNING"):
        if module.task == "sequence_classification" and module.pooling == "cls" \
                and not spec.prompt_in_pooling:
            raise ValueError("PEFT pools a prompt-tuned classifier at the first virtual token; "
                             "this lmx model pools the real [CLS] (PeftSpec.prompt_in_pooling="
                             "False), so PEFT would compute something else: use lmx's format")
        config = dict(num_virtual_tokens=spec.num_prompt_tokens, token_dim=cfg.embed_dim,
                      num_transformer_submodules=1, num_attention_heads=cfg.num_heads,
                      num_layers=cfg.num_layers, prompt_tuning_init="RANDOM")
        if kind == "P_TUNING":  # PEFT saves (and reloads) the encoder's output
            prompt_PD = prompt_encoders.soft_prompt(
                prompt_encoders.encoder_weights(flat, "peft/embed/prompt_encoder"))
            config |= dict(encoder_reparameterization_type=spec.prompt_encoder.upper(),
                           encoder_hidden_size=spec.encoder_hidden_size or cfg.embed_dim,
                           encoder_num_layers=2, encoder_dropout=0.0)
            config.pop("prompt_tuning_init")
            return {"prompt_embeddings": np.asarray(prompt_PD, np.float32)}, config
        return {"prompt_embeddings": flat["peft/embed/prompt"]}, config
    if kind == "PREFIX_TUNING":
        P, width = spec.num_prefix_tokens, cfg.kv_heads * cfg.head_dim
        if spec.prefix_projection:  # PEFT saves (and reloads) the projection's output
            prefix_PX = np.asarray(prompt_encoders.projected_prefix(
                prompt_encoders.encoder_weights(flat, "peft/prefix_encoder")), np.float32)
        else:
            keys = [np.stack([flat[f"peft/layer_{i}/attention/prefix_{w}"]
                              for w in ("key", "value")], axis=1)
                    for i in range(cfg.num_layers)]  # (P, 2, G, K) each
            prefix_PX = np.concatenate(keys, axis=1).reshape(P, -1)
        config = dict(num_virtual_tokens=P, token_dim=width,
                      num_transformer_submodules=1, num_attention_heads=cfg.kv_heads,
                      num_layers=cfg.num_layers,
                      encoder_hidden_size=(spec.encoder_hidden_size or width)
                      if spec.prefix_projection else cfg.embed_dim,
                      prefix_projection=spec.prefix_projection)
        return {"prompt_embeddings": prefix_PX}, config
    return _dense_to_peft(module, family, flat, kind)


def _dense_to_peft(module, family, flat: dict, kind: str) -> tuple[dict, dict]:
    """LoRA / IA3 tensors per HF module; IA3 on a fused module fills untargeted parts with 1."""
    spec, tensors, targets, feedforward, hf_names = module.peft, {}, set(), set(), {}
    fused: dict[str, dict[int, np.ndarray]] = {}
    for lmx_module, (hf, part) in hf_modules(family, module).items():
        path = tuple(lmx_module.split("/"))
        if kind == "LORA" and spec.is_lora_target(path):
            if part is not None:
                raise ValueError(f"{lmx_module}: LoRA on a part of the fused HF module {hf} is "
                                 "not one PEFT LoRA; save it in lmx's format")
            names = (("lora_embedding_A", "lora_embedding_B") if lmx_module == TOKEN_TABLE
                     else ("lora_A.weight", "lora_B.weight"))
            tensors[f"{hf}.{names[0]}"] = flat[f"peft/{lmx_module}/lora_a"].T
            tensors[f"{hf}.{names[1]}"] = flat[f"peft/{lmx_module}/lora_b"].T
            if spec.lora_dora:
                tensors[f"{hf}.lora_magnitude_vector"] = flat[f"peft/{lmx_module}/lora_magnitude"]
            targets.add(hf)
            hf_names[lmx_module] = hf
        mode = spec.ia3_mode(path) if kind == "IA3" else ""
        if mode:
            scale = flat[f"peft/{lmx_module}/ia3"]
            targets.add(hf)
            if mode == "input":
                feedforward.add(hf)
                tensors[f"{hf}.ia3_l"] = scale[None, :]
            elif part is None:
                tensors[f"{hf}.ia3_l"] = scale[:, None]
            else:
                fused.setdefault(hf, {})[part[0]] = (scale, part[1])
    for hf, pieces in fused.items():
        n, width = next(iter(pieces.values()))[1], len(next(iter(pieces.values()))[0])
        parts = [pieces[i][0] if i in pieces else np.ones(width, np.float32) for i in range(n)]
        tensors[f"{hf}.ia3_l"] = np.concatenate(parts)[:, None]
    if kind == "LORA":
        config = dict(r=spec.lora_rank, lora_alpha=spec.lora_alpha,
                      lora_dropout=spec.lora_dropout, use_rslora=spec.lora_rslora,
                      target_modules=sorted(targets), bias="none", use_dora=spec.lora_dora,
                      init_lora_weights=True if spec.lora_init == "default" else spec.lora_init,
                      # full module names: PEFT's `(.*\.)?(key)$` matches each only itself
                      rank_pattern={hf_names[m]: r for m, r in spec.lora_rank_pattern},
                      alpha_pattern={hf_names[m]: a for m, a in spec.lora_alpha_pattern})
    else:
        config = dict(target_modules=sorted(targets), feedforward_modules=sorted(feedforward))
    config["fan_in_fan_out"] = getattr(family, "FAN_IN_FAN_OUT", False)
    return tensors, config


def _split_norms(params: dict) -> tuple[dict, dict]:
    """(the rest, the norm gains / biases outside the task head) of trained `params`."""
    flat = traverse_util.flatten_dict({"params": params}, sep="/")
    norm = {p for p in flat if re.fullmatch(ALL_NORMS, p) and not p.startswith("params/head/")}
    split = lambda keep: traverse_util.unflatten_dict(
        {p.split("/", 1)[1]: v for p, v in flat.items() if (p in norm) == keep}, sep="/")
    return split(False), split(True)


def _ln_tuning_to_peft(module, family, norms: dict) -> tuple[dict, dict]:
    """PEFT LN tuning: each tuned norm as `<HF module>.ln_tuning_layers.<weight | bias>`."""
    if not norms:
        raise ValueError("an LN tuning adapter (PeftSpec.ln_tuning) saves the tuned norms: pass "
                         f"them in variables['params'] (the paths {ALL_NORMS!r} selects)")
    tensors = _to_hf_names(module, family, norms)
    renamed = {f"{n.rsplit('.', 1)[0]}.ln_tuning_layers.{n.rsplit('.', 1)[1]}": a
               for n, a in tensors.items()}
    return renamed, dict(target_modules=sorted({n.rsplit(".", 1)[0] for n in tensors}))


def _to_hf_names(module, family, params: dict) -> dict[str, np.ndarray]:
    """Base-model `params` under the HF names the family's rules give them."""
    rules = {p: r for p, r in family.tensor_map(module).items()
             if p in traverse_util.flatten_dict({"params": params}, sep="/")}
    tensors = core.save(rules, {"params": params})
    hook = getattr(family, "write_hook", None)
    return hook(tensors, module) if hook and module.task != "hidden" else tensors


def _heads_to_peft(module, family, params: dict) -> dict[str, np.ndarray]:
    """Trained task-head parameters as PEFT `modules_to_save` tensors; anything else trained
    in the base cannot go into a PEFT adapter and is an error."""
    flat = traverse_util.flatten_dict({"params": params}, sep="/") if params else {}
    if not flat:
        return {}
    rules = {p: r for p, r in family.tensor_map(module).items() if p in flat}
    tensors = _to_hf_names(module, family, params)
    outside = sorted(n for n in tensors if n.split(".")[0] not in HEAD_MODULES)
    unmapped = sorted(set(flat) - set(rules))
    if outside or unmapped:
        raise ValueError(f"trained base parameters {outside + unmapped} are not a PEFT task head "
                         f"({HEAD_MODULES}); save in lmx's format or merge them")
    return tensors
