"""The package's shape: no import cycle between sabench modules, no private name imported across files
(the size of a module is a guideline in docs/architecture.md, not a test: a file is one concept).

The import graph is built from every module's AST, module-level and function-level imports
alike (a lazy import inside a function still ties the two modules together).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sabench"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set) -> set:
    """sabench modules that `name` imports anywhere in its file (absolute and relative)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the submodule pkg.mod when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import sabench.measure.nvml` -> the deepest known module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def find_cycles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan), plus self-loops."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_package_init(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def test_no_import_cycle():
    graph = import_graph()
    # A package's __init__ importing its own submodules is not a cycle of concerns: a submodule
    # importing a sibling through `from sabench.measure import x` goes via the package name only
    # when x is not a submodule, and then names what the package re-exports.
    graph = {m: {d for d in deps if not (_is_package_init(d) and m.startswith(d + "."))}
             for m, deps in graph.items()}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between sabench modules: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles():
    # the checker itself, on graphs with a known answer (so a broken finder cannot pass silently)
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    # and the graph has the edges we know are there, function-level imports included
    graph = import_graph()
    assert "sabench.plan" in graph["sabench.accounting"]
    assert "sabench.harness.point" in graph["sabench.harness.launch"]  # imported inside run_point
    assert "sabench.measure.nvml_readings" in graph["sabench.measure.nvml"]


def private_imports() -> list:
    """(module, imported module, name) for every `from sabench... import _name` in the package:
    a name with a leading underscore belongs to its file; one that another file needs is public."""
    out = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sabench"):
                out += [(name, node.module, a.name) for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    return out


def test_no_private_name_is_imported_across_files():
    found = private_imports()
    assert not found, "private names imported from another file (make them public or keep them home): " + ", ".join(
        f"{m} imports {n} from {src}" for m, src, n in found)


def test_the_private_import_finder_finds_them(tmp_path, monkeypatch):
    pkg = tmp_path / "sabench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def _helper():\n    pass\n")
    (pkg / "b.py").write_text("from sabench.a import _helper\nfrom __future__ import annotations\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert private_imports() == [("sabench.b", "sabench.a", "_helper")]



def test_the_stored_records_sit_below_harness_and_report():
    """results.json's types, the statistics and the history database are written by the harness and
    read by the report: none of them imports either (or the CLI above both)."""
    graph = import_graph()
    lower = [m for m in graph if m.split(".")[:2] in (["sabench", "records"], ["sabench", "stats"])
             or m == "sabench.history"]
    assert "sabench.history" in lower and "sabench.records.types" in lower
    upward = {m: sorted(d for d in graph[m] if d.startswith(("sabench.harness", "sabench.report", "sabench.cli")))
              for m in lower}
    assert not {m: d for m, d in upward.items() if d}, upward
    # and the harness records runs through it, the report reads them back
    assert "sabench.history" in graph["sabench.harness.sweep"] and "sabench.history" in graph["sabench.report.history"]


def _layer(module: str) -> str:
    """A module's layer: its subpackage (sabench.harness, sabench.report, ...) or the module itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if _is_package_init(".".join(parts[:2])) else module


def layer_graph(graph: dict) -> dict:
    out: dict = {}
    for m, deps in graph.items():
        out.setdefault(_layer(m), set()).update(_layer(d) for d in deps if _layer(d) != _layer(m))
    return out


def test_no_layer_imports_a_layer_above_it():
    """Each subpackage taken as one layer, the layers still form no cycle: a module in a lower layer
    never imports a higher one (e.g. suite.py parses the serving: block with serving/spec.py, so
    nothing in serving/ may import suite.py or the harness)."""
    cycles = find_cycles(layer_graph(import_graph()))
    assert not cycles, "layers importing each other: " + "; ".join(" <-> ".join(c) for c in cycles)
    # the finder sees such a loop: serving's bench importing the suite would close one
    assert find_cycles(layer_graph({"sabench.suite": {"sabench.serving.spec"},
                                    "sabench.serving.bench": {"sabench.suite"},
                                    "sabench.serving.spec": set()})) == [["sabench.serving", "sabench.suite"]]
