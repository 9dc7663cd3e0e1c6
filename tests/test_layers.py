"""Import layering: no new import cycle, no new upward import.

Every module under ``torchrec_mdr/``, ``data_prep/`` and ``dlrm_style/`` is parsed (``ast``, nothing
is imported) and each of its imports of another of these modules becomes an edge, of one of three
kinds: ``module`` (runs at import time, including ``try`` / ``if`` at module level), ``typing``
(inside ``if TYPE_CHECKING:``) and ``deferred`` (inside a function or method body). All three count:
a deferred or typing-only import still makes the two modules depend on each other, and hiding a
cycle behind one is what this test exists to stop.

* **Cycles.** The strongly connected components of the module graph must be exactly those of
  :data:`KNOWN_CYCLES` (today's, each with its reason). A new cycle fails; so does a fixed one still
  listed (remove it from the list, so it cannot come back silently). The graph of the three top-level
  packages has no cycle either, except ``torchrec_mdr <-> data_prep``, checked edge by edge instead
  (next point).
* **data_prep between the layers.** ``data_prep`` (the converters) uses ``torchrec_mdr``'s config and
  dataset spec, and ``torchrec_mdr``'s CLI and benches run the converters: a package-level cycle that is
  a layered DAG at module level, because every import of ``torchrec_mdr`` by ``data_prep`` is of the
  config or data layer (0-1, :data:`DATA_PREP_IMPORTS_UP_TO`) and only the cli/bench layer (5,
  :data:`DATA_PREP_IMPORTED_FROM`) imports ``data_prep``. The test asserts exactly that, so an
  import of a higher ``torchrec_mdr`` layer by a converter, or of a converter by anything below the
  entry points (a model, the trainer, the reader), fails.
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
    "torchrec_mdr": 0,
    "torchrec_mdr.config": 0,
    "torchrec_mdr.errors": 0,
    "torchrec_mdr.safe_files": 0,
    # 1 data: dataset spec, reader, Batch; the converters that write datasets
    "torchrec_mdr.data": 1,
    "data_prep": 1,
    # 2 sparse: sparse arch, sharding-independent embedding config, managed collision
    "torchrec_mdr.sparse": 2,
    # 3 models: dense archs, the registry, the retrieval model
    "torchrec_mdr.models": 3,
    "torchrec_mdr.retrieval": 3,
    # 4 tasks / training: the run config that composes every section, metrics, the tasks (model, outputs,
    # metrics and their display per task), the training system
    "torchrec_mdr.experiment": 4,
    "torchrec_mdr.metrics": 4,
    "torchrec_mdr.retrieval.metrics": 4,
    "torchrec_mdr.training": 4,
    "torchrec_mdr.tasks": 4,
    # serving: the inference program of a trained run, its export (through the training stack) and its loader
    "torchrec_mdr.serving": 4,
    # 5 cli / bench: entry points and experiments
    # (dlrm_style: the DLRM-example-style training program; its archs are torchrec_mdr.models.dlrm)
    "torchrec_mdr.cli": 5,
    "torchrec_mdr.__main__": 5,
    "torchrec_mdr.bench": 5,
    "dlrm_style": 5,
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
# data_prep's place (see the module doc): it imports torchrec_mdr modules of these layers or below ...
DATA_PREP_IMPORTS_UP_TO = 1  # data
# ... and is imported only by modules of this layer (or above).
DATA_PREP_IMPORTED_FROM = 5  # cli/bench
# (Fixed: the package cycle torchrec_mdr <-> dlrm_style, since the DLRM archs moved from
# dlrm_style/models.py to torchrec_mdr/models/dlrm.py.)
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
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


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


def _package(module: str) -> str:
    return module.partition(".")[0]


def _data_prep_and_torchrec_mdr(edge: Edge) -> bool:
    return {_package(edge.importer), _package(edge.imported)} == {"data_prep", "torchrec_mdr"}


def data_prep_out_of_place(edges: list[Edge]) -> list[Edge]:
    """Edges against data_prep's place: a data_prep import of torchrec_mdr above
    :data:`DATA_PREP_IMPORTS_UP_TO`, or an import of data_prep by a module of another package below
    :data:`DATA_PREP_IMPORTED_FROM`."""
    wrong = []
    for e in edges:
        if _package(e.importer) == _package(e.imported):
            continue
        if _package(e.importer) == "data_prep" and _package(e.imported) == "torchrec_mdr":
            if layer_of(e.imported) > DATA_PREP_IMPORTS_UP_TO:
                wrong.append(e)
        elif _package(e.imported) == "data_prep" and layer_of(e.importer) < DATA_PREP_IMPORTED_FROM:
            wrong.append(e)
    return wrong


def upward_imports(edges: list[Edge]) -> set[tuple[str, str]]:
    return {(e.importer, e.imported) for e in edges if layer_of(e.imported) > layer_of(e.importer)}


def _describe(edges: list[Edge], pairs: set[tuple[str, str]]) -> str:
    lines = [
        f"  {e.importer} -> {e.imported} ({e.kind} import, line {e.line}; layer "
        f"{LAYER_NAMES[layer_of(e.importer)]} -> {LAYER_NAMES[layer_of(e.imported)]})"
        for e in edges
        if (e.importer, e.imported) in pairs
    ]
    return "\n".join(sorted(set(lines)))


def _cycle_edges(edges: list[Edge], component: frozenset[str]) -> str:
    inside = {(e.importer, e.imported) for e in edges if e.importer in component and e.imported in component}
    return "\n".join(
        sorted(
            {
                f"    {e.importer} -> {e.imported} ({e.kind}, line {e.line})"
                for e in edges
                if (e.importer, e.imported) in inside
            }
        )
    )


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
    assert not new, "new import cycle(s):\n" + "\n".join(f"  {sorted(c)}:\n{_cycle_edges(edges, c)}" for c in new)
    fixed = set(KNOWN_CYCLES) - found
    assert not fixed, f"fixed cycle(s) still listed in KNOWN_CYCLES: {[sorted(c) for c in fixed]}"


def test_no_package_cycle_but_data_prep_between_the_layers():
    """No cycle between the top-level packages once the edges between data_prep and torchrec_mdr are
    left out; those the next test checks one by one."""
    edges = [e for e in import_edges() if not _data_prep_and_torchrec_mdr(e)]
    found = strongly_connected(package_graph(edges))
    assert not found, f"package cycles: {[sorted(c) for c in found]}"


def test_data_prep_imports_only_config_and_data_and_only_entry_points_import_it():
    """The torchrec_mdr <-> data_prep package cycle is a layered DAG at module level (see the module doc)."""
    edges = import_edges()
    wrong = data_prep_out_of_place(edges)
    assert not wrong, (
        f"data_prep may import torchrec_mdr layers <= {LAYER_NAMES[DATA_PREP_IMPORTS_UP_TO]} and be imported "
        f"only from layer {LAYER_NAMES[DATA_PREP_IMPORTED_FROM]}:\n"
        + "\n".join(sorted({f"  {e.importer} -> {e.imported} ({e.kind} import, line {e.line})" for e in wrong}))
    )
    # both directions exist today; when one goes, this test and its exemption above can be simplified
    directions = {(_package(e.importer), _package(e.imported)) for e in edges if _data_prep_and_torchrec_mdr(e)}
    assert directions == {("data_prep", "torchrec_mdr"), ("torchrec_mdr", "data_prep")}


def test_no_new_upward_import():
    edges = import_edges()
    found = upward_imports(edges)
    new = found - KNOWN_UPWARD
    assert not new, (
        "upward import(s) against config -> data -> sparse -> models -> tasks/training -> "
        "cli/bench:\n" + _describe(edges, new)
    )
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
        "def thing():\n    from torchrec_mdr.models import a\n"
    )
    (tmp_path / "torchrec_mdr" / "experiment.py").write_text("")
    edges = import_edges(tmp_path)
    assert {(e.importer, e.imported, e.kind) for e in edges} == {
        ("torchrec_mdr.models.a", "torchrec_mdr.models.b", "module"),
        ("torchrec_mdr.models.b", "torchrec_mdr.experiment", "typing"),
        ("torchrec_mdr.models.b", "torchrec_mdr.models.a", "deferred"),
    }
    assert strongly_connected(module_graph(edges)) == [frozenset({"torchrec_mdr.models.a", "torchrec_mdr.models.b"})]
    assert upward_imports(edges) == {("torchrec_mdr.models.b", "torchrec_mdr.experiment")}


def test_the_checks_see_data_prep_out_of_place(tmp_path):
    """A converter importing the sparse layer, a model importing a converter; the allowed two pass."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name in ("data", "sparse", "models", "bench"):
        (tmp_path / "torchrec_mdr" / name).mkdir()
        (tmp_path / "torchrec_mdr" / name / "__init__.py").write_text("")
    (tmp_path / "torchrec_mdr" / "data" / "spec.py").write_text("")
    (tmp_path / "torchrec_mdr" / "sparse" / "arch.py").write_text("")
    (tmp_path / "data_prep" / "good.py").write_text("from torchrec_mdr.data.spec import DatasetSpec\n")
    (tmp_path / "data_prep" / "bad.py").write_text("from torchrec_mdr.sparse.arch import SparseArch\n")
    (tmp_path / "torchrec_mdr" / "models" / "m.py").write_text("def f():\n    from data_prep import good\n")
    (tmp_path / "torchrec_mdr" / "bench" / "b.py").write_text("def f():\n    from data_prep import good\n")
    edges = import_edges(tmp_path)
    assert {(e.importer, e.imported) for e in data_prep_out_of_place(edges)} == {
        ("data_prep.bad", "torchrec_mdr.sparse.arch"),
        ("torchrec_mdr.models.m", "data_prep.good"),
    }
    assert strongly_connected(package_graph(edges)) == [frozenset({"torchrec_mdr", "data_prep"})]
    assert not strongly_connected(package_graph([e for e in edges if not _data_prep_and_torchrec_mdr(e)]))


if __name__ == "__main__":
    all_edges = import_edges()
    for cycle in strongly_connected(module_graph(all_edges)):
        print(f"cycle {sorted(cycle)}:\n{_cycle_edges(all_edges, cycle)}")
    for cycle in strongly_connected(package_graph(all_edges)):
        print(f"package cycle {sorted(cycle)}")
    print(
        "data_prep out of place:\n"
        + "\n".join(
            f"  {e.importer} -> {e.imported} ({e.kind}, line {e.line})" for e in data_prep_out_of_place(all_edges)
        )
    )
    print("upward imports:\n" + _describe(all_edges, upward_imports(all_edges)))
