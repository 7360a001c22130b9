"""The layering rules: `client` never imports `broker`; the wire and record modules do no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Sans-I/O modules: they must not import an event loop or sockets.
SANS_IO_PACKAGES = ["client/records", "client/protocol"]
FORBIDDEN_IN_SANS_IO = {"trio", "anyio", "asyncio", "socket", "selectors"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_client_never_imports_broker() -> None:
    """Proves the SDK can be installed and used without the server code."""
    files = sorted((ROOT / "client").rglob("*.py"))
    assert files, "no client modules found"
    offenders = [str(f.relative_to(ROOT)) for f in files if "broker" in imported_roots(f)]
    assert offenders == []


def test_wire_and_record_modules_do_no_io() -> None:
    """Proves the codecs stay sans-I/O (testable and fuzzable without sockets)."""
    checked = 0
    offenders: list[str] = []
    for package in SANS_IO_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            checked += 1
            bad = imported_roots(path) & FORBIDDEN_IN_SANS_IO
            if bad:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert checked > 0
    assert offenders == []


def test_layering_check_detects_a_violation(tmp_path: Path) -> None:
    """Proves the import scanner itself works (so the two tests above can fail)."""
    sample = tmp_path / "sample.py"
    sample.write_text("import trio\nfrom broker.storage import log\n")
    assert {"trio", "broker"} <= imported_roots(sample)
