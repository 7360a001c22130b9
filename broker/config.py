"""The broker's configuration: a TOML file, then environment variables, then flags.

Sources are layered (later wins): built-in defaults < the TOML file <
``DISTRIBUTARY_*`` environment variables < command-line flags.  The file is decoded
strictly into :class:`BrokerConfig` (msgspec, ``forbid_unknown_fields``), so an
unknown key or a value of the wrong type is an error naming its path, e.g.
``limits.frame_bytes_max``.

Environment variables map onto keys: a top-level key ``data_dir`` is
``DISTRIBUTARY_DATA_DIR``; a key in a table uses a double underscore,
``[limits] connections_max`` is ``DISTRIBUTARY_LIMITS__CONNECTIONS_MAX``.  Their
string values are converted to the key's type (``true``/``false``, integers,
``null`` for "no limit").  ``DISTRIBUTARY_CONFIG`` names the config file.

Nothing here does I/O except :func:`read_toml`; :func:`load_config` takes the
environment as a mapping so tests pass their own.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from broker.cluster.etcd_url import parse_etcd_url
from broker.groups.config import GroupConfig
from broker.limits import Limits
from broker.storage.config import LogConfig
from broker.topics import check_fits_frame
from client.errors import DistributaryError, InvalidConfigError

ENV_PREFIX: Final = "DISTRIBUTARY_"
ENV_CONFIG_FILE: Final = "DISTRIBUTARY_CONFIG"
ENV_SECTION_SEPARATOR: Final = "__"
# A port no well-known broker uses (Kafka 9092, NATS 4222, Redis 6379, AMQP 5672,
# MQTT 1883).
DEFAULT_PORT: Final = 9392
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_DATA_DIR: Final = "./distributary-data"

# Kafka's partition-count ceiling per topic is practical, not fixed; ours is a
# guard against a typo creating a million directories (each partition holds open
# descriptors for its active segment).
TOPIC_PARTITIONS_MAX_DEFAULT: Final = 1024

_LISTEN_PATTERN: Final = re.compile(
    r"^(?:\[(?P<ipv6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$"
)


class ConfigError(DistributaryError):
    """The configuration is unreadable or invalid (the message names the key)."""


class BrokerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything ``distributary serve`` reads.  Field comments are the reference
    (docs/operations.md repeats them for operators)."""

    # The node's id in the cluster (a single node is node 0).
    node_id: Annotated[int, msgspec.Meta(ge=0)] = 0
    # etcd://HOST:PORT[,HOST:PORT...]/PREFIX: be a member of the cluster whose
    # metadata lives under PREFIX in that etcd.  None: a single node (metadata in the
    # data dir, no etcd).
    cluster: str | None = None
    # HOST:PORT other brokers and clients use to reach this one (cluster mode);
    # None: the listen address (with the port it got).
    advertise: str | None = None
    # The rack (or zone) this broker runs in: replicas of a partition are spread
    # across racks.  None: no rack.
    rack: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None
    # A follower that has not caught up with its leader's log end for this long
    # leaves the partition's in-sync replicas (Kafka replica.lag.time.max.ms); the
    # leader checks every half of it.
    replica_lag_time_max_ms: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    # Cluster name reported to clients in Hello/Metadata.
    cluster_id: Annotated[str, msgspec.Meta(min_length=1, max_length=249)] = "distributary"
    # HOST:PORT to listen on; port 0 picks a free port (logged in the "listening" line).
    listen: str = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
    # Where partitions live: <data_dir>/<topic>-<partition>/ and topics.json.
    data_dir: str = DEFAULT_DATA_DIR
    # "auto": console renderer on a terminal, JSON lines otherwise.
    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Create a topic when a Produce or a Metadata request (that allows it) names an
    # unknown one, with default_partitions partitions and the topic_defaults.
    auto_create_topics: bool = True
    default_partitions: Annotated[int, msgspec.Meta(ge=1)] = 1
    topic_partitions_max: Annotated[int, msgspec.Meta(ge=1)] = TOPIC_PARTITIONS_MAX_DEFAULT
    limits: Limits = msgspec.field(default_factory=Limits)
    # Each topic's LogConfig unless the topic overrides a key (retention_ms, ...).
    topic_defaults: LogConfig = msgspec.field(default_factory=LogConfig)
    # The group coordinator: session timeout bounds, __consumer_offsets settings.
    groups: GroupConfig = msgspec.field(default_factory=GroupConfig)

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


