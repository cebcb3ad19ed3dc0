"""What produced a run: the lmx commit (and whether the tree was dirty), the versions of the
JAX stack, the lock file's hash, the devices and the command line. Written into every
results.json; `python -m lmx.report` shows it."""
from __future__ import annotations

import hashlib
import importlib.metadata
import pathlib
import subprocess
import sys

PACKAGES = ("lmx", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint")
LOCK_FILE = "requirements/lock.txt"
ROOT = pathlib.Path(__file__).resolve().parent.parent  # the checkout (or site-packages)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_state() -> dict:
    """{"commit": sha or None, "dirty": bool or None}: None outside a git checkout (an
    installed wheel has no commit to name)."""
    if not (ROOT / ".git").exists():
        return {"commit": None, "dirty": None}
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip() if commit else None,
            "dirty": None if status is None else bool(status.strip())}


def versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def lock_sha256() -> str | None:
    path = ROOT / LOCK_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def devices() -> dict:
    import jax  # noqa: PLC0415  (lazily: reading a report needs no backend)
    found = jax.devices()
    return {"platform": found[0].platform, "count": len(found),
            "kinds": sorted({d.device_kind for d in found}),
            "process_count": jax.process_count()}


def provenance(argv: list[str] | None = None) -> dict:
    """Everything above, as one JSON-ready dict."""
    return {**git_state(), "versions": versions(), "lock_sha256": lock_sha256(),
            "devices": devices(), "command": list(sys.argv if argv is None else argv)}


def summary(record: dict | None) -> str:
    """One table cell: "1a2b3c4 (dirty), jax 0.10.2, flax 0.12.8" ("?" when not recorded)."""
    if not record:
        return "?"
    commit = (record.get("commit") or "no commit")[:7]
    dirty = " (dirty)" if record.get("dirty") else ""
    found = record.get("versions") or {}
    stack = ", ".join(f"{k} {found[k]}" for k in ("jax", "flax") if found.get(k))
    return f"{commit}{dirty}" + (f", {stack}" if stack else "")
