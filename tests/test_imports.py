"""prefbench's modules import each other without a cycle: each builds on the ones below it.

A cycle (a imports b, b imports a, even inside a function) means neither can be read, tested or
changed alone, and the order the interpreter meets them decides which half-initialised module
the other sees. The import graph is read with ast (every import statement, also those inside
functions), as tests/test_dag.py reads a stage's imports.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ROOT
from tests.test_dag import imported_modules, module_file


def import_graph(package: Path, root: Path) -> dict[Path, set[Path]]:
    """Each module of `package` -> the modules of the repo's packages it imports (package
    `__init__.py` files left out: empty here, they import nothing)."""
    graph = {}
    for path in sorted(package.glob("*.py")):
        if path.name == "__init__.py":
            continue
        targets = {module_file(m, root) for m in imported_modules(path)}
        graph[path] = {t for t in targets if t is not None and t.name != "__init__.py" and t != path}
    return graph


def find_cycle(graph: dict[Path, set[Path]]) -> list[Path] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, in file-name order)."""
    done, stack = set(), []

    def visit(node: Path) -> list[Path] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if cycle := visit(nxt):
                return cycle
        stack.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None


def test_prefbench_has_no_import_cycle():
    graph = import_graph(ROOT / "prefbench", ROOT)
    assert len(graph) > 10 and any(graph.values())  # the graph was read: modules, and imports between them
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in prefbench: " + " -> ".join(p.stem for p in cycle)


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    """The check above can fail: a imports b at the top, b imports a inside a function; c imports
    a and is in no cycle."""
    (tmp_path / "prefbench").mkdir()
    (tmp_path / "prefbench" / "__init__.py").write_text("")
    (tmp_path / "prefbench" / "a.py").write_text("import numpy\nfrom prefbench import b\n")
    (tmp_path / "prefbench" / "b.py").write_text("def f():\n    from prefbench.a import g\n")
    (tmp_path / "prefbench" / "c.py").write_text("from prefbench.a import h\n")
    graph = import_graph(tmp_path / "prefbench", tmp_path)
    assert [p.stem for p in find_cycle(graph)] == ["a", "b", "a"]
    (tmp_path / "prefbench" / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(tmp_path / "prefbench", tmp_path)) is None


def reaches(graph: dict[Path, set[Path]], start: Path, goal: Path) -> bool:
    """Whether `start` imports `goal`, directly or through other modules."""
    todo, seen = [start], set()
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo += graph.get(node, ())
    return False


def test_training_and_inference_stand_side_by_side():
    """The train loop and the inference loop share what both need (prefbench.batching,
    prefbench.device_errors) from below; neither imports the other, so either can be read alone."""
    graph = import_graph(ROOT / "prefbench", ROOT)
    infer, train = ROOT / "prefbench" / "infer.py", ROOT / "prefbench" / "train.py"
    assert reaches(graph, train, ROOT / "prefbench" / "batching.py")  # the check sees paths
    assert not reaches(graph, infer, train), "prefbench.infer imports prefbench.train"
    assert not reaches(graph, train, infer), "prefbench.train imports prefbench.infer"
