"""Faithfulness of lmx.explain on a trained run: explainer x metric table, IG completeness.

Command (the BANKING77 LoRA run of the README; 2-core CPU, about 10 minutes for 64 examples):
  python bench/explain_faithfulness.py --workdir runs/banking77_lora --num_examples 64
Writes RUN/explain/faithfulness.json and faithfulness.md, and the HTML report for the first
8 examples (RUN/explain/index.html).
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from tqdm.auto import tqdm

from lmx import tasks
from lmx.explain import faithfulness, pipeline, run as run_lib, text
from lmx.explain.target import TextLogits, candidates, embed, text_context

_WORKDIR = flags.DEFINE_string("workdir", "runs/banking77_lora", "A trained text run.")
_NUM = flags.DEFINE_integer("num_examples", 64, "Validation examples scored.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Examples per explanation batch.")
_IG_STEPS = flags.DEFINE_integer("ig_steps", 64, "Integrated-gradients steps.")
_METHODS = flags.DEFINE_list("methods", ",".join(text.METHODS), "Explainers to score.")
COLUMNS = ("comprehensiveness", "sufficiency", "randomisation_spearman", "seconds")


def _batches(run, num, size):
    config = run.config
    examples = tasks.get(config).load(config, _WORKDIR.value).validation
    vocabulary = run.vocabulary()
    pad_id, _ = run.pad_and_mask_ids()
    for start in range(0, num, size):
        batch = examples.batch(np.arange(start, min(start + size, num)), size, 16, pad_id)
        real = batch.pop("weights") > 0
        batch = {k: v[real] for k, v in batch.items() if k != "labels"}
        batch["candidate"] = candidates(batch["ids"], batch["mask"], vocabulary)
        yield batch


def main(_):
    run = run_lib.load_run(_WORKDIR.value)
    pad_id, mask_id = run.pad_and_mask_ids()
    options = text.Options(ig_steps=_IG_STEPS.value, pad_id=pad_id, mask_id=mask_id)
    T = run.config.data.max_length
    shuffled = faithfulness.reinit_top_layers(run.module, run.variables, 2, jax.random.key(1),
                                              jnp.zeros((1, T), jnp.int32))
    per = {m: {c: [] for c in COLUMNS} for m in _METHODS.value}
    gaps, deltas, first = [], [], None
    for i, batch in enumerate(tqdm(list(_batches(run, _NUM.value, _BATCH.value)), desc="batches")):
        first = first or batch
        target = jnp.asarray(text.predict(run.module, run.variables, batch)[0], jnp.int32)
        context = text_context(run.variables, batch)
        x = embed(run.variables, context["ids"])
        candidate = jnp.asarray(batch["candidate"])
        for method in _METHODS.value:
            tick = time.perf_counter()
            scores, extras = text.scores(method, run.module, run.variables, batch, target,
                                         options, jax.random.key(i))
            per[method]["seconds"].append([time.perf_counter() - tick])
            comp, suff = faithfulness.aopc_jit(TextLogits(run.module), context, x, target,
                                               jnp.asarray(scores), candidate)
            other, _ = text.scores(method, run.module, shuffled, batch, target, options,
                                   jax.random.key(i))
            rho = faithfulness.spearman(jnp.asarray(scores), jnp.asarray(other), candidate)
            per[method]["comprehensiveness"].append(np.asarray(comp))
            per[method]["sufficiency"].append(np.asarray(suff))
            per[method]["randomisation_spearman"].append(np.asarray(rho))
            if method == "integrated_gradients":
                gaps.append(extras["gap"])
                deltas.append(extras["delta"])
    table = {m: faithfulness.summarise({c: np.concatenate(v[c]) for c in COLUMNS})
             for m, v in per.items()}
    rel = np.abs(np.concatenate(gaps)) / np.abs(np.concatenate(deltas)) if gaps else np.zeros(1)
    completeness = {"ig_steps": _IG_STEPS.value, "rule": options.ig_rule,
                    "baseline": options.baseline, "max_relative_gap": float(rel.max()),
                    "mean_relative_gap": float(rel.mean()), "examples": int(rel.size)}
    out_dir = os.path.join(_WORKDIR.value, "explain")
    os.makedirs(out_dir, exist_ok=True)
    markdown = faithfulness.table_markdown(table, COLUMNS)
    with open(os.path.join(out_dir, "faithfulness.json"), "w") as f:
        json.dump({"table": table, "ig_completeness": completeness,
                   "num_examples": _NUM.value}, f, indent=1)
    with open(os.path.join(out_dir, "faithfulness.md"), "w") as f:
        f.write(markdown + "\n")
    report = pipeline.explain_texts(run, {k: v[:8] for k, v in first.items()}, out_dir,
                                    options=options)
    print(markdown)
    print(json.dumps(completeness, indent=1))
    print("report:", report["html"])


if __name__ == "__main__":
    app.run(main)
