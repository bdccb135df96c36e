"""ARCHITECTURE.md's import table is the law: every module's imports are checked against it."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("storage", "harvest", "training", "bot", "twin")
ROW = re.compile(r"^\|\s*`(\w+)/`\s*\|[^|]*\|(?P<allowed>[^|]*)\|\s*$")


def allowed_imports() -> dict[str, set[str]]:
    """Package -> what it may import, read from the table in ARCHITECTURE.md."""
    table: dict[str, set[str]] = {}
    for line in (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            names = set(re.findall(r"`([\w.]+)`", match["allowed"]))
            if "all of the above" in match["allowed"]:
                names |= set(PACKAGES)
            table[match[1]] = names
    return table


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            relative = path.relative_to(ROOT).with_suffix("")
            name = ".".join(relative.parts)
            yield name.removesuffix(".__init__"), path


def imports_of(path: Path) -> Iterator[tuple[str, int, bool]]:
    """Every import of our packages: (module, line, whether it runs: not under TYPE_CHECKING).

    An import inside a function runs too: moving an import into a function hides a circle
    from Python, not from the design.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(child) for child in ast.walk(node)}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES:
                yield name, node.lineno, id(node) not in typing_only


def permitted(name: str, allowed: set[str]) -> bool:
    return any(name == rule or name.startswith(rule + ".") for rule in allowed)


def test_the_table_names_every_package() -> None:
    assert set(allowed_imports()) == set(PACKAGES)


def test_every_import_follows_the_architecture_table() -> None:
    table = allowed_imports()
    broken = []
    for module, path in modules():
        package = module.split(".")[0]
        for name, line, _ in imports_of(path):
            target = name.split(".")[0]
            if target == package or permitted(name, table[package]):
                continue
            if "." in name and permitted(name.rsplit(".", 1)[0], table[package]):
                continue  # `from training.prompt import X` names X too
            broken.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not broken, "\n".join(broken)


def test_no_module_imports_itself_back_in_a_circle() -> None:
    known = dict(modules())
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        targets = set()
        for name, _, runs in imports_of(path):
            if runs:
                while name and name not in known:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    targets.add(name)
        graph[module] = targets
    circles = list(_circles(graph))
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def _circles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Each strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> Iterator[list[str]]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                yield from visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                yield sorted(group)

    for node in sorted(graph):
        if node not in index:
            yield from visit(node)
