"""The import graph of marginkit runs only downwards through the layers of the package.

Every module under ``src/marginkit`` is parsed with :mod:`ast`; every import in it (module level and
inside functions, relative and absolute) that names a marginkit module is mapped to its package and
checked against :data:`LAYERS`: a package may import packages of lower layers only; siblings in one
layer may not import each other; ``cli`` may import anything. Layer 0 (the foundation) is ordered:
a foundation module may import only those listed before it in :data:`FOUNDATION_ORDER`.
"""

from __future__ import annotations

import ast
import functools
import os
from pathlib import Path

import pytest

# MARGINKIT_SRC checks another tree, e.g. MARGINKIT_SRC=../main/src/marginkit.
SRC = Path(os.environ.get("MARGINKIT_SRC", Path(__file__).resolve().parents[1] / "src" / "marginkit"))

LAYERS: dict[str, int] = {
    "norms": 0, "checks": 0, "results": 0, "parallel": 0,
    "data": 1,
    "models": 2,
    "margins": 3,
    "attacks": 4, "verify": 4, "bounds": 4,
    "consistency": 5, "training": 5,
    "pipeline": 6,
    "report": 7,
    "cli": 8,
}
# Within the foundation: norms uses nothing, checks may use norms, results may use both; the executors
# of ``parallel`` are infrastructure every layer may use, so they sit in the foundation, last.
FOUNDATION_ORDER = ("norms", "checks", "results", "parallel")
# Modules of the package root that are no package of their own.
ROOT_MODULES = {"__init__", "__main__"}


def _package_of(module: str) -> str | None:
    """``marginkit.margins.gap`` -> ``margins``; ``marginkit`` itself (or another package) -> None."""
    parts = module.split(".")
    if parts[0] != "marginkit" or len(parts) < 2:
        return None
    return parts[1]


def _module_name(path: Path, src: Path) -> str:
    rel = path.relative_to(src).with_suffix("")
    parts = ["marginkit", *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@functools.lru_cache(maxsize=None)
def _imports(path: Path, src: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, at any depth of the syntax tree."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path, src)
    # The package a relative import is resolved against: the module's own package.
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if node.module is None or _package_of(mod) is None:
                # ``from . import x`` / ``from marginkit import x``: x may be a subpackage.
                found += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, mod))
    return [(line, m) for line, m in found if m.split(".")[0] == "marginkit"]


def violations(src: Path = SRC) -> list[str]:
    """Every import that runs up the layer order, as ``file:line: a -> b`` strings."""
    bad = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        own = rel.parts[0].removesuffix(".py")
        if own in ROOT_MODULES or own == "cli":
            continue
        if own not in LAYERS:
            bad.append(f"{rel}: package {own!r} has no layer; add it to LAYERS")
            continue
        for line, mod in _imports(path, src):
            other = _package_of(mod)
            if other in ROOT_MODULES or mod == "marginkit":
                bad.append(f"{rel}:{line}: {own} -> {mod} (the package root is above every layer)")
                continue
            if other == own:
                continue
            if other not in LAYERS:
                bad.append(f"{rel}:{line}: {own} -> {mod} (no layer)")
                continue
            mine, theirs = LAYERS[own], LAYERS[other]
            if mine == 0 and theirs == 0:
                if FOUNDATION_ORDER.index(other) > FOUNDATION_ORDER.index(own):
                    bad.append(f"{rel}:{line}: {own} -> {other} (foundation order {FOUNDATION_ORDER})")
            elif theirs > mine:
                bad.append(f"{rel}:{line}: {own} (layer {mine}) -> {other} (layer {theirs})")
            elif theirs == mine:
                bad.append(f"{rel}:{line}: {own} -> {other} (siblings in layer {mine})")
    return bad


def test_every_package_has_a_layer():
    pkgs = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert pkgs - ROOT_MODULES <= set(LAYERS), sorted(pkgs - ROOT_MODULES - set(LAYERS))


def test_imports_only_go_down():
    bad = violations()
    assert not bad, "imports up the layer order:\n" + "\n".join(bad)


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


@pytest.mark.parametrize("rel, text, expect", [
    ("margins/a.py", "from ..attacks import engine\n", "margins (layer 3) -> attacks (layer 4)"),
    ("margins/a.py", "def f():\n    from marginkit.pipeline import x\n", "margins (layer 3) -> pipeline"),
    ("attacks/a.py", "import marginkit.bounds.graph\n", "attacks -> bounds (siblings"),
    ("norms.py", "from .results import status\n", "norms -> results (foundation order"),
    ("checks.py", "from marginkit import results\n", "checks -> results (foundation order"),
    ("data/a.py", "from .. import models\n", "data (layer 1) -> models (layer 2)"),
])
def test_checker_catches_upward_imports(tmp_path, rel, text, expect):
    _write(tmp_path, rel, text)
    bad = violations(tmp_path)
    assert len(bad) == 1 and expect in bad[0], bad


@pytest.mark.parametrize("rel, text", [
    ("attacks/a.py", "from ..margins.gap import flip_gap\nfrom . import b\n"),
    ("results/a.py", "from ..norms import as_norm\nfrom ..checks import x\n"),
    ("cli/a.py", "from ..report import y\nfrom marginkit.pipeline import z\n"),
    ("pipeline/a.py", "def f():\n    from ..verify import certify\n"),
])
def test_checker_allows_downward_imports(tmp_path, rel, text):
    _write(tmp_path, rel, text)
    assert violations(tmp_path) == []


def _module_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the marginkit modules it imports (a package stands for its ``__init__``)."""
    files = {_module_name(p, src): p for p in src.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        for _, mod in _imports(path, src):
            while mod and mod not in files:  # ``from .pkg import function`` -> the module pkg
                mod = mod.rpartition(".")[0]
            if mod and mod != name:
                edges.add(mod)
        graph[name] = edges
    return graph


def import_cycles(src: Path = SRC) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted.

    An edge from a package's ``__init__`` to its own submodules is the package's public face, not a
    dependency of the submodule, so a submodule importing its own package's ``__init__`` is the only way
    such a component forms there; it is reported like any other.
    """
    graph = _module_graph(src)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "import circles (module-level and function-level imports):\n" + "\n".join(map(" <-> ".join, cycles))


def test_cycle_finder_catches_a_lazy_circle(tmp_path):
    _write(tmp_path, "consistency/a.py", "from .b import g\n")
    _write(tmp_path, "consistency/b.py", "def g():\n    from .a import f\n")
    _write(tmp_path, "consistency/c.py", "from .a import f\n")
    assert import_cycles(tmp_path) == [["marginkit.consistency.a", "marginkit.consistency.b"]]
