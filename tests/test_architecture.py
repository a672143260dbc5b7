"""The module graph: no import cycles (function-level imports included, as a static reader sees
them) and one definition of the contrast families."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"rankiq.service": REPO / "service", "rankiq.training": REPO / "training",
            "rankiq": REPO / "rankiq"}
#: cycles still to break; remove an entry once its cycle is gone (the test then keeps it gone)
KNOWN_CYCLES: list[list[str]] = []


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            parts = [p for p in f.relative_to(folder).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                cands = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                cands = [a.name for a in node.names]
            else:
                continue
            deps.update(c for c in cands if c in mods and c != name)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert [c for c in cycles if c not in KNOWN_CYCLES] == []


def test_formerly_cyclic_groups_stay_apart():
    graph = _graph()
    t = "rankiq.training."
    assert t + "distill" not in graph[t + "runs"] and t + "train" not in graph[t + "runs"]
    assert t + "figures" not in graph[t + "evaluate"] or t + "evaluate" not in graph[t + "figures"]
    assert "rankiq.service.cli" not in set().union(
        *(graph[m] for m in graph if m.startswith("rankiq.service.commands")))


def test_known_cycles_are_still_cycles():
    """A broken cycle leaves the list (so it cannot come back unnoticed)."""
    cycles = _cycles(_graph())
    assert [c for c in KNOWN_CYCLES if c not in cycles] == []


def test_runtime_never_imports_the_benchmarks():
    """The bench harnesses (rankiq.service.bench) are reached only through the command
    registry's handler strings, never imported by serving, QA or PACS code."""
    graph = _graph()
    bench = "rankiq.service.bench"
    assert not [(m, d) for m, deps in graph.items() if not m.startswith(bench)
                for d in deps if d.startswith(bench)]


def test_service_never_imports_training():
    graph = _graph()
    assert not [(m, d) for m, deps in graph.items() if m.startswith("rankiq.service")
                for d in deps if d.startswith("rankiq.training")]


#: modules that still spell the families out; remove an entry once it imports CONTRAST_FAMILIES
KNOWN_FAMILY_COPIES = ["training/commands/noref_cmd.py"]


def test_contrast_families_are_defined_once():
    import re

    pattern = re.compile(r'[\[(]\s*"T1",\s*"T1post",\s*"T2",\s*"FLAIR"')
    defining = sorted(str(f.relative_to(REPO)) for f in _modules().values()
                      if pattern.search(f.read_text(encoding="utf-8")))
    assert [d for d in defining if d not in KNOWN_FAMILY_COPIES] == ["service/io/types.py"]
