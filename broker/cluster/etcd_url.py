"""Parse a cluster URL: ``etcd://HOST:PORT[,HOST:PORT...]/PREFIX``.

Every broker of a cluster names the same etcd endpoints and the same prefix; every
key of the cluster lives under ``PREFIX/``.  HOST is a name, an IPv4 address or an
IPv6 address in brackets (``[::1]:2379``); PORT is required.  PREFIX is one or more
``/``-separated segments of ``[A-Za-z0-9._-]`` (neither ``.`` nor ``..``), so two
clusters on one etcd never share keys by accident.  Errors are one line, naming
what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from client.errors import InvalidConfigError

SCHEME: Final = "etcd://"
_HOST_NAME: Final = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_PREFIX_SEGMENT: Final = re.compile(r"^[A-Za-z0-9._-]+$")
ENDPOINTS_MAX: Final = 16
PREFIX_BYTES_MAX: Final = 200


@dataclass(frozen=True, slots=True)
class EtcdUrl:
    """The parsed URL: endpoints as (host, port) and the key prefix with no slashes
    at either end (keys are stored under ``prefix + "/"``)."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str

    def base_urls(self) -> tuple[str, ...]:
        """``http://host:port`` for each endpoint (IPv6 hosts in brackets)."""
        return tuple(
            f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            for host, port in self.endpoints
        )

    def __str__(self) -> str:
        hosts = ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.endpoints
        )
        return f"{SCHEME}{hosts}/{self.prefix}"


def _parse_endpoint(text: str, url: str) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise InvalidConfigError(f"cluster URL {url!r}: bad IPv6 endpoint {text!r}")
        port_text = rest[1:]
        if not host or not all(c in "0123456789abcdefABCDEF:." for c in host):
            raise InvalidConfigError(f"cluster URL {url!r}: bad IPv6 address {host!r}")
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise InvalidConfigError(
                f"cluster URL {url!r}: endpoint {text!r} needs a port (HOST:PORT)"
            )
        if _HOST_NAME.match(host) is None:
            raise InvalidConfigError(f"cluster URL {url!r}: bad host {host!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise InvalidConfigError(f"cluster URL {url!r}: bad port {port_text!r} (1-65535)")
    return host, int(port_text)


def parse_etcd_url(url: str) -> EtcdUrl:
    """Parse ``etcd://HOST:PORT[,HOST:PORT...]/PREFIX``.

    Raises InvalidConfigError (one line) when the URL is not of that form.
    """
    if not url.startswith(SCHEME):
        scheme = url.partition("://")[0] if "://" in url else url
        raise InvalidConfigError(
            f"cluster URL {url!r}: unsupported scheme {scheme!r}, expected etcd://HOST:PORT/PREFIX"
        )
    rest = url[len(SCHEME) :]
    if any(c in rest for c in "?#@ \t"):
        raise InvalidConfigError(
            f"cluster URL {url!r}: user info, query, fragment and spaces are not allowed"
        )
    hosts_text, slash, prefix = rest.partition("/")
    if not hosts_text:
        raise InvalidConfigError(f"cluster URL {url!r}: no endpoint (etcd://HOST:PORT/PREFIX)")
    if not slash or not prefix.strip("/"):
        raise InvalidConfigError(
            f"cluster URL {url!r}: no key prefix (etcd://HOST:PORT/PREFIX, e.g. /distributary)"
        )
    endpoints = tuple(_parse_endpoint(part, url) for part in hosts_text.split(","))
    if len(endpoints) > ENDPOINTS_MAX:
        raise InvalidConfigError(f"cluster URL {url!r}: more than {ENDPOINTS_MAX} endpoints")
    if len(set(endpoints)) != len(endpoints):
        raise InvalidConfigError(f"cluster URL {url!r}: an endpoint is listed twice")
    prefix = prefix.strip("/")
    if len(prefix) > PREFIX_BYTES_MAX:
        raise InvalidConfigError(
            f"cluster URL {url!r}: prefix longer than {PREFIX_BYTES_MAX} characters"
        )
    for segment in prefix.split("/"):
        if _PREFIX_SEGMENT.match(segment) is None or segment in (".", ".."):
            raise InvalidConfigError(
                f"cluster URL {url!r}: bad prefix segment {segment!r} "
                "(each of [A-Za-z0-9._-], not . or ..)"
            )
    return EtcdUrl(endpoints, prefix)
