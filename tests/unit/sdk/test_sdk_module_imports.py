"""The SDK modules split by concept import what their layer allows: no circles, sans-I/O cores."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def module_imports(module: str) -> list[str]:
    """The absolute module names ``module`` imports (relative imports are refused)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{module}: relative import"
            names.append(node.module)
    return names


def client_closure(module: str) -> set[str]:
    """``module`` and every client module it imports, directly or not (the
    package's __init__ aside)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported for imported in module_imports(name) if imported.startswith("client."))
    return seen


def test_fetcher_imports_no_event_loop_or_socket() -> None:
    """Proves client/fetcher.py (and the client modules it imports) stay sans-I/O."""
    forbidden = {"anyio", "trio", "asyncio", "socket", "sniffio"}
    for module in client_closure("client.fetcher"):
        for name in module_imports(module):
            assert name.split(".")[0] not in forbidden, f"{module} imports {name}"


def test_group_membership_does_not_import_the_consumer() -> None:
    """Proves client/group.py reaches its consumer only through the GroupMember
    protocol: no import of client.consumer, directly or through another module."""
    assert "client.consumer" not in client_closure("client.group")
