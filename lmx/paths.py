"""The one regex helper: parameter paths -> labels (LoRA targets, freeze and decay masks).

A path is the '/'-joined key path of a leaf, e.g. `params/layer_0/attention/query/kernel`.
Patterns are matched with `re.fullmatch`; the first matching rule wins; a pattern
that matches nothing is an error that names it and lists the nearest real paths.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Sequence

import jax
from absl import logging


def path_str(key_path) -> str:
    parts = []
    for key in key_path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def flatten(tree: Any) -> dict[str, Any]:
    """`{path: leaf}` in tree order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_str(kp): leaf for kp, leaf in leaves}


def _no_match_error(pattern: str, all_paths: Sequence[str], what: str) -> ValueError:
    near = difflib.get_close_matches(pattern, all_paths, n=8, cutoff=0.0)
    listing = "\n  ".join(near)
    return ValueError(
        f"{what}: pattern {pattern!r} matches no parameter path. Nearest paths:\n  {listing}")


def label(tree: Any, rules: Sequence[tuple[str, Any]], *, what: str,
          default: Any = None, require_use: bool = True) -> Any:
    """Returns a tree like `tree` whose leaves are the label of the first matching rule.

    Args:
      tree: a pytree of parameters (or shapes).
      rules: `(regex, label)` pairs; the first `fullmatch` wins.
      what: the config key the rules came from, for error messages.
      default: label for leaves no rule matches; None means such a leaf is an error.
      require_use: raise if a rule matches no leaf (off for built-in catch-all lists).
    """
    flat = flatten(tree)
    compiled = [(re.compile(pattern), value) for pattern, value in rules]
    used = [False] * len(compiled)
    labels = {}
    for path in flat:
        for i, (regex, value) in enumerate(compiled):
            if regex.fullmatch(path):
                labels[path] = value
                used[i] = True
                break
        else:
            if default is None:
                raise ValueError(f"{what}: no rule covers parameter {path!r}")
            labels[path] = default
    for (pattern, _), was_used in zip(rules, used):
        if require_use and not was_used:
            raise _no_match_error(pattern, list(flat), what)
    for path, value in labels.items():
        logging.debug("%s: %s -> %s", what, path, value)
    leaves = [labels[p] for p in flat]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), leaves)


def select(tree: Any, patterns: Sequence[str], *, what: str) -> list[str]:
    """Paths matched by any of `patterns`; each pattern must match at least one."""
    labels = label(tree, [(p, True) for p in patterns], what=what, default=False)
    return [p for p, hit in flatten(labels).items() if hit]


def mask(tree: Any, patterns: Sequence[str], *, what: str) -> Any:
    """Boolean tree: True where a path matches one of `patterns`."""
    return label(tree, [(p, True) for p in patterns], what=what, default=False)
