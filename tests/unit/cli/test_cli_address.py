"""Broker addresses as users type them (client/address.py): what parses, and the
one-line reason for what does not."""

from __future__ import annotations

import pytest

from client.address import DEFAULT_PORT, AddressError, parse_addresses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:9092", [("localhost", 9092)]),
        ("broker-1.example.com", [("broker-1.example.com", DEFAULT_PORT)]),
        ("10.0.0.1:1, 10.0.0.2:65535", [("10.0.0.1", 1), ("10.0.0.2", 65535)]),
        ("[::1]:9000,[fe80::1]", [("::1", 9000), ("fe80::1", DEFAULT_PORT)]),
        ("a:1,,b:2,", [("a", 1), ("b", 2)]),
    ],
)
def test_good_addresses_parse(text: str, expected: list[tuple[str, int]]) -> None:
    """host, host:port, [ipv6]:port and comma lists parse in order."""
    assert parse_addresses(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("localhost:0", "out of range"),
        ("localhost:65536", "out of range"),
        ("localhost:-1", "not a number"),
        ("localhost:http", "not a number"),
        ("localhost:", "not a number"),
        (":9392", "host is missing"),
        ("::1", "brackets"),
        ("[::1", "missing ']'"),
        ("[nothex]:1", "not an IPv6 address"),
        ("[::1]x", "expected ':PORT'"),
        ("bad host", "not a valid host name"),
        ("host/path:1", "not a valid host name"),
        ("http://host:1", "not a URL"),
        ("", "no broker address"),
        (" , ", "no broker address"),
    ],
)
def test_bad_addresses_say_why(text: str, reason: str) -> None:
    """Each malformed address raises AddressError (a ValueError) with its reason."""
    with pytest.raises(AddressError, match=reason):
        parse_addresses(text)
    assert issubclass(AddressError, ValueError)
