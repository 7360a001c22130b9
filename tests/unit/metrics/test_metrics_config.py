"""Where the metrics endpoint listens: ``metrics_listen`` (broker/config.py)."""

from __future__ import annotations

import pytest

from broker.config import ConfigError, load_config


def address(**flags: str) -> tuple[str, int] | None:
    return load_config(flags=flags).config.metrics_address


def test_auto_is_the_listen_host_and_next_port() -> None:
    """By default the endpoint is on the broker's host, one port up; with the
    broker on port 0 (or 65535) it takes a free port."""
    assert address() == ("127.0.0.1", 9393)
    assert address(listen="127.0.0.3:7000") == ("127.0.0.3", 7001)
    assert address(listen="127.0.0.1:0") == ("127.0.0.1", 0)
    assert address(listen="127.0.0.1:65535") == ("127.0.0.1", 0)


def test_explicit_and_off() -> None:
    """An explicit HOST:PORT is taken as is; "off" means no endpoint."""
    assert address(metrics_listen="0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert address(metrics_listen="off") is None


def test_environment_and_file_set_it_too() -> None:
    """The key is set like any other: file, then environment, then flag."""
    loaded = load_config(
        file_values={"metrics_listen": "127.0.0.1:9200"},
        environ={"DISTRIBUTARY_METRICS_LISTEN": "127.0.0.1:9300"},
    )
    assert loaded.config.metrics_address == ("127.0.0.1", 9300)


@pytest.mark.parametrize("value", ["nope", "127.0.0.1", "127.0.0.1:70000", ""])
def test_a_malformed_address_is_a_config_error(value: str) -> None:
    """A malformed metrics_listen stops the broker with a line naming the key."""
    with pytest.raises(ConfigError, match="metrics_listen"):
        load_config(flags={"metrics_listen": value})
