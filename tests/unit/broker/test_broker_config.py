"""Config layering (defaults < TOML < environment < flags) and its error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import (
    DEFAULT_PORT,
    BrokerConfig,
    ConfigError,
    env_name,
    load_config,
    parse_listen,
    read_toml,
)
from broker.storage.config import FlushPolicy


def test_defaults_are_a_single_local_node() -> None:
    """With no sources the broker listens on 127.0.0.1:9392 with data in ./distributary-data."""
    config = load_config().config
    assert DEFAULT_PORT == 9392
    assert (config.host, config.port) == ("127.0.0.1", 9392)
    assert config.data_dir == "./distributary-data"
    assert config.auto_create_topics is True
    assert config.default_partitions == 1


def test_precedence_flags_over_env_over_file() -> None:
    """Each layer overrides the one below it, key by key."""
    file_values = {
        "listen": "127.0.0.1:1000",
        "data_dir": "/file",
        "auto_create_topics": True,
        "limits": {"connections_max": 7, "inflight_requests_max": 9},
    }
    environ = {
        "DISTRIBUTARY_DATA_DIR": "/env",
        "DISTRIBUTARY_LISTEN": "127.0.0.1:2000",
        "DISTRIBUTARY_AUTO_CREATE_TOPICS": "false",
        "DISTRIBUTARY_LIMITS__CONNECTIONS_MAX": "11",
        "HOME": "/ignored",
    }
    loaded = load_config(
        file_values=file_values,
        environ=environ,
        flags={"listen": "127.0.0.1:3000", "data_dir": None},
    )
    config = loaded.config
    assert config.listen == "127.0.0.1:3000"  # flag
    assert config.data_dir == "/env"  # env beats file; the flag was unset
    assert config.auto_create_topics is False
    assert config.limits.connections_max == 11
    assert config.limits.inflight_requests_max == 9  # file, untouched by env
    assert loaded.sources[0] == "defaults" and "--listen" in loaded.sources


def test_topic_defaults_from_file_and_env() -> None:
    """[topic_defaults] feeds the LogConfig of every topic; env can say null for no limit."""
    config = load_config(
        file_values={"topic_defaults": {"flush_policy": "interval", "retention_ms": 5}},
        environ={"DISTRIBUTARY_TOPIC_DEFAULTS__RETENTION_MS": "null"},
    ).config
    assert config.topic_defaults.flush_policy is FlushPolicy.INTERVAL
    assert config.topic_defaults.retention_ms is None


@pytest.mark.parametrize(
    ("file_values", "expected"),
    [
        ({"lisen": "x"}, "unknown key 'lisen'"),
        ({"limits": {"conections_max": 1}}, "unknown key 'limits.conections_max'"),
        ({"topic_defaults": {"retention": 1}}, "unknown key 'topic_defaults.retention'"),
        ({"limits": {"frame_bytes_max": "big"}}, "limits.frame_bytes_max: Expected `int`"),
        ({"limits": {"connections_max": 0}}, "limits.connections_max: Expected `int` >= 1"),
        ({"log_format": "xml"}, "log_format"),
        ({"topic_defaults": {"segment_bytes": 5}}, "segment_bytes=5 is out of range"),
        ({"listen": "no-port"}, "listen: expected HOST:PORT"),
        ({"limits": {"fetch_bytes_max": 2 << 30}}, "fetch_bytes_max"),
    ],
)
def test_bad_file_values_name_the_key(file_values: dict[str, object], expected: str) -> None:
    """An unknown key, a wrong type or an out-of-range value is an error naming it."""
    with pytest.raises(ConfigError) as raised:
        load_config(file_values=file_values, file_name="x.toml")
    assert expected in raised.value.message


def test_file_values_are_strict_env_values_are_converted() -> None:
    """ "5" is a type error in TOML but the normal way to say 5 in the environment."""
    with pytest.raises(ConfigError, match="Expected `int`"):
        load_config(file_values={"default_partitions": "5"})
    config = load_config(environ={"DISTRIBUTARY_DEFAULT_PARTITIONS": "5"}).config
    assert config.default_partitions == 5


def test_bad_env_value_names_the_variable() -> None:
    """A variable whose value does not convert names itself in the error."""
    with pytest.raises(ConfigError, match="DISTRIBUTARY_AUTO_CREATE_TOPICS='maybe'"):
        load_config(environ={"DISTRIBUTARY_AUTO_CREATE_TOPICS": "maybe"})


def test_unknown_env_variable_is_a_warning_not_an_error() -> None:
    """DISTRIBUTARY_* variables the broker does not know (client tools share the prefix)
    are reported, not fatal; DISTRIBUTARY_CONFIG is the config file, not a key."""
    loaded = load_config(
        environ={
            "DISTRIBUTARY_BOOTSTRAP": "x",
            "DISTRIBUTARY_LIMITS__NOPE": "1",
            "DISTRIBUTARY_CONFIG": "f",
        }
    )
    assert loaded.warnings == [
        "ignoring unknown environment variable DISTRIBUTARY_BOOTSTRAP",
        "ignoring unknown environment variable DISTRIBUTARY_LIMITS__NOPE",
    ]


def test_env_names_follow_the_scheme() -> None:
    """Top-level keys are DISTRIBUTARY_KEY; table keys DISTRIBUTARY_TABLE__KEY."""
    assert env_name("data_dir") == "DISTRIBUTARY_DATA_DIR"
    assert env_name("limits", "frame_bytes_max") == "DISTRIBUTARY_LIMITS__FRAME_BYTES_MAX"
    samples = {
        "listen": "127.0.0.1:1",
        "metrics_listen": "127.0.0.1:2",
        "log_format": "json",
        "log_level": "debug",
        "advertise": "broker.example:9392",
        "cluster": "etcd://127.0.0.1:2379/distributary",
    }
    for field in BrokerConfig.__struct_fields__:
        if field in ("limits", "topic_defaults", "groups"):
            continue
        loaded = load_config(environ={env_name(field): samples.get(field, "1")})
        assert loaded.warnings == [], field
        assert env_name(field) in loaded.sources


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9392", ("127.0.0.1", 9392)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        (":9000", ("127.0.0.1", 9000)),
        ("[::1]:9392", ("::1", 9392)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    """HOST:PORT parses, including bracketed IPv6 and an empty host."""
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["9392", "host:", "host:99999", "a:b:c", "host:port"])
def test_parse_listen_rejects(value: str) -> None:
    """Anything but HOST:PORT with a port in range is refused."""
    with pytest.raises(ConfigError):
        parse_listen(value)


def test_read_toml_errors(tmp_path: Path) -> None:
    """A missing file and a non-TOML file are ConfigErrors naming the file."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_toml(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("= 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(bad)
    good = tmp_path / "good.toml"
    good.write_text('listen = "127.0.0.1:1"\n[limits]\nconnections_max = 2\n')
    assert read_toml(good) == {"listen": "127.0.0.1:1", "limits": {"connections_max": 2}}


