"""Named adapters in HF PEFT's multi-adapter folder layout: one sub-folder per adapter name.

`peft.PeftModel.save_pretrained` writes every adapter but "default" to `DIR/<name>/`, and
`PeftModel.from_pretrained(base, DIR/<name>, adapter_name=<name>)` / `load_adapter(DIR/<name>,
adapter_name=<name>)` read them back; lmx writes and reads the same layout, one adapter
(`lmx.adapters.mixed.Adapter`, its task head included) at a time.
"""
from __future__ import annotations

import json
import pathlib

import flax.linen as nn

from lmx.adapters.mixed import Adapter, from_variables, to_variables
from lmx.peft import NO_PEFT


def save(module: nn.Module, adapter: Adapter, out_dir: str | pathlib.Path, name: str,
         base_model_name_or_path: str = "") -> pathlib.Path:
    """Writes `adapter` to `out_dir/name/` (a PEFT folder; lmx's format for what PEFT lacks);
    `module` is the base module (its `num_labels` are the adapter head's)."""
    from lmx.hf import save_adapter  # the front door; late, as lmx.hf may import this
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"adapter name {name!r}: a plain folder name is needed")
    spec, trained = to_variables(adapter)
    return save_adapter(module.clone(peft=spec), trained, pathlib.Path(out_dir) / name,
                        base_model_name_or_path)


def load(base: str | pathlib.Path, out_dir: str | pathlib.Path, name: str, **kwargs
         ) -> tuple[nn.Module, dict, Adapter]:
    """(base module, base variables, the adapter) of `out_dir/name/` on the HF base `base`
    (`kwargs` as for `lmx.hf.from_pretrained`: task, num_labels, ...)."""
    from lmx.hf import from_pretrained
    folder = pathlib.Path(out_dir) / name
    if not folder.is_dir():
        have = sorted(p.name for p in pathlib.Path(out_dir).iterdir() if p.is_dir()) \
            if pathlib.Path(out_dir).is_dir() else []
        raise FileNotFoundError(f"{folder}: no adapter named {name!r} (have {have})")
    module, variables = from_pretrained(base, adapter=folder, **kwargs)
    base_variables = {k: v for k, v in variables.items() if k != "peft"}
    trained = {"peft": variables.get("peft", {})}
    config = folder / "adapter_config.json"
    if config.is_file() and json.loads(config.read_text()).get("modules_to_save"):
        params = dict(variables["params"])  # the adapter's own task head
        trained["params"] = {"head": params.pop("head")}
        base_variables["params"] = params
    return module.clone(peft=NO_PEFT), base_variables, from_variables(module.peft, trained)
