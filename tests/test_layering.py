"""The package's import graph: no cycles, and the layers import downward only.

Layers, bottom-up: formats / reference -> ops -> schemes -> nn -> algorithms -> cli. Read from the
source with ``ast`` (nothing is imported), every import statement counted, those inside functions
(deferred imports) and ``if TYPE_CHECKING:`` blocks included. Edges:

- ``import zqkernels.a.b``: the module ``zqkernels.a.b`` (a package: its ``__init__``);
- ``from X import n``: ``X.n`` where that is a module (``from . import x`` imports submodule x), else
  ``X`` (a package: its ``__init__``). Relative imports are resolved; the implicit import of a
  module's parent packages is not an edge (every module would otherwise depend on the top-level
  ``__init__``, which imports everything).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple, Optional

import pytest

PKG = Path(__file__).resolve().parents[1] / "python" / "zqkernels"
ROOT = "zqkernels"
# Modules that the CMake build installs next to the sources (no .py here): leaves of the graph.
BUILT = frozenset({"zqkernels._C", "zqkernels._build_config"})


class Edge(NamedTuple):
    src: str
    dst: str
    line: int
    name: Optional[str]  # the name imported from dst (``from dst import name``); None: the module itself
    alias: Optional[str] = None  # the local name bound to the module dst (name None); None: none

    def __str__(self) -> str:
        what = f"from {self.dst} import {self.name}" if self.name else f"import {self.dst}"
        return f"{self.src}:{self.line} ({what})"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py")) if "__pycache__" not in p.parts}


MODULES = _modules()


def _is_module(name: str) -> bool:
    return name in MODULES or name in BUILT


def _package_of(mod: str) -> str:
    """The package a module's relative imports start from."""
    return mod if MODULES[mod].name == "__init__.py" else mod.rpartition(".")[0]


def _edges_of(mod: str) -> tuple[list[Edge], list[str]]:
    """(the intra-package import edges of `mod`, imports of zqkernels modules that do not exist)."""
    tree = ast.parse(MODULES[mod].read_text(encoding="utf-8"), filename=str(MODULES[mod]))
    edges, unresolved = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == ROOT or a.name.startswith(ROOT + "."):
                    target = a.name
                    while target and not _is_module(target):  # `import zqkernels.x.attr` is not valid, but be safe
                        target = target.rpartition(".")[0]
                    if target != a.name:
                        unresolved.append(f"{mod}:{node.lineno} import {a.name}")
                    edges.append(Edge(mod, target or ROOT, node.lineno, None, a.asname))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(mod)
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                src = f"{base}.{node.module}" if node.module else base
            elif node.module and (node.module == ROOT or node.module.startswith(ROOT + ".")):
                src = node.module
            else:
                continue
            if not _is_module(src):
                unresolved.append(f"{mod}:{node.lineno} from {'.' * node.level}{node.module or ''} import ...")
                continue
            for a in node.names:
                sub = f"{src}.{a.name}"
                if a.name != "*" and _is_module(sub):
                    edges.append(Edge(mod, sub, node.lineno, None, a.asname or a.name))
                else:
                    edges.append(Edge(mod, src, node.lineno, None if a.name == "*" else a.name))
    return edges, unresolved


def _graph() -> tuple[dict[str, list[Edge]], list[str]]:
    graph: dict[str, list[Edge]] = {}
    unresolved: list[str] = []
    for mod in MODULES:
        graph[mod], bad = _edges_of(mod)
        unresolved += bad
    return graph, unresolved


GRAPH, UNRESOLVED = _graph()


