"""Import layering: no new import cycle, no new upward import.

Every module under ``torchrec_mdr/``, ``data_prep/`` and ``dlrm_style/`` is parsed (``ast``, nothing
is imported) and each of its imports of another of these modules becomes an edge, of one of three
kinds: ``module`` (runs at import time, including ``try`` / ``if`` at module level), ``typing``
(inside ``if TYPE_CHECKING:``) and ``deferred`` (inside a function or method body). All three count:
a deferred or typing-only import still makes the two modules depend on each other, and hiding a
cycle behind one is what this test exists to stop.

* **Cycles.** The strongly connected components of the module graph must be exactly those of
  :data:`KNOWN_CYCLES` (today's, each with its reason); so does the graph of the three top-level
  packages (:data:`KNOWN_PACKAGE_CYCLES`). A new cycle fails; so does a fixed one still listed
  (remove it from the list, so it cannot come back silently).
* **Layers** (``config -> data -> sparse -> models -> tasks/training -> cli/bench``, :data:`LAYERS`):
  a module may import modules of its own layer or below. Upward imports must be listed in
  :data:`KNOWN_UPWARD`, likewise exactly.

Run ``python tests/test_layers.py`` to print the graph's cycles and upward imports.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torchrec_mdr", "data_prep", "dlrm_style")

# Layers, lowest first; a module takes the layer of its longest matching prefix.
LAYERS: dict[str, int] = {
    # 0 config: the typed-config machinery, the errors every layer raises, loading files without running code
    "torchrec_mdr": 0, "torchrec_mdr.config": 0, "torchrec_mdr.errors": 0, "torchrec_mdr.safe_files": 0,
    # 1 data: dataset spec, reader, Batch; the converters that write datasets
    "torchrec_mdr.data": 1, "data_prep": 1,
    # 2 sparse: sparse arch, sharding-independent embedding config, managed collision
    "torchrec_mdr.sparse": 2,
    # 3 models: dense archs, the registry, the retrieval model
    "torchrec_mdr.models": 3, "torchrec_mdr.retrieval": 3, "dlrm_style": 3, "dlrm_style.models": 3,
    # 4 tasks / training: the run config that composes every section, metrics, the tasks (model, outputs,
    # metrics and their display per task), the training system
    "torchrec_mdr.experiment": 4, "torchrec_mdr.metrics": 4, "torchrec_mdr.retrieval.metrics": 4,
    "torchrec_mdr.training": 4, "torchrec_mdr.tasks": 4,
    # serving: the inference program of a trained run, its export (through the training stack) and its loader
    "torchrec_mdr.serving": 4,
    # 5 cli / bench: entry points and experiments
    "torchrec_mdr.cli": 5, "torchrec_mdr.__main__": 5, "torchrec_mdr.bench": 5, "dlrm_style.train": 5,
}
LAYER_NAMES = ("config", "data", "sparse", "models", "tasks/training", "cli/bench")

# Today's import cycles (strongly connected components of the module graph), each with its reason.
# Remove an entry when its cycle is fixed; never add one without the owner's agreement. (Fixed:
# models/ranking -> experiment -> models/registry -> models/adin -> models/ranking, with
# sparse/arch and sparse/eviction joined through EvictionConfig: EvictionConfig now lives in
# sparse/mch/config.py and ArchOutput in models/features.py; training/checkpoint <-> training/trainer:
# evaluate_run moved to training/evaluate.py; bench/accuracy <-> bench/ads_cost: the accuracy bench
# hands the cost module its variants and a train function.)
KNOWN_CYCLES: list[frozenset[str]] = []
# Today's cycles between the three top-level packages.
KNOWN_PACKAGE_CYCLES: list[frozenset[str]] = [
    # torchrec_mdr.models.registry registers dlrm_style.models (DLRM archs belong in models/), and
    # data_prep uses torchrec_mdr's config and spec while torchrec_mdr.cli runs the converters
    # (issue 10 step 1: data_prep inside the package or clearly below it).
    frozenset({"torchrec_mdr", "dlrm_style", "data_prep"}),
]
# Today's upward imports (importer, imported), each with its reason: none. (Until sparse/mch/config.py
# held EvictionConfig, sparse/arch, sparse/eviction, models/ranking and retrieval/model imported it
# from experiment.py, two layers up.)
KNOWN_UPWARD: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    kind: str  # "module", "typing" or "deferred"
    line: int


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module of :data:`PACKAGES` (a package is its ``__init__``)."""
    names = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement of a module with its kind (see the module doc)."""
    found: list[tuple[ast.Import | ast.ImportFrom, str]] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, kind))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, "deferred")
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.body:
                    visit(ast.Module(body=[statement], type_ignores=[]), "typing" if kind == "module" else kind)
                for statement in child.orelse:
                    visit(ast.Module(body=[statement], type_ignores=[]), kind)
            else:
                visit(child, kind)

    visit(tree, "module")
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The internal module ``name`` loads: itself, else its longest module prefix (``pkg.mod.attr``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_edges(root: Path = ROOT) -> list[Edge]:
    """Every import of one module of :data:`PACKAGES` by another (self-imports left out)."""
    modules = module_names(root)
    edges = []
    for importer, path in modules.items():
        is_package = path.name == "__init__.py"
        for node, kind in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the importer's package
                    package = importer if is_package else importer.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                imported = _resolve(target, modules)
                if imported is not None and imported != importer:
                    edges.append(Edge(importer, imported, kind, node.lineno))
    return edges


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The components of more than one node (Tarjan), i.e. the cycles' node sets."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def layer_of(module: str) -> int:
    prefix = module
    while prefix not in LAYERS:
        prefix = prefix.rpartition(".")[0]
        assert prefix, f"{module} has no layer: add its package to LAYERS"
    return LAYERS[prefix]


def module_graph(edges: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in edges:
        graph[edge.importer].add(edge.imported)
    return graph


def package_graph(edges: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in edges:
        a, b = edge.importer.partition(".")[0], edge.imported.partition(".")[0]
        if a != b:
            graph[a].add(b)
    return graph


def upward_imports(edges: list[Edge]) -> set[tuple[str, str]]:
    return {(e.importer, e.imported) for e in edges if layer_of(e.imported) > layer_of(e.importer)}


def _describe(edges: list[Edge], pairs: set[tuple[str, str]]) -> str:
    lines = [f"  {e.importer} -> {e.imported} ({e.kind} import, line {e.line}; layer "
             f"{LAYER_NAMES[layer_of(e.importer)]} -> {LAYER_NAMES[layer_of(e.imported)]})"
             for e in edges if (e.importer, e.imported) in pairs]
    return "\n".join(sorted(set(lines)))


def _cycle_edges(edges: list[Edge], component: frozenset[str]) -> str:
    inside = {(e.importer, e.imported) for e in edges if e.importer in component and e.imported in component}
    return "\n".join(sorted({f"    {e.importer} -> {e.imported} ({e.kind}, line {e.line})" for e in edges
                             if (e.importer, e.imported) in inside}))


# --------------------------------------------------------------------------- the checks


def test_every_module_is_parsed_and_has_a_layer():
    modules = module_names()
    assert "torchrec_mdr.sparse.mch.eviction" in modules and "data_prep.ids" in modules
    assert "dlrm_style.train" in modules
    for module in modules:
        layer_of(module)


def test_no_new_import_cycle():
    edges = import_edges()
    found = set(strongly_connected(module_graph(edges)))
    new = found - set(KNOWN_CYCLES)
    assert not new, "new import cycle(s):\n" + "\n".join(
        f"  {sorted(c)}:\n{_cycle_edges(edges, c)}" for c in new)
    fixed = set(KNOWN_CYCLES) - found
    assert not fixed, f"fixed cycle(s) still listed in KNOWN_CYCLES: {[sorted(c) for c in fixed]}"


def test_no_new_package_cycle():
    found = set(strongly_connected(package_graph(import_edges())))
    assert found == set(KNOWN_PACKAGE_CYCLES), f"package cycles now: {[sorted(c) for c in found]}"


def test_no_new_upward_import():
    edges = import_edges()
    found = upward_imports(edges)
    new = found - KNOWN_UPWARD
    assert not new, "upward import(s) against config -> data -> sparse -> models -> tasks/training -> " \
                    "cli/bench:\n" + _describe(edges, new)
    fixed = KNOWN_UPWARD - found
    assert not fixed, f"fixed upward import(s) still listed in KNOWN_UPWARD: {sorted(fixed)}"


def test_the_checks_see_a_hidden_cycle_and_an_upward_import(tmp_path):
    """A function-local import that closes a cycle, and a typing-only import of a higher layer."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "torchrec_mdr" / "models").mkdir()
    (tmp_path / "torchrec_mdr" / "models" / "__init__.py").write_text("")
    (tmp_path / "torchrec_mdr" / "models" / "a.py").write_text("from torchrec_mdr.models.b import thing\n")
    (tmp_path / "torchrec_mdr" / "models" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from torchrec_mdr.experiment import X\n"
        "def thing():\n    from torchrec_mdr.models import a\n")
    (tmp_path / "torchrec_mdr" / "experiment.py").write_text("")
    edges = import_edges(tmp_path)
    assert {(e.importer, e.imported, e.kind) for e in edges} == {
        ("torchrec_mdr.models.a", "torchrec_mdr.models.b", "module"),
        ("torchrec_mdr.models.b", "torchrec_mdr.experiment", "typing"),
        ("torchrec_mdr.models.b", "torchrec_mdr.models.a", "deferred"),
    }
    assert strongly_connected(module_graph(edges)) == [frozenset({"torchrec_mdr.models.a", "torchrec_mdr.models.b"})]
    assert upward_imports(edges) == {("torchrec_mdr.models.b", "torchrec_mdr.experiment")}


if __name__ == "__main__":
    all_edges = import_edges()
    for cycle in strongly_connected(module_graph(all_edges)):
        print(f"cycle {sorted(cycle)}:\n{_cycle_edges(all_edges, cycle)}")
    for cycle in strongly_connected(package_graph(all_edges)):
        print(f"package cycle {sorted(cycle)}")
    print("upward imports:\n" + _describe(all_edges, upward_imports(all_edges)))
