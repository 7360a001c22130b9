"""Broker addresses as users write them: ``host:port``, ``host`` (the default
port), ``[ipv6]:port``, several separated by commas.

:func:`parse_addresses` checks each one without any I/O (a host name is looked up
only when connecting) and says in one line what is wrong with a bad one: an
empty host, a port that is not a number or lies outside 1-65535, an IPv6 address
without brackets, stray characters.  The CLI validates ``--bootstrap`` with it
before connecting; the SDK's clients parse their ``bootstrap`` argument with it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Final

# The broker's default port (broker/config.py DEFAULT_PORT; the client does not
# import the broker).
DEFAULT_PORT: Final = 9392
PORT_MIN: Final = 1
PORT_MAX: Final = 65535
# RFC 1123 host names: labels of letters, digits and hyphens, dot-separated,
# 253 characters at most.  IPv4 addresses match it too.
HOST_NAME_CHARACTERS_MAX: Final = 253
_HOST_NAME: Final = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)


class AddressError(ValueError):
    """A broker address that cannot be parsed; the message says why, in one line."""


def parse_address(text: str) -> tuple[str, int]:
    """One ``host[:port]`` or ``[ipv6][:port]``.  Raises AddressError."""
    item = text.strip()
    if not item:
        raise AddressError("empty broker address")
    if "://" in item:
        raise AddressError(f"broker address {item!r}: write HOST:PORT, not a URL")
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket:
            raise AddressError(f"broker address {item!r}: missing ']' after the IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(
                f"broker address {item!r}: {host!r} is not an IPv6 address"
            ) from None
        if rest and not rest.startswith(":"):
            raise AddressError(f"broker address {item!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
    elif item.count(":") > 1:
        raise AddressError(
            f"broker address {item!r}: write an IPv6 address in brackets, e.g. [::1]:{DEFAULT_PORT}"
        )
    else:
        host, colon, port_text_or_empty = item.partition(":")
        port_text = port_text_or_empty if colon else None
        if not host:
            raise AddressError(f"broker address {item!r}: the host is missing")
        if _HOST_NAME.match(host) is None:
            raise AddressError(f"broker address {item!r}: {host!r} is not a valid host name")
    return host, _parse_port(item, port_text)


def _parse_port(item: str, port_text: str | None) -> int:
    if port_text is None:
        return DEFAULT_PORT
    if not port_text.isascii() or not port_text.isdigit():
        raise AddressError(f"broker address {item!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not PORT_MIN <= port <= PORT_MAX:
        raise AddressError(
            f"broker address {item!r}: port {port} is out of range [{PORT_MIN}, {PORT_MAX}]"
        )
    return port


def parse_addresses(bootstrap: str | Sequence[str]) -> list[tuple[str, int]]:
    """``"host:port,host2:port"`` or a sequence of addresses -> (host, port) pairs,
    in order.  Empty items between commas are skipped.  Raises AddressError (also
    when no address is left)."""
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    addresses = [parse_address(item) for item in items if item.strip()]
    if not addresses:
        raise AddressError(f"no broker address in {bootstrap!r}")
    return addresses