def _cycles(graph: dict[str, list[Edge]]) -> list[tuple[frozenset, list[Edge]]]:
    """Per strongly connected component that has a cycle (Tarjan): (its modules, one shortest cycle
    through its first module, as the edges in order)."""
    succ = {m: sorted({e.dst for e in es if e.dst in graph}) for m, es in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
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
            sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    out = []
    for comp in sccs:
        members = set(comp)
        start = comp[0]
        if len(comp) == 1 and start not in succ[start]:
            continue
        # shortest path start -> ... -> start inside the component (BFS)
        prev: dict[str, Edge] = {}
        frontier, seen, found = [start], set(), None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for e in sorted(graph[v], key=lambda e: (e.dst, e.line)):
                    if e.dst not in members or e.dst in seen:
                        continue
                    if e.dst == start:
                        found = e
                        break
                    seen.add(e.dst)
                    prev[e.dst] = e
                    nxt.append(e.dst)
                if found is not None:
                    break
            frontier = nxt
        path = [found]
        while path[0].src != start:
            path.insert(0, prev[path[0].src])
        out.append((frozenset(comp), path))
    return out


def _describe(scc: frozenset, cycle: list[Edge]) -> str:
    more = f" (the cycle's component also holds {sorted(scc - {e.src for e in cycle})})" if len(scc) > len(cycle) else ""
    return " -> ".join([cycle[0].src] + [e.dst for e in cycle]) + more + "\n      via " + "\n          ".join(map(str, cycle))


def _under(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


# ------------------------------------------------------------------------------------------------


def test_graph_is_read():
    assert "zqkernels.nn.linear" in GRAPH and "zqkernels.nn.blocks" in GRAPH
    # a relative `from . import x` of a submodule is an edge to it; a name from a package: its __init__
    assert any(e.dst == "zqkernels.ops.fused" for e in GRAPH["zqkernels.nn.blocks"])
    assert any(e.dst == "zqkernels.nn.linear" for e in GRAPH["zqkernels.nn.blocks"])
    assert any(e.dst == "zqkernels.nn.lorc" for e in GRAPH["zqkernels.nn.linear"])  # deferred, in add_lorc


def test_intra_package_imports_resolve():
    assert not UNRESOLVED, "imports of zqkernels modules that do not exist:\n  " + "\n  ".join(UNRESOLVED)


def test_no_import_cycle():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles (deferred imports included):\n  " + "\n  ".join(_describe(*c) for c in cycles)


def _private_ops_imports(mod: str) -> list[Edge]:
    bad = []
    for e in GRAPH[mod]:
        ops_module = _under(e.dst, f"{ROOT}.ops")
        if (
            e.dst in (f"{ROOT}._ext", f"{ROOT}._C")
            or e.name == "_C"
            or (ops_module and any(p.startswith("_") for p in e.dst.split(".")[2:]))
            or (ops_module and e.name is not None and e.name.startswith("_"))
        ):
            bad.append(e)
    return bad


NN_MODULES = [m for m in MODULES if _under(m, f"{ROOT}.nn")]


@pytest.mark.parametrize("mod", NN_MODULES)
def test_nn_uses_only_public_ops(mod):
    """nn reaches the kernels through ops' (and schemes') public API: no zqkernels._ext / _C, no private
    ops module (ops._*), no private name (_x) imported from an ops module."""
    bad = _private_ops_imports(mod)
    assert not bad, f"{mod} imports private kernel-layer names:\n  " + "\n  ".join(map(str, bad))


def _private_ops_attributes(mod: str) -> list[str]:
    """``alias._name`` uses in `mod` where alias is bound by an import to an ops module."""
    aliases = {e.alias for e in GRAPH[mod] if e.name is None and e.alias and _under(e.dst, f"{ROOT}.ops")}
    tree = ast.parse(MODULES[mod].read_text(encoding="utf-8"))
    return [
        f"{mod}:{n.lineno} {n.value.id}.{n.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
        and n.attr.startswith("_") and not n.attr.startswith("__")
    ]


@pytest.mark.parametrize("mod", NN_MODULES)
def test_nn_uses_no_private_ops_attributes(mod):
    """The same rule for private names reached as attributes of an imported ops module (``fz._call``)."""
    bad = _private_ops_attributes(mod)
    assert not bad, f"{mod} uses private ops names:\n  " + "\n  ".join(bad)


def test_nn_does_not_import_algorithms_or_cli():
    bad = [
        e
        for m in NN_MODULES
        for e in GRAPH[m]
        if _under(e.dst, f"{ROOT}.algorithms") or _under(e.dst, f"{ROOT}.cli") or e.dst == f"{ROOT}._cli"
    ]
    assert not bad, "nn imports a layer above it:\n  " + "\n  ".join(map(str, bad))


def test_nn_does_not_import_the_top_level_package():
    """``from .. import x`` of a name (not a submodule) runs zqkernels/__init__, which imports nn."""
    bad = [e for m in NN_MODULES for e in GRAPH[m] if e.dst == ROOT]
    assert not bad, "nn imports zqkernels/__init__:\n  " + "\n  ".join(map(str, bad))


# Layers, bottom-up; zqkernels/__init__ (the public API) sits above the libraries and below the
# applications that use it (the CLI, the demo).
LAYERS = {
    "formats": 0, "reference": 0, "_ext": 0, "_C": 0, "_build_config": 0,
    "ops": 1,
    "schemes": 2,
    "nn": 3,
    "algorithms": 4,
    "": 5,  # zqkernels/__init__
    "cli": 6, "_cli": 6, "__main__": 6, "_demo": 6, "_quickbench": 6,
}


def _layer(mod: str) -> Optional[int]:
    return LAYERS.get(mod.split(".")[1] if "." in mod else "")


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if _layer(m) is None)
    assert not missing, f"modules in no layer (add them to LAYERS): {missing}"


def test_imports_go_down_only():
    up = [e for m, es in GRAPH.items() for e in es if (_layer(e.dst) or 0) > (_layer(m) or 0)]
    assert not up, "imports of a higher layer:\n  " + "\n  ".join(map(str, up))


def test_lorc_split():
    """LoRC's per-layer math is nn-level (QLinear.add_lorc uses it); the model-level walk is an algorithm."""
    deps = {e.dst for e in GRAPH["zqkernels.nn.lorc"]}
    assert all(_under(d, f"{ROOT}.ops") for d in deps), f"nn/lorc.py imports {sorted(deps)} (QLinear imports it)"
    assert "zqkernels.algorithms.lorc" in MODULES



def test_one_part_map():
    """The HF submodule names of the fused blocks' parts are spelled once: in the block classes'
    PARTS (nn/blocks.py); checkpoints, LKD, LoRC, smoothing and the CLI read them from there."""
    from zqkernels.nn.blocks import BLOCKS

    names = {n for cls in set(BLOCKS.values()) for ns in cls.PARTS.values() for n in ns}
    hits = []
    for mod, path in MODULES.items():
        if mod == "zqkernels.nn.blocks":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr)
        }
        hits += [
            f"{mod}:{n.lineno} {n.value!r}"
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings and n.value in names
        ]
    assert not hits, "fused-block part names spelled outside nn/blocks.py's PARTS:\n  " + "\n  ".join(hits)
