"""No import cycle among the package's modules.

The graph is built with `ast` from every `import` in src/deepfakejudge: module-level ones and the
deferred ones inside functions too, since a cycle hidden in a function (`cli/demo.py` importing
`cli/__init__` to build the parser) still ties two modules together. Imports under
`if TYPE_CHECKING:` are left out: they never run. A package importing its own submodule is an
edge like any other, so a submodule importing back from its package `__init__` is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "deepfakejudge"


def modules(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package `__init__`), for every module of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node of `tree`, outside `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if not _type_checking(child):
                stack.append(child)


def import_graph(mods: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (a `from pkg import name` of a submodule counts
    as importing that submodule)."""

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in mods.items():
        package = name if is_package else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]
            deps |= {t for t in map(known, targets) if t is not None and t != name}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module."""
    names = sorted(graph)
    index = {n: i for i, n in enumerate(names)}
    rows = [index[a] for a in names for _ in graph[a]]
    cols = [index[b] for a in names for b in graph[a]]
    matrix = csr_matrix(([1] * len(rows), (rows, cols)), shape=(len(names), len(names)))
    _, labels = connected_components(matrix, directed=True, connection="strong")
    groups: dict[int, list[str]] = {}
    for name, label in zip(names, labels):
        groups.setdefault(int(label), []).append(name)
    return sorted(g for g in groups.values() if len(g) > 1)


def test_the_cycle_finder_sees_cycles_and_deferred_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")  # deferred: still an edge
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import y\n")
    (pkg / "d.py").write_text("from .c import z\n")  # c -> d only under TYPE_CHECKING: no cycle
    (pkg / "sub" / "__init__.py").write_text("def g():\n    from .leaf import h\n")
    (pkg / "sub" / "leaf.py").write_text("from . import g\n")  # back to its package: a cycle
    found = cycles(import_graph(modules(pkg)))
    assert found == [["pkg.a", "pkg.b"], ["pkg.sub", "pkg.sub.leaf"]]


def test_no_import_cycle_among_the_package_modules():
    mods = modules()
    assert len(mods) > 50 and "deepfakejudge.cli.parser" in mods
    found = cycles(import_graph(mods))
    if found:
        pytest.fail("import cycles (break each by moving what both sides need to a module of its own): "
                    + "; ".join(" <-> ".join(c) for c in found))


def test_one_version_source(capsys):
    import tomllib

    import deepfakejudge
    from deepfakejudge import _version
    from deepfakejudge.cli import main
    from deepfakejudge.results import provenance

    declared = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert deepfakejudge.__version__ == declared == _version._from_pyproject()  # installed and source-tree reads
    assert provenance()["deepfakejudge"] == declared
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out == f"deepfakejudge {declared}\n"
