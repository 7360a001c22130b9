"""The cluster URL parser: etcd://HOST:PORT[,HOST:PORT...]/PREFIX."""

from __future__ import annotations

import pytest

from broker.cluster.etcd_url import parse_etcd_url
from client.errors import InvalidConfigError


def test_one_endpoint_and_a_prefix() -> None:
    """Proves the plain form parses into endpoints and a prefix without slashes."""
    url = parse_etcd_url("etcd://127.0.0.1:2379/distributary")
    assert url.endpoints == (("127.0.0.1", 2379),)
    assert url.prefix == "distributary"
    assert url.base_urls() == ("http://127.0.0.1:2379",)


def test_several_endpoints_ipv6_and_a_nested_prefix() -> None:
    """Proves lists, host names, bracketed IPv6 and multi-segment prefixes parse, and
    the URL prints back the same."""
    text = "etcd://etcd-1.example:2379,[::1]:23790,10.0.0.3:2379/prod/cluster-a"
    url = parse_etcd_url(text)
    assert url.endpoints == (("etcd-1.example", 2379), ("::1", 23790), ("10.0.0.3", 2379))
    assert url.prefix == "prod/cluster-a"
    assert url.base_urls()[1] == "http://[::1]:23790"
    assert str(url) == text


def test_trailing_slashes_of_the_prefix_are_dropped() -> None:
    """Proves /p/ and /p name the same cluster."""
    assert parse_etcd_url("etcd://h:1/p/").prefix == parse_etcd_url("etcd://h:1/p").prefix


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("http://127.0.0.1:2379/p", "unsupported scheme 'http'"),
        ("127.0.0.1:2379/p", "unsupported scheme"),
        ("etcd:///p", "no endpoint"),
        ("etcd://127.0.0.1:2379", "no key prefix"),
        ("etcd://127.0.0.1:2379/", "no key prefix"),
        ("etcd://127.0.0.1/p", "needs a port"),
        ("etcd://127.0.0.1:0/p", "bad port '0'"),
        ("etcd://127.0.0.1:70000/p", "bad port '70000'"),
        ("etcd://127.0.0.1:x/p", "bad port 'x'"),
        ("etcd://a:1,,b:2/p", "needs a port"),
        ("etcd://a:1,a:1/p", "listed twice"),
        ("etcd://bad_host:1/p", "bad host 'bad_host'"),
        ("etcd://[::1/p", "bad IPv6 endpoint"),
        ("etcd://[zz]:1/p", "bad IPv6 address"),
        ("etcd://h:1/a//b", "bad prefix segment ''"),
        ("etcd://h:1/a/../b", "bad prefix segment '..'"),
        ("etcd://h:1/a b", "spaces are not allowed"),
        ("etcd://user@h:1/p", "user info"),
        ("etcd://h:1/p?x=1", "query"),
        ("etcd://h:1/p$", "bad prefix segment 'p$'"),
    ],
)
def test_bad_urls_get_a_one_line_error(text: str, reason: str) -> None:
    """Proves each malformed URL is refused with InvalidConfigError naming the problem
    in one line that quotes the URL."""
    with pytest.raises(InvalidConfigError) as error:
        parse_etcd_url(text)
    message = str(error.value)
    assert reason in message
    assert repr(text) in message
    assert "\n" not in message
