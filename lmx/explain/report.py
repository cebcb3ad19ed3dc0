"""Outputs a person opens: a self-contained HTML page (token heatmaps with the prediction,
probability and method; base vs adapted side by side; embedded PNGs) and image overlays.

Axis legend: B batch, H/W image height/width, C channels.
"""
from __future__ import annotations

import base64
import html
import os

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top}th{background:#f3f3f3}.tok{padding:1px 2px;margin:0 1px;border-radius:3px;
line-height:1.9}.ex{margin:1.2em 0;padding:.6em;border:1px solid #ddd;border-radius:6px}
.meta{color:#555;font-size:90%}code{background:#f6f6f6;padding:0 3px}
"""


def heat_spans(words: list[tuple[str, float]], scale: float) -> str:
    """Words as spans: red = supports the explained class, blue = against; alpha = |score|."""
    spans = []
    for word, score in words:
        alpha = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
        color = "220,40,40" if score >= 0 else "40,90,220"
        spans.append(f'<span class="tok" style="background:rgba({color},{alpha:.3f})" '
                     f'title="{score:+.4g}">{html.escape(word)}</span>')
    return " ".join(spans)


def png_tag(path: str, width: int = 900) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img width="{width}" src="data:image/png;base64,{data}" alt="{html.escape(os.path.basename(path))}">'


def _side(side: dict | None, method: str) -> str:
    if side is None:
        return "<i>no PEFT: nothing to switch off</i>"
    words = side["methods"][method]
    scale = max([abs(s) for _, s in words] + [1e-12])
    return heat_spans(words, scale)


def example_block(i: int, record: dict) -> str:
    """One example: rows = methods, columns = adapted | base (PEFT off) | adapted - base."""
    adapted, base = record["adapted"], record.get("base")
    header = (f'<div class="ex"><b>#{i}</b> {html.escape(record["text"])}<br>'
              f'<span class="meta">adapted: <b>{html.escape(adapted["label"])}</b> '
              f'p={adapted["prob"]:.3f}')
    if base is not None:
        header += f' &middot; base (PEFT off): <b>{html.escape(base["label"])}</b> p={base["prob"]:.3f}'
    if "ig_gap" in record:
        header += f' &middot; IG completeness gap {record["ig_gap"]:+.2e} (of {record["ig_delta"]:+.3f})'
    header += f' &middot; explained class: <b>{html.escape(adapted["label"])}</b></span>'
    rows = ["<table><tr><th>method</th><th>adapted</th><th>base (PEFT off)</th>"
            "<th>adapted &minus; base</th></tr>"]
    for method in adapted["methods"]:
        diff = "" if base is None else heat_spans(*_diff(adapted, base, method))
        rows.append(f"<tr><td>{method}</td><td>{_side(adapted, method)}</td>"
                    f"<td>{_side(base, method)}</td><td>{diff}</td></tr>")
    return header + "".join(rows) + "</table></div>"


def _diff(adapted: dict, base: dict, method: str):
    a, b = adapted["methods"][method], base["methods"][method]
    scale_a = max([abs(s) for _, s in a] + [1e-12])
    scale_b = max([abs(s) for _, s in b] + [1e-12])
    words = [(w, sa / scale_a - sb / scale_b) for (w, sa), (_, sb) in zip(a, b)]
    return words, 1.0


def page(title: str, sections: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            + "\n".join(sections) + "</body></html>")


def adapter_section(rows: list[dict], magnitudes: dict[str, float], moved: list, png: str) -> str:
    parts = ["<h2>What did the adapter change</h2>",
             "<p>Per layer and module: ||(alpha/r) A B||<sub>F</sub> / ||W||<sub>F</sub>, the "
             "update's effective rank and top singular value; output magnitude = "
             "||update|| / ||base output|| on this page's inputs.</p>"]
    if png:
        parts.append(png_tag(png))
    parts.append("<p>Layers that moved most (summed relative norm): " + ", ".join(
        f"<code>{html.escape(k)}</code> {v:.4f}" for k, v in moved[:6]) + "</p>")
    table = ["<table><tr><th>module</th><th>||&Delta;W||/||W||</th><th>effective rank</th>"
             "<th>top singular values</th><th>output magnitude</th></tr>"]
    for r in rows:
        svs = ", ".join(f"{s:.3g}" for s in r["singular_values"][:4])
        mag = magnitudes.get(r["module"])
        table.append(f"<tr><td>{html.escape(r['module'])}</td><td>{r['relative_norm']:.4f}</td>"
                     f"<td>{r['effective_rank']:.2f}</td><td>{svs}</td>"
                     f"<td>{'' if mag is None else f'{mag:.4f}'}</td></tr>")
    for module, mag in magnitudes.items():
        if not any(r["module"] == module for r in rows):
            table.append(f"<tr><td>{html.escape(module)}</td><td></td><td></td><td></td>"
                         f"<td>{mag:.4f}</td></tr>")
    return "".join(parts) + "".join(table) + "</table>"


def image_overlay(image_HWC: np.ndarray, maps: dict[str, np.ndarray], caption: str,
                  path: str) -> str:
    """The image and each heatmap (H, W) over it, side by side, one PNG."""
    image = np.asarray(image_HWC, np.float32)
    image = (image - image.min()) / max(float(image.max() - image.min()), 1e-12)
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3 * (len(maps) + 1), 3.2))
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    for ax, (name, heat_HW) in zip(axes[1:], maps.items()):
        ax.imshow(image)
        ax.imshow(np.asarray(heat_HW), cmap="jet", alpha=0.5)
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
