"""Tests for broker.storage.config.LogConfig."""

from __future__ import annotations

import pytest

from broker.storage.config import FlushPolicy, LogConfig
from client.errors import InvalidConfigError


def test_defaults_are_kafka_like() -> None:
    """Defaults: 1 GiB segments, 7-day retention, 4 KiB index interval, no fsync."""
    config = LogConfig()
    assert config.segment_bytes == 1 << 30
    assert config.retention_ms == 7 * 24 * 3600 * 1000
    assert config.retention_bytes is None
    assert config.index_interval_bytes == 4096
    assert config.flush_policy is FlushPolicy.NEVER


def test_from_mapping_decodes_enum_and_none() -> None:
    """A config table decodes, including the flush policy by name and null limits."""
    config = LogConfig.from_mapping(
        {"flush_policy": "every-append", "retention_ms": None, "segment_bytes": 2048}
    )
    assert config.flush_policy is FlushPolicy.EVERY_APPEND
    assert config.retention_ms is None
    assert config.segment_bytes == 2048


@pytest.mark.parametrize(
    "values",
    [
        {"segment_bytes": 10},
        {"segment_bytes": 1 << 31},
        {"segment_ms": 0},
        {"retention_ms": -1},
        {"retention_bytes": -5},
        {"index_interval_bytes": 0},
        {"flush_interval_ms": 0},
        {"batch_bytes_max": 10},
        {"segment_bytes": "big"},
        {"flush_policy": "sometimes"},
        {"unknown_key": 1},
    ],
)
def test_bad_values_raise_invalid_config(values: dict[str, object]) -> None:
    """Out-of-range, mistyped or unknown values raise InvalidConfigError."""
    with pytest.raises(InvalidConfigError):
        LogConfig.from_mapping(values)


def test_direct_construction_validates() -> None:
    """Building the Struct directly validates too."""
    with pytest.raises(InvalidConfigError):
        LogConfig(segment_bytes=1)


def test_with_changes_validates() -> None:
    """with_changes returns a validated copy."""
    assert LogConfig().with_changes(segment_ms=5).segment_ms == 5
    with pytest.raises(InvalidConfigError):
        LogConfig().with_changes(segment_ms=-5)
