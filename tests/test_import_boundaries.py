"""Imports flow nodes/ -> pplink/ <- coordinator/; only pplink/cli/ composes both sides.

Parsed with ast, so a forbidden edge fails here even if no test happens to import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, inside a function) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_func or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                out.extend((alias.name, child.lineno, in_func) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.append((child.module, child.lineno, in_func))
            visit(child, nested)

    visit(tree, False)
    return out


def _top(module: str) -> str:
    return module.split(".")[0]


def test_import_directions() -> None:
    problems = []
    for package, forbidden in (("pplink", {"nodes", "coordinator"}), ("nodes", {"coordinator"}),
                               ("coordinator", {"nodes"})):
        for path in sorted((ROOT / package).rglob("*.py")):
            in_cli = package == "pplink" and "cli" in path.relative_to(ROOT / package).parts[:1]
            for module, line, in_func in _imports(path):
                if _top(module) in forbidden and not (in_cli and in_func):
                    problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not problems, "\n".join(problems)


def test_checker_catches_a_forbidden_edge(tmp_path: Path) -> None:
    # The checker itself must see module-level and nested imports.
    bad = tmp_path / "bad.py"
    bad.write_text("import coordinator.linkage.match\ndef f():\n    from nodes import encode\n")
    assert [(m, f) for m, _, f in _imports(bad)] == [("coordinator.linkage.match", False), ("nodes", True)]
