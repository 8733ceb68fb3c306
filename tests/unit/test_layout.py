"""The shape of the package, as ARCHITECTURE.md describes it: small modules, short functions,
and imports that only run down the layers (pure decisions, then the API, then the self-check,
then the reconcile, then the wiring), with no circle anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import appidentity
import pytest

ROOT = Path(appidentity.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# Lowest first: a module may import from its own layer and those below, never from above.
LAYERS = [
    {"appidentity", "model", "schedule", "rbac", "tokens", "status", "metrics"},
    {"desired", "policy", "escalation", "policy_manifests", "discovery", "usage"},
    {"kube"},
    {"verify"},
    {"reconcile"},
    {"registry", "scheduler", "turns"},
    {"handlers", "webhook", "cli", "__main__", "audit_receiver"},
]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(["appidentity", *parts])] = path
    return found


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "appidentity"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: in no layer of test_layout.LAYERS; give it one")


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules this one imports, anywhere in it (lazy imports too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def test_no_module_is_over_the_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in ROOT.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_over_the_limit() -> None:
    long = {}
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = size
    assert long == {}


def test_imports_run_down_the_layers() -> None:
    found = modules()
    upward = [
        f"{mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)})"
        for mod, path in found.items()
        for dep in sorted(imports(mod, path, set(found)))
        if layer(dep) > layer(mod)
    ]
    assert upward == []


def test_no_import_circle() -> None:
    found = modules()
    graph = {
        mod: {d for d in imports(mod, path, set(found)) if not mod.startswith(d + ".")}
        for mod, path in found.items()
    }
    done: set[str] = set()

    def visit(mod: str, trail: list[str]) -> None:
        if mod in trail:
            pytest.fail("import circle: " + " -> ".join([*trail[trail.index(mod) :], mod]))
        if mod in done:
            return
        for dep in sorted(graph[mod]):
            visit(dep, [*trail, mod])
        done.add(mod)

    for mod in sorted(graph):
        visit(mod, [])