@dataclass(frozen=True)
class LoadedConfig:
    """The config and the notes about how it was assembled (logged at startup)."""

    config: BrokerConfig
    warnings: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6).  Raises ConfigError."""
    match = _LISTEN_PATTERN.match(value.strip())
    if match is None:
        raise ConfigError(f"listen: expected HOST:PORT, got {value!r}")
    host = match.group("ipv6") or match.group("host") or DEFAULT_HOST
    port = int(match.group("port"))
    if port > 65535:
        raise ConfigError(f"listen: port {port} is out of range [0, 65535]")
    return host, port


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML config file.  Raises ConfigError (unreadable or not TOML)."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {error.start} cannot be decoded)"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from error


def load_config(
    *,
    file_values: Mapping[str, Any] | None = None,
    file_name: str = "config file",
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Layer defaults < file < environment < flags into a validated BrokerConfig.

    ``flags`` holds top-level keys whose values are already typed (None = unset).
    Raises ConfigError naming the offending key or variable.
    """
    sources = ["defaults"]
    values: dict[str, Any] = {}
    if file_values is not None:
        _convert(dict(file_values), f"{file_name}: ")  # strict: a string is not an int here
        values = _deep_copy(file_values)
        sources.append(file_name)
    warnings: list[str] = []
    for name, raw in sorted((environ or {}).items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE:
            continue
        path = _env_key_path(name)
        if path is None:
            warnings.append(f"ignoring unknown environment variable {name}")
            continue
        _set_path(values, path, _convert_env_value(name, path, raw))
        sources.append(name)
    for key, value in (flags or {}).items():
        if value is not None:
            assert key in BrokerConfig.__struct_fields__, key
            values[key] = value
            sources.append(f"--{key.replace('_', '-')}")
    config = _convert(values, "")
    parse_listen(config.listen)
    if config.advertise is not None:
        try:
            port = parse_listen(config.advertise)[1]
        except ConfigError:
            port = 0
        if port == 0:
            raise ConfigError(
                f"advertise: expected HOST:PORT with a port, got {config.advertise!r}"
            )
    if config.cluster is not None:
        try:
            parse_etcd_url(config.cluster)
        except InvalidConfigError as error:
            raise ConfigError(f"cluster: {error.message}") from error
    try:
        config.limits.check()
    except ValueError as error:
        raise ConfigError(str(error)) from error
    defaults_set = values.get("topic_defaults")
    if isinstance(defaults_set, Mapping) and "batch_bytes_max" in defaults_set:
        try:
            check_fits_frame(config.topic_defaults, config.limits.frame_bytes_max)
        except InvalidConfigError as error:
            raise ConfigError(f"topic_defaults.{error.message}") from error
    return LoadedConfig(config, warnings, sources)


def env_name(*path: str) -> str:
    """The environment variable for a key path, e.g. ("limits", "connections_max")."""
    return ENV_PREFIX + ENV_SECTION_SEPARATOR.join(part.upper() for part in path)


def _convert(values: dict[str, Any], prefix: str) -> BrokerConfig:
    try:
        return msgspec.convert(values, BrokerConfig)
    except msgspec.ValidationError as error:
        raise ConfigError(f"{prefix}{_describe_validation_error(error)}") from error
    except InvalidConfigError as error:  # LogConfig.__post_init__ range checks
        raise ConfigError(f"{prefix}topic_defaults: {error.message}") from error


def _describe_validation_error(error: msgspec.ValidationError) -> str:
    # msgspec says "Object contains unknown field `x` - at `$.limits`"; say the key.
    text = str(error)
    message, _, location = text.partition(" - at `$")
    location = location.rstrip("`").lstrip(".")
    unknown = re.match(r"Object contains unknown field `(?P<key>[^`]+)`", message)
    if unknown is not None:
        key = f"{location}.{unknown.group('key')}" if location else unknown.group("key")
        return f"unknown key {key!r}"
    return f"{location or 'config'}: {message}" if location else message


def _sections() -> dict[str, type[msgspec.Struct]]:
    return {"limits": Limits, "topic_defaults": LogConfig, "groups": GroupConfig}


def _field_type(struct: type[msgspec.Struct], key: str) -> Any | None:
    for info in msgspec.structs.fields(struct):
        if info.name == key:
            return info.type
    return None


def _env_key_path(name: str) -> tuple[str, ...] | None:
    rest = name[len(ENV_PREFIX) :].lower()
    section, separator, key = rest.partition(ENV_SECTION_SEPARATOR)
    if separator:
        struct = _sections().get(section)
        if struct is None or _field_type(struct, key) is None:
            return None
        return (section, key)
    if rest in _sections() or _field_type(BrokerConfig, rest) is None:
        return None
    return (rest,)


def _convert_env_value(name: str, path: tuple[str, ...], raw: str) -> Any:
    struct: type[msgspec.Struct] = BrokerConfig if len(path) == 1 else _sections()[path[0]]
    field_type = _field_type(struct, path[-1])
    assert field_type is not None, path
    try:
        return msgspec.convert(raw, field_type, strict=False)
    except msgspec.ValidationError as error:
        message = str(error).partition(" - at `$")[0]
        raise ConfigError(f"environment variable {name}={raw!r}: {message}") from error


def _set_path(values: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    if len(path) == 1:
        values[path[0]] = value
        return
    table = values.setdefault(path[0], {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path[0]}: expected a table")
    table[path[1]] = value


def _deep_copy(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: _deep_copy(value) if isinstance(value, Mapping) else value
        for key, value in values.items()
    }
