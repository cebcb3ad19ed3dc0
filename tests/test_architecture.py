"""The package tree is the architecture: a stated layer order, no upward import, no cycle,
no file over 500 lines. Reads the sources (ast), so lazy imports inside functions count too."""
import ast
import pathlib

import pytest

LMX = pathlib.Path(__file__).resolve().parent.parent / "lmx"

# Low to high. A module may import modules of its own layer or below, never above.
# (The README's "Architecture" section states the same order.)
LAYERS = (
    ("core", ("lmx.paths", "lmx.metrics", "lmx.report", "lmx.provenance", "lmx.quant",
              "lmx.scale.sharding", "lmx.scale.distributed")),
    ("peft", ("lmx.peft", "lmx.peft_init", "lmx.adapters")),
    ("models", ("lmx.models",)),
    ("interop", ("lmx.hf",)),
    ("data", ("lmx.data",)),
    ("config", ("lmx.config", "lmx.config_checks")),
    ("tasks", ("lmx.tasks",)),
    ("train", ("lmx.train.step", "lmx.train.mixed", "lmx.train.optim", "lmx.train.mfu",
               "lmx.train.checkpoint", "lmx.train.build",
               "lmx.train.prompt_sweep")),
    ("tools", ("lmx.explain", "lmx.scale.aot")),
    ("loop", ("lmx.train.loop",)),
    ("launchers", ("lmx.main", "lmx.hf.__main__", "lmx.explain.__main__", "lmx.data.__main__",
                   "lmx.__init__")),
)


def module_name(path: pathlib.Path) -> str:
    """lmx/data/readers.py -> lmx.data.readers; a sub-package's __init__ -> the package;
    lmx/__init__.py (the front door) -> lmx.__init__."""
    parts = path.relative_to(LMX.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        return "lmx.__init__" if len(parts) == 2 else ".".join(parts[:-1])
    return ".".join(parts)


def layer_of(name: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{name} is in no layer of tests/test_architecture.py: add it")
    return best


def imports_of(path: pathlib.Path) -> set[str]:
    """Every lmx module a file imports (top-level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lmx")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lmx"):
            for alias in node.names:  # `from lmx.data import readers` names a module
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _is_module(candidate) else node.module)
    return found


def _is_module(name: str) -> bool:
    path = LMX.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(LMX.rglob("*.py"))}


def test_every_module_has_a_layer_and_imports_none_above_it():
    upward = []
    for name, deps in graph().items():
        for dep in deps:
            if dep == "lmx" or dep == name:
                continue
            if layer_of(dep) > layer_of(name):
                upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} "
                              f"({LAYERS[layer_of(dep)][0]})")
    assert not upward, "upward imports:\n  " + "\n  ".join(sorted(upward))


def test_no_import_cycles():
    g = graph()
    deps = {k: {d for d in v if d in g and d != k} for k, v in g.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(deps[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(deps):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_no_file_over_500_lines():
    long = {str(p.relative_to(LMX.parent)): n for p in LMX.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"files over 500 lines: {long}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk must catch a lazy (function-level) upward import: the loop's explain hook was one."""
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from lmx.train import loop\n")
    assert "lmx.train.loop" in imports_of(src)
    assert layer_of("lmx.train.loop") > layer_of("lmx.models.transformer")
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("lmx.nowhere")


def test_readme_layout_lists_every_module():
    readme = (LMX.parent / "README.md").read_text()
    missing = [str(p.relative_to(LMX.parent)) for p in sorted(LMX.rglob("*.py"))
               if p.name != "__init__.py" and f"`{p.relative_to(LMX.parent)}`" not in readme
               and f"`{p.name}`" not in readme]
    assert not missing, f"modules the README's layout table does not list: {missing}"
