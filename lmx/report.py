"""What a run leaves in its workdir: metrics.jsonl, TensorBoard events, a curve PNG, results.json."""
from __future__ import annotations

import json
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402


class MetricWriter:
    """Appends `{"step": s, "split": ..., name: value}` lines and mirrors them to TensorBoard."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        for name, value in values.items():
            self.tensorboard.add_scalar(f"{split}/{name}", value, step)
        self.tensorboard.flush()

    def close(self) -> None:
        self.tensorboard.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(workdir: str, out_name: str = "curves.png") -> str:
    """Training loss and validation metrics against step, one panel each."""
    rows = read_metrics(workdir)
    train = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "validation"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if valid:
        left.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-",
                  label="validation loss")
        for name in ("accuracy", "macro_f1"):
            right.plot([r["step"] for r in valid], [r[name] for r in valid], "o-", label=name)
    left.set(xlabel="step", ylabel="loss", title="loss")
    right.set(xlabel="step", ylabel="score", title="validation", ylim=(0, 1))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = os.path.join(workdir, out_name)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_json(workdir: str, name: str, payload: dict) -> str:
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    return path
