"""Only the owner modules (`ess_common.states`) write a status column: the sources of every
library and service are read for the ways one is written, and any found elsewhere fails
with where it is."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWNERS = ROOT / "libs" / "ess_common" / "states"
#: The tables whose status a state machine owns, as their models are named.
MODELS = {"Request", "File", "Edge", "Notification"}
#: A status written in SQL text.
_SQL_WRITE = re.compile(r"\bSET\b[^;]*\bstatus\s*=", re.IGNORECASE | re.DOTALL)


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        found: list[ast.expr] = []
        for target in node.targets:
            found += target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
        return found
    if isinstance(node, ast.AugAssign | ast.AnnAssign):
        return [node.target]
    return []


def status_writes(source: str) -> list[tuple[int, str]]:
    """Where `source` writes a status: (line, what)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        for target in _targets(node):
            if isinstance(target, ast.Attribute) and target.attr == "status":
                found.append((target.lineno, f"{ast.unparse(target)} assigned"))
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            keywords = {k.arg for k in node.keywords}
            if name == "values" and (
                "status" in keywords
                or any(
                    isinstance(arg, ast.Dict)
                    and any(isinstance(k, ast.Constant) and k.value == "status" for k in arg.keys)
                    for arg in node.args
                )
            ):
                found.append((node.lineno, "update .values(status=...)"))
            if name in MODELS and "status" in keywords:
                found.append((node.lineno, f"{name}(status=...)"))
            if (
                name == "setattr"
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value == "status"
            ):
                found.append((node.lineno, "setattr(..., 'status', ...)"))
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _SQL_WRITE.search(node.value)
        ):
            found.append((node.lineno, "SQL SET status"))
    return found


def _sources() -> list[Path]:
    roots = [ROOT / "libs", ROOT / "services"]
    return sorted(
        path
        for root in roots
        for path in root.rglob("*.py")
        if OWNERS not in path.parents and "migrations" not in path.parts
    )


def test_only_the_owner_modules_write_a_status() -> None:
    sources = _sources()
    assert len(sources) > 100, "the sources were not found"
    writes = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in sources
        for line, what in status_writes(path.read_text())
    ]
    assert writes == [], "status written outside ess_common.states:\n" + "\n".join(writes)


def test_every_way_of_writing_a_status_is_seen() -> None:
    source = """
f.status = "split"
f.status, f.edge = "pending", None
request.status: str = "ready"
update(File).values(status="failed", error=reason)
update(File).values({"status": "failed"})
Edge(name="edge-a", status="alive")
setattr(f, "status", "split")
text("UPDATE files SET edge = NULL, status = 'pending' WHERE id = 1")
"""
    assert [line for line, _ in status_writes(source)] == [2, 3, 4, 5, 6, 7, 8, 9]


def test_reading_a_status_is_not_writing_it() -> None:
    source = """
select(File).where(File.status == "pending")
counts = {f.status: 1 for f in files}
Response(status=200)
view = RequestView(status=request.status)
"""
    assert status_writes(source) == []
