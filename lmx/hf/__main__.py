"""Conversions between HuggingFace folders, PEFT adapters and lmx runs.

  python -m lmx.hf convert --src SRC --out DST [--task T] [--num_labels N] [--adapter DIR [--merge]]
      a HF folder / hub id (+ PEFT or lmx adapter) -> a HF folder written by lmx
      (with --merge, LoRA folded into the weights; else the adapter beside it in DST/adapter)
  python -m lmx.hf export-adapter --workdir RUN --out DST [--merge]
      an lmx training run -> a PEFT adapter folder (or, with --merge, a full HF model)

DST also receives the source's tokenizer files, so it is a complete folder.
"""
from __future__ import annotations

import dataclasses
import pathlib
import shutil
import types
from collections.abc import Sequence

import numpy as np
from absl import app, flags
from flax import traverse_util

import lmx.hf
from lmx import peft as peft_lib
from lmx.train import optim

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "tokenizer.model", "merges.txt", "vocab.json")


def copy_tokenizer(src: pathlib.Path, dst: pathlib.Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def _save(module, variables, dst: pathlib.Path, merge: bool, base_name: str = "",
          trained: dict | None = None) -> None:
    """Merged: one HF model. Unmerged: the base in DST and the adapter in DST/adapter."""
    peft_vars = variables.get(peft_lib.PEFT)
    if peft_vars and merge:
        if module.peft.num_prompt_tokens or module.peft.num_prefix_tokens or \
                module.peft.adapter != "none" or module.peft.ia3_targets:
            raise SystemExit("--merge folds LoRA only; this model has other PEFT modules")
        variables, spec = peft_lib.merge_lora(variables, module.peft)
        module = module.clone(peft=spec)
        peft_vars = None
    base = {k: v for k, v in variables.items() if k != peft_lib.PEFT}
    lmx.hf.save_pretrained(module.clone(peft=peft_lib.NO_PEFT), base, dst)
    if peft_vars and module.peft.lora_init != "default":  # DST holds PiSSA / OLoRA's residual:
        # the adapter is plain LoRA on it (PEFT would decompose the residual again on load)
        module = module.clone(peft=dataclasses.replace(module.peft, lora_init="default"))
    if peft_vars:
        adapter = trained if trained is not None else {peft_lib.PEFT: peft_vars}
        lmx.hf.save_adapter(module, adapter, dst / "adapter", base_name)


def convert(args) -> None:
    module, variables = lmx.hf.from_pretrained(args.src, task=args.task,
                                               num_labels=args.num_labels, adapter=args.adapter)
    dst = pathlib.Path(args.dst)
    _save(module, variables, dst, args.merge, str(args.src))
    from lmx.hf import pretrained  # noqa: PLC0415
    copied = copy_tokenizer(pretrained.resolve_model_dir(str(args.src)), dst)
    print(f"wrote {dst} ({module.task}; tokenizer files: {copied or 'none'})")


def trained_parts(run) -> dict:
    """The leaves the run trained (its `config.peft.trainable` patterns, as the builder
    resolved them), as a nested dict."""
    from lmx.train import build  # noqa: PLC0415
    labels = build.trainable_labels(run.config, run.variables)
    flat_labels = traverse_util.flatten_dict(labels)
    flat = traverse_util.flatten_dict(build.learnable(run.variables))
    return traverse_util.unflatten_dict({k: np.asarray(v) for k, v in flat.items()
                                         if flat_labels[k] == optim.TRAIN})


def export_adapter(args) -> None:
    from lmx.explain.run import load_run  # noqa: PLC0415  (rebuilds a run from its workdir)
    run = load_run(args.workdir)
    dst = pathlib.Path(args.dst)
    trained = trained_parts(run)
    if args.merge:
        _save(run.module, run.variables, dst, merge=True)
    elif peft_lib.PEFT not in trained and not run.module.peft.ln_tuning:  # LN tuning: params
        raise SystemExit(f"{args.workdir} trained no PEFT parameters (method "
                         f"{run.config.peft.method!r}); use --merge to write the full model")
    else:
        lmx.hf.save_adapter(run.module, trained, dst, run.config.model.pretrained)
    copied = copy_tokenizer(pathlib.Path(run.model_dir), dst) if run.model_dir else []
    print(f"wrote {dst} from {args.workdir} (tokenizer files: {copied or 'none'})")


# command -> (function, flags it needs, flags it may take); any other flag given is refused.
COMMANDS = {"convert": (convert, ("src", "out"), ("task", "num_labels", "adapter", "merge")),
            "export-adapter": (export_adapter, ("workdir", "out"), ("merge",))}
FLAG_NAMES = ("src", "workdir", "out", "task", "num_labels", "adapter", "merge")


def define_flags(flag_values: flags.FlagValues) -> flags.FlagValues:
    """The CLI's flags, defined on absl's FLAGS only when lmx.hf runs as `__main__`."""
    for name, help_text in (("src", "convert: a HF folder or hub id."),
                            ("workdir", "export-adapter: an lmx training run's folder."),
                            ("out", "The folder to write (DST)."),
                            ("task", "convert: the lmx task; default from `architectures`."),
                            ("adapter", "convert: a PEFT adapter folder to load.")):
        flags.DEFINE_string(name, None, help_text, flag_values=flag_values)
    flags.DEFINE_integer("num_labels", None, "convert: classification labels; default from "
                         "the config's id2label.", flag_values=flag_values)
    flags.DEFINE_bool("merge", False, "Fold LoRA into the weights: one full HF model.",
                      flag_values=flag_values)
    return flag_values


def run_cli(argv: Sequence[str], flag_values: flags.FlagValues) -> None:
    """Runs the command; argv is what absl leaves: [program, command]."""
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"expected one command, {' or '.join(COMMANDS)}; "
                             f"got {list(argv[1:])}")
    function, needed, optional = COMMANDS[argv[1]]
    missing = [f"--{n}" for n in needed if flag_values[n].value is None]
    unused = [f"--{n}" for n in FLAG_NAMES
              if flag_values[n].present and n not in needed + optional]
    if missing or unused:
        raise app.UsageError(f"{argv[1]}: " + "; ".join(
            ([f"needs {', '.join(missing)}"] if missing else [])
            + ([f"does not take {', '.join(unused)}"] if unused else [])))
    values = {n: flag_values[n].value for n in FLAG_NAMES}
    function(types.SimpleNamespace(dst=values.pop("out"), **values))


def main(argv: Sequence[str]) -> None:
    """`python -m lmx.hf ARGV...` in-process, its flags on a private FlagValues."""
    flag_values = define_flags(flags.FlagValues())
    run_cli(flag_values(["lmx.hf", *argv]), flag_values)


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(lambda argv: run_cli(argv, flags.FLAGS))
