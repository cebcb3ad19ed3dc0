"""Explain a batch and write RUN/explain/: index.html, PNGs and summary.json.

Axis legend: B batch, T tokens, H/W/C image axes, L labels.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lmx.explain import adapter_diff, attributions as attr, report, text
from lmx.explain.gradcam import grad_cam_jit
from lmx.explain.run import Run, token_strings
from lmx.explain.target import ImageLogits, to_words

REPORT_METHODS = ("integrated_gradients", "grad_x_input", "occlusion", "rollout")


def _side(run: Run, module, variables, batch, target_B, methods, options) -> dict:
    predicted_B, prob_B = text.predict(module, variables, batch)
    out = {"predicted": predicted_B, "prob": prob_B, "scores": {}, "extras": {}}
    for method in tqdm(methods, desc="explain", leave=False):
        out["scores"][method], out["extras"][method] = text.scores(
            method, module, variables, batch, target_B, options)
    return out


def _record(run: Run, batch, b: int, side: dict, target: int) -> dict:
    length = int(np.asarray(batch["mask"][b]).sum())
    tokens = token_strings(run, np.asarray(batch["ids"][b, :length]))
    keep = np.asarray(batch["candidate"][b, :length]).astype(bool)
    methods = {}
    for method, scores_BT in side["scores"].items():
        words = to_words([t for t, k in zip(tokens, keep) if k], scores_BT[b, :length][keep])
        methods[method] = words
    # The explained class is the adapted prediction on both sides; its probability is shown.
    return {"label": run.label_names[int(side["predicted"][b])],
            "prob": float(side["prob"][b]), "explained": run.label_names[target],
            "methods": methods}


def explain_texts(run: Run, batch: dict, out_dir: str, texts: list[str] | None = None,
                  methods=REPORT_METHODS, options: text.Options | None = None) -> dict:
    """Explains the adapted model's predictions (and the same classes with PEFT off)."""
    pad_id, mask_id = run.pad_and_mask_ids()
    options = options or text.Options(pad_id=pad_id, mask_id=mask_id)
    os.makedirs(out_dir, exist_ok=True)
    predicted_B, _ = text.predict(run.module, run.variables, batch)
    adapted = _side(run, run.module, run.variables, batch, predicted_B, methods, options)
    base = run.base()
    base_side = None if base is None else _side(run, *base, batch, predicted_B, methods, options)
    records = []
    for b in range(len(predicted_B)):
        length = int(np.asarray(batch["mask"][b]).sum())
        shown = texts[b] if texts else " ".join(token_strings(run, batch["ids"][b, :length]))
        record = {"text": shown,
                  "adapted": _record(run, batch, b, adapted, int(predicted_B[b]))}
        if base_side is not None:
            record["base"] = _record(run, batch, b, base_side, int(predicted_B[b]))
        if "integrated_gradients" in methods:
            extras = adapted["extras"]["integrated_gradients"]
            record["ig_gap"], record["ig_delta"] = float(extras["gap"][b]), float(extras["delta"][b])
        records.append(record)
    sections = [f"<p class='meta'>run: <code>{run.config.model.pretrained or run.config.model.size}"
                f"</code>, PEFT <code>{run.config.peft.method}</code>; methods: "
                f"{', '.join(methods)}; IG: {options.ig_steps} steps, {options.ig_rule}, "
                f"{options.baseline} baseline.</p>"]
    sections += [report.example_block(i, r) for i, r in enumerate(records)]
    summary = {"records": records}
    if base is not None:
        summary["adapter"] = _adapter(run, batch, out_dir, sections)
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(report.page("lmx.explain: why did the model decide", sections))
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return {"html": path, **summary}


def _adapter(run: Run, batch: dict, out_dir: str, sections: list[str]) -> dict:
    rows = adapter_diff.lora_update_stats(run.variables, run.module.peft)
    magnitudes = adapter_diff.output_magnitudes(
        run.module, run.variables, batch["ids"], batch["mask"], batch["token_types"])
    moved = adapter_diff.layers_moved_most(rows) if rows else sorted(
        magnitudes.items(), key=lambda kv: -kv[1])
    png = ""
    if rows or magnitudes:
        png = adapter_diff.plot_update_norms(rows, magnitudes,
                                             os.path.join(out_dir, "update_norms.png"))
    sections.append(report.adapter_section(rows, magnitudes, moved, png))
    return {"lora": rows, "output_magnitudes": magnitudes, "moved_most": moved, "png": png}


def explain_images(run: Run, images_BHWC: np.ndarray, out_dir: str, ig_steps: int = 32) -> dict:
    """Grad-CAM, integrated gradients (black baseline) and saliency overlays, one PNG each."""
    os.makedirs(out_dir, exist_ok=True)
    images_BHWC = jnp.asarray(images_BHWC, jnp.float32)
    logits_BL = ImageLogits(run.module)({"variables": run.variables}, images_BHWC)
    probs_BL = np.asarray(jax.nn.softmax(logits_BL, -1))
    target_B = jnp.asarray(probs_BL.argmax(-1), jnp.int32)
    cam = grad_cam_jit(run.module, run.variables, images_BHWC, target_B)
    context, logit_fn = {"variables": run.variables}, ImageLogits(run.module)
    ig = attr.jitted(attr.integrated_gradients, steps=ig_steps)(
        logit_fn, context, images_BHWC, target_B, jnp.full_like(images_BHWC, images_BHWC.min()))
    sal = attr.jitted(attr.saliency)(logit_fn, context, images_BHWC, target_B)
    sections, pngs = [], []
    for b in tqdm(range(images_BHWC.shape[0]), desc="overlays", leave=False):
        label = run.label_names[int(target_B[b])]
        maps = {"Grad-CAM": cam.heatmap_BHW[b], "IG |sum_c|": np.abs(ig.attribution[b].sum(-1)),
                "saliency max_c|g|": np.abs(sal[b]).max(-1)}
        png = report.image_overlay(np.asarray(images_BHWC[b]), maps,
                                   f"predicted {label} p={probs_BL[b].max():.3f}; IG gap "
                                   f"{float(ig.gap_B[b]):+.2e}",
                                   os.path.join(out_dir, f"image_{b}.png"))
        pngs.append(png)
        sections.append(f"<div class='ex'>{report.png_tag(png, 600)}</div>")
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(report.page("lmx.explain: images", sections))
    return {"html": path, "pngs": pngs, "ig_gap": np.asarray(ig.gap_B).tolist(),
            "predicted": np.asarray(target_B).tolist()}


def explain_run_end(trainer, workdir: str) -> str:
    """The experiment hook: explain `config.explain.num_examples` validation examples."""
    from lmx.explain.run import from_trainer, validation_inputs  # noqa: PLC0415
    run = from_trainer(trainer)
    batch = validation_inputs(trainer, trainer.config.explain.num_examples)
    out_dir = os.path.join(workdir, "explain")
    if "images" in batch:
        return explain_images(run, batch["images"], out_dir)["html"]
    pad_id, mask_id = run.pad_and_mask_ids()
    options = text.Options(ig_steps=trainer.config.explain.ig_steps, pad_id=pad_id,
                           mask_id=mask_id, baseline=trainer.config.explain.baseline)
    return explain_texts(run, batch, out_dir, options=options)["html"]
