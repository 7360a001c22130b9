"""What a following `tail` says on stderr about broker outages (client/cli/tail.py's
Outage), driven with the errors a consumer's ``fetch_error`` gives after each poll."""

from __future__ import annotations

import pytest

from client.cli.tail import Outage
from client.errors import BrokerUnavailableError, ConnectionClosedError


def test_outage_is_said_once_with_its_reason_and_its_end_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Proves a failure that lasts two polls is said once (with the reason), however
    long it lasts, and its end once; a failure of one poll says nothing."""
    outage = Outage()
    outage.check(ConnectionClosedError("connection lost"))
    outage.check(None)  # reconnected at once: nothing to say
    assert capsys.readouterr().err == ""
    for _ in range(5):
        outage.check(ConnectionClosedError("connection to 127.0.0.1:1 lost"))
    outage.check(BrokerUnavailableError("broker unreachable at 127.0.0.1:1 (refused)"))
    outage.check(None)
    outage.check(None)
    assert capsys.readouterr().err.splitlines() == [
        "broker unreachable: connection to 127.0.0.1:1 lost; retrying until it is back",
        "broker reachable again: following on",
    ]
    outage.check(BrokerUnavailableError("broker unreachable at 127.0.0.1:1 (refused)"))
    outage.check(BrokerUnavailableError("broker unreachable at 127.0.0.1:1 (refused)"))
    assert capsys.readouterr().err == (
        "broker unreachable at 127.0.0.1:1 (refused); retrying until it is back\n"
    )