def test_cluster_keys_are_checked() -> None:
    """Proves a bad cluster URL or an advertised address without a port is a
    ConfigError naming the key, and good ones load."""
    with pytest.raises(ConfigError, match=r"^cluster: .*unsupported scheme"):
        load_config(flags={"cluster": "http://127.0.0.1:2379/x"})
    with pytest.raises(ConfigError, match=r"^advertise: "):
        load_config(flags={"advertise": "broker.example"})
    loaded = load_config(
        flags={"cluster": "etcd://e1:2379,e2:2379/p", "advertise": "b:1", "rack": "r1"}
    )
    assert loaded.config.cluster == "etcd://e1:2379,e2:2379/p"
    assert (loaded.config.advertise, loaded.config.rack) == ("b:1", "r1")


@pytest.mark.parametrize("content", [b"\xff\xfe\x00\x81", b"listen = '\xc3\x28'\n"])
def test_read_toml_of_bytes_that_are_not_utf8_is_a_config_error(
    tmp_path: Path, content: bytes
) -> None:
    """A config file that is not UTF-8 text is a ConfigError naming the file."""
    path = tmp_path / "binary.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        read_toml(path)


def test_topic_defaults_batch_must_fit_the_frame_limit() -> None:
    """topic_defaults.batch_bytes_max set above what limits.frame_bytes_max can carry
    is a ConfigError naming both keys; the built-in default is not held against a
    small frame limit."""
    with pytest.raises(ConfigError, match=r"topic_defaults\.batch_bytes_max=.*frame_bytes_max"):
        load_config(
            file_values={
                "limits": {"frame_bytes_max": 8 << 20, "fetch_bytes_max": 4 << 20},
                "topic_defaults": {"batch_bytes_max": 6 << 20},
            }
        )
    load_config(file_values={"limits": {"frame_bytes_max": 64 << 20}})
    load_config(file_values={"limits": {"frame_bytes_max": 65536, "fetch_bytes_max": 32768}})
