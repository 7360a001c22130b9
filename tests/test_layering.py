"""The layering rules: `client` never imports `broker`; the sans-I/O cores do no I/O.

A sans-I/O core (the wire codec, the record format, the state machines of
partitions, producers, fetches, response order and consumer groups, the
metadata store's interface) must not import an event loop or sockets, neither
itself nor through any project module it imports: imports are followed through
the project (absolute and relative ones), so a core cannot pick up trio by
importing a helper that does.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = {"client", "broker"}
# Whole packages that are sans-I/O, and single sans-I/O modules elsewhere.
SANS_IO_PACKAGES = ["client/records", "client/protocol"]
SANS_IO_MODULES = [
    "broker/producer_state.py",
    "broker/partition_state.py",
    "broker/fetch_session.py",
    "broker/response_slots.py",
    "broker/groups/coordinator.py",
    "broker/groups/membership.py",
    "broker/groups/assignment.py",
    "broker/groups/offsets.py",
    "broker/groups/group.py",
    "broker/groups/assignors.py",
    "broker/groups/records.py",
    "broker/cluster/store.py",
    "broker/replication/epochs.py",
    "broker/replication/leader_state.py",
    "broker/replication/follower_state.py",
    "broker/replication/election.py",
    "broker/replication/roles.py",
    "client/fetcher.py",
    "client/accumulator.py",
]
FORBIDDEN_IN_SANS_IO = {"trio", "anyio", "asyncio", "socket", "selectors", "httpx"}


def module_name(path: Path) -> str:
    if not path.is_relative_to(ROOT):
        return path.stem
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> Path | None:
    """The file of a project module (or package), None when it is not one."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names; relative imports are
    resolved against the module's package, and ``from package import name`` also
    counts ``package.name`` (it may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                assert node.module is not None
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def forbidden_imports(path: Path) -> dict[str, set[str]]:
    """``{module file: forbidden roots it imports}`` over ``path`` and every project
    module it imports, transitively."""
    seen: set[Path] = set()
    pending = [path]
    offenders: dict[str, set[str]] = {}
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        modules = imported_modules(current)
        bad = {name.split(".")[0] for name in modules} & FORBIDDEN_IN_SANS_IO
        if bad:
            offenders[str(current.relative_to(ROOT))] = bad
        for name in modules:
            if name.split(".")[0] in PROJECT_PACKAGES:
                target = module_path(name)
                if target is not None:
                    pending.append(target)
    return offenders


def sans_io_files() -> list[Path]:
    files = [path for package in SANS_IO_PACKAGES for path in (ROOT / package).rglob("*.py")]
    return sorted(files) + [ROOT / module for module in SANS_IO_MODULES]


def test_client_never_imports_broker() -> None:
    """Proves the SDK can be installed and used without the server code."""
    files = sorted((ROOT / "client").rglob("*.py"))
    assert files, "no client modules found"
    offenders = [str(f.relative_to(ROOT)) for f in files if "broker" in imported_roots(f)]
    assert offenders == []


def test_sans_io_cores_do_no_io() -> None:
    """Proves every sans-I/O core (codecs, state machines) imports no event loop or
    socket, directly or through the project modules it imports."""
    files = sans_io_files()
    assert all(path.is_file() for path in files), [str(p) for p in files if not p.is_file()]
    offenders = {str(path.relative_to(ROOT)): forbidden_imports(path) for path in files}
    assert {core: found for core, found in offenders.items() if found} == {}


def test_layering_check_detects_a_violation(tmp_path: Path) -> None:
    """Proves the import scanner itself works (so the tests above can fail)."""
    sample = tmp_path / "sample.py"
    sample.write_text("import trio\nfrom broker.storage import log\n")
    assert {"trio", "broker"} <= imported_roots(sample)


def test_transitive_and_relative_imports_are_followed() -> None:
    """Proves the check follows project imports, relative ones included: a core that
    imported broker.waiting (which imports trio) would be caught through it."""
    trio_user = ROOT / "broker" / "waiting.py"
    assert "trio" in imported_roots(trio_user)
    assert "broker.waiting" in imported_modules(ROOT / "broker" / "partition.py")
    assert forbidden_imports(ROOT / "broker" / "partition.py")
    relative = imported_modules(ROOT / "tests" / "unit" / "storage" / "test_storage_log.py")
    assert "tests.unit.storage.conftest" in relative
