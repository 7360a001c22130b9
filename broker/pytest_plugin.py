"""A pytest plugin: a real Distributary broker for your application's tests.

Installed with the package (entry point ``pytest11``), so ``pip install
distributary`` is enough for pytest to offer:

``distributary_broker``
    a :class:`~broker.testing.BrokerProcess` started on 127.0.0.1 on a free port,
    in a temporary directory; ``.address`` ("127.0.0.1:PORT") is its bootstrap address for the SDK and the CLI.
    Stopped (SIGTERM, then SIGKILL) at teardown.
``distributary_admin``
    a blocking :class:`client.sync.Admin` connected to that broker (create and
    delete topics, inspect groups); closed at teardown.

Scope: one broker per test by default (each test starts from an empty broker);
``--distributary-scope=session`` or the ini option ``distributary_scope =
session`` shares one broker across the whole run, which is faster when the
tests use distinct topic names.  Broker settings: ``--distributary-config
PATH`` (or ini ``distributary_config``) passes a TOML config file to the broker.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from broker.testing import BrokerProcess
from client.sync import Admin

SCOPES: Final = ("function", "session")
_SCOPE_OPTION: Final = "distributary_scope"
_CONFIG_OPTION: Final = "distributary_config"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("distributary", "Distributary broker fixtures")
    group.addoption(
        "--distributary-scope",
        dest=_SCOPE_OPTION,
        choices=SCOPES,
        default=None,
        help="one broker per test (function, the default) or one for the whole run (session)",
    )
    group.addoption(
        "--distributary-config",
        dest=_CONFIG_OPTION,
        default=None,
        metavar="PATH",
        help="a TOML config file for the broker that distributary_broker starts",
    )
    parser.addini(_SCOPE_OPTION, "distributary_broker's scope: function or session", default="")
    parser.addini(_CONFIG_OPTION, "a TOML config file for distributary_broker", default="")


def _option(config: pytest.Config, name: str) -> str:
    value = config.getoption(name)
    return str(value) if value else str(config.getini(name))


def pytest_configure(config: pytest.Config) -> None:
    """Refuses a scope that is neither function nor session (pytest.UsageError: one line)."""
    scope = _option(config, _SCOPE_OPTION)
    if scope and scope not in SCOPES:
        raise pytest.UsageError(
            f"distributary_scope must be one of {', '.join(SCOPES)}, not {scope!r}"
        )


def _broker_scope(*, fixture_name: str, config: pytest.Config) -> str:
    """The scope of ``distributary_broker``, from the command line or the ini file
    (checked by pytest_configure)."""
    return _option(config, _SCOPE_OPTION) or "function"


@pytest.fixture(scope=_broker_scope)  # type: ignore[arg-type]  # pytest takes a callable
def distributary_broker(pytestconfig: pytest.Config) -> Iterator[BrokerProcess]:
    """A running broker on 127.0.0.1 (see the module docstring)."""
    config_path = _option(pytestconfig, _CONFIG_OPTION)
    args = ["--config", str(Path(config_path).resolve())] if config_path else []
    with tempfile.TemporaryDirectory(prefix="distributary-test-") as work_dir:
        broker = BrokerProcess(Path(work_dir), args=args)
        try:
            broker.start()
            yield broker
        finally:
            broker.stop()


@pytest.fixture
def distributary_admin(distributary_broker: BrokerProcess) -> Iterator[Admin]:
    """A blocking Admin client connected to ``distributary_broker``."""
    with Admin(distributary_broker.address) as admin:
        yield admin
