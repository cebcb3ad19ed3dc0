"""What a run leaves in its workdir (metrics.jsonl, TensorBoard events, a curve PNG, results.json)
and the results table across runs: `python -m lmx.report --workdir RUN [--workdir RUN ...]
[--out FILE.md]`."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import matplotlib
from absl import app, flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402

from lmx import provenance  # noqa: E402


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


def plot_curves(workdir: str, out_name: str = "curves.png",
                metrics: tuple[str, ...] = ("accuracy", "macro_f1")) -> str:
    """Training loss and validation metrics against step, one panel each (scores in [0, 1]:
    metrics a task does not report are left out; perplexity-like ones belong to the loss)."""
    rows = read_metrics(workdir)
    train = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "validation"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if valid:
        left.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-",
                  label="validation loss")
        for name in (m for m in metrics if m in valid[0]):
            right.plot([r["step"] for r in valid], [r[name] for r in valid], "o-", label=name)
    left.set(xlabel="step", ylabel="loss", title="loss")
    right.set(xlabel="step", ylabel="score", title="validation", ylim=(0, 1))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
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


def hardware() -> str:
    """What ran this process, in a few words: "1x NVIDIA H200", "2-core AMD EPYC CPU"."""
    import jax  # noqa: PLC0415  (lazily: reading a report needs no backend)
    devices = jax.devices()
    if devices[0].platform != "cpu":
        kinds = sorted({d.device_kind for d in devices})
        return f"{len(devices)}x {' + '.join(kinds)}"
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:  # not Linux
        pass
    model = model.removesuffix(" CPU").strip() or "unknown"
    return f"{os.cpu_count()}-core {model} CPU"


# The results table: `python -m lmx.report --workdir RUN [--workdir RUN ...] [--out FILE.md]`.
TABLE_COLUMNS = ("task", "method", "trainable %", "metric", "adapter bytes", "wall time",
                 "hardware", "produced by")


def human_bytes(n: float) -> str:
    """1412260 -> "1.3 MiB" (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    """573.7 -> "9m 34s"; 12.3 -> "12.3s"; 3725 -> "1h 02m"."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _read_run_json(run_dir: str, name: str) -> dict:
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"run {run_dir!r} has no {name} ({path} does not exist)")
    try:
        with open(path) as f:
            payload = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    return payload


def headline(results: dict) -> tuple[str, float] | None:
    """The run's headline metric: results["headline"], else validation accuracy, f1, loss."""
    if "headline" in results:
        given = results["headline"]
        if not isinstance(given, dict) or not {"name", "value"} <= set(given):
            raise ValueError(f'"headline" must be {{"name": ..., "value": ...}}, got {given!r}')
        return str(given["name"]), float(given["value"])
    validation = results.get("validation") or {}
    for name in ("accuracy", "f1", "loss"):
        if name in validation:
            return name, float(validation[name])
    return None


def table_row(run_dir: str) -> dict[str, str]:
    """One table row (TABLE_COLUMNS -> text) from a run's results.json and config.json."""
    results = _read_run_json(run_dir, "results.json")
    config = _read_run_json(run_dir, "config.json")
    try:
        metric = headline(results)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{os.path.join(run_dir, 'results.json')}: {e}") from None
    percent = results.get("trainable_percent")
    return {
        "task": str(results.get("experiment") or os.path.basename(os.path.normpath(run_dir))),
        "method": str(results.get("method") or (config.get("peft") or {}).get("method", "?")),
        "trainable %": "?" if percent is None else f"{percent:.2f}%",
        "metric": "?" if metric is None else f"{metric[0]} {metric[1]:.4f}",
        "adapter bytes": ("?" if results.get("adapter_bytes") is None
                          else human_bytes(results["adapter_bytes"])),
        "wall time": ("?" if results.get("train_seconds") is None
                      else human_seconds(results["train_seconds"])),
        "hardware": str(results.get("hardware") or "?"),
        "produced by": provenance.summary(results.get("provenance")),
    }


def markdown_table(run_dirs: list[str]) -> str:
    """The results table of `run_dirs`, one row each, in the order given."""
    cell = lambda text: text.replace("|", r"\|").replace("\n", " ")
    rows = [table_row(d) for d in run_dirs]
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |",
             "|" + "|".join(" --- " for _ in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(r[c]) for c in TABLE_COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def define_flags(flag_values: flags.FlagValues) -> flags.FlagValues:
    """The CLI's flags, defined on absl's FLAGS only when lmx.report runs as `__main__`."""
    flags.DEFINE_multi_string("workdir", None, "A finished run's folder (repeatable: one row "
                              "each, in order).", flag_values=flag_values)
    flags.DEFINE_string("out", None, "Also write the table to this file (e.g. results.md).",
                        flag_values=flag_values)
    flags.mark_flag_as_required("workdir", flag_values=flag_values)
    return flag_values


def run_cli(argv: Sequence[str], flag_values: flags.FlagValues) -> int:
    """Prints (and with --out writes) the table; argv is what absl leaves: [program]."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}: name each run folder "
                             "with --workdir")
    try:
        table = markdown_table(flag_values.workdir)
    except (OSError, ValueError) as e:
        print(f"lmx.report: error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(table)
    if flag_values.out:
        with open(flag_values.out, "w") as f:
            f.write(table)
    return 0


def main(argv: Sequence[str]) -> int:
    """`python -m lmx.report ARGV...` in-process, its flags on a private FlagValues."""
    flag_values = define_flags(flags.FlagValues())
    return run_cli(flag_values(["lmx.report", *argv]), flag_values)


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(lambda argv: run_cli(argv, flags.FLAGS))
