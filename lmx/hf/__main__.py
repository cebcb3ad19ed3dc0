"""Conversions between HuggingFace folders, PEFT adapters and lmx runs.

  python -m lmx.hf convert SRC DST [--task T] [--num-labels N] [--adapter DIR [--merge]]
      a HF folder / hub id (+ PEFT or lmx adapter) -> a HF folder written by lmx
      (with --merge, LoRA folded into the weights; else the adapter beside it in DST/adapter)
  python -m lmx.hf export-adapter WORKDIR DST [--merge]
      an lmx training run -> a PEFT adapter folder (or, with --merge, a full HF model)

DST also receives the source's tokenizer files, so it is a complete folder.
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import sys

import numpy as np
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
    elif peft_lib.PEFT not in trained:
        raise SystemExit(f"{args.workdir} trained no PEFT parameters (method "
                         f"{run.config.peft.method!r}); use --merge to write the full model")
    else:
        lmx.hf.save_adapter(run.module, trained, dst, run.config.model.pretrained)
    copied = copy_tokenizer(pathlib.Path(run.model_dir), dst) if run.model_dir else []
    print(f"wrote {dst} from {args.workdir} (tokenizer files: {copied or 'none'})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmx.hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("convert", help="HF folder (+ adapter) -> HF folder")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--task", default=None)
    c.add_argument("--num-labels", type=int, default=None)
    c.add_argument("--adapter", default=None)
    c.add_argument("--merge", action="store_true")
    e = commands.add_parser("export-adapter", help="lmx run -> PEFT adapter (or merged model)")
    e.add_argument("workdir")
    e.add_argument("dst")
    e.add_argument("--merge", action="store_true")
    args = parser.parse_args(argv)
    {"convert": convert, "export-adapter": export_adapter}[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
