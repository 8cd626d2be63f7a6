"""Imports flow nodes/ -> pplink/ <- coordinator/; only pplink/cli/ and pplink/lab/ compose both sides.

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
            # The CLI and the lab (demo and benchmark composition) may compose both sides, inside functions.
            in_composer = package == "pplink" and path.relative_to(ROOT / package).parts[0] in ("cli", "lab")
            for module, line, in_func in _imports(path):
                if _top(module) in forbidden and not (in_composer and in_func):
                    problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not problems, "\n".join(problems)


#: The shared contract (top-level ``pplink`` modules) may import only itself; each subpackage may
#: import the contract and the subpackages listed here (docs/architecture.md has the picture).
_PPLINK_ROOMS: dict[str, set[str]] = {
    "scoring": set(),
    "transport": set(),
    "audit": {"scoring"},
    "lab": {"scoring", "audit", "transport"},
}

#: Where Flower may be imported: its adapters, the transport helpers, and the Flower record codecs.
_FLOWER_ROOMS = ("pplink/transport/", "pplink/wire.py", "pplink/cli/", "coordinator/flower/", "nodes/flower/")


def _room(path: Path) -> str | None:
    parts = path.relative_to(ROOT / "pplink").parts
    return parts[0] if len(parts) > 1 else None


def test_pplink_rooms_import_only_what_their_room_allows() -> None:
    problems = []
    for path in sorted((ROOT / "pplink").rglob("*.py")):
        room = _room(path)
        if room == "cli":
            continue
        allowed = {room} | _PPLINK_ROOMS.get(room, set()) if room else set()
        for module, line, _ in _imports(path):
            parts = module.split(".")
            if parts[0] != "pplink" or len(parts) < 2 or not (ROOT / "pplink" / parts[1]).is_dir():
                continue  # a contract module, or not pplink
            if parts[1] not in allowed:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not problems, "\n".join(problems)


def test_flower_is_imported_only_by_its_adapters() -> None:
    problems = []
    for package in ("pplink", "nodes", "coordinator"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(_FLOWER_ROOMS):
                continue
            problems += [f"{rel}:{line} imports {m}" for m, line, _ in _imports(path) if _top(m) == "flwr"]
    assert not problems, "\n".join(problems)


def test_library_code_never_imports_the_cli() -> None:
    # The CLI is the composition root: the library and benchmarks call the library, never a click module.
    problems = []
    for folder in ("nodes", "coordinator", "pplink", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("pplink/cli/"):
                continue
            problems += [f"{rel}:{line} imports {m}" for m, line, _ in _imports(path) if m.startswith("pplink.cli")]
    assert not problems, "\n".join(problems)


def test_checker_catches_a_forbidden_edge(tmp_path: Path) -> None:
    # The checker itself must see module-level and nested imports.
    bad = tmp_path / "bad.py"
    bad.write_text("import coordinator.linkage.match\ndef f():\n    from nodes import encode\n")
    assert [(m, f) for m, _, f in _imports(bad)] == [("coordinator.linkage.match", False), ("nodes", True)]
