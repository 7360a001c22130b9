"""Every name the IoT pipeline's stages share: topics (with their partition
counts and configs), consumer groups, record headers, MQTT topics and client ids.

One module so that a stage, the orchestrator and the reconciler never disagree
on a spelling.  topology.py creates the topics listed in :data:`TOPICS`.
"""

from __future__ import annotations

from typing import Final, NamedTuple


class TopicSpec(NamedTuple):
    """A topic the pipeline needs: its name, partition count and topic configs."""

    name: str
    partitions: int
    configs: dict[str, str]


# Topics.  Every record on every topic is keyed by the device id.
RAW_TOPIC: Final = "iot.raw"
VALID_TOPIC: Final = "iot.valid"
DLQ_TOPIC: Final = "iot.dlq"
DEVICES_TOPIC: Final = "iot.devices"
AGG_TOPIC: Final = "iot.agg.1m"
ALERTS_TOPIC: Final = "iot.alerts"

TOPICS: Final[tuple[TopicSpec, ...]] = (
    TopicSpec(RAW_TOPIC, 4, {}),
    TopicSpec(VALID_TOPIC, 4, {}),
    TopicSpec(DLQ_TOPIC, 1, {}),
    TopicSpec(DEVICES_TOPIC, 1, {"cleanup.policy": "compact"}),
    TopicSpec(AGG_TOPIC, 4, {}),
    TopicSpec(ALERTS_TOPIC, 1, {}),
)

# Consumer groups.
VALIDATE_GROUP: Final = "iot-validate"
AGGREGATE_GROUP: Final = "iot-aggregate"
SINK_GROUP: Final = "iot-sink"
ALERTS_GROUP: Final = "iot-alerts"
GROUPS: Final[tuple[str, ...]] = (VALIDATE_GROUP, AGGREGATE_GROUP, SINK_GROUP, ALERTS_GROUP)
VALIDATE_MEMBERS_DEFAULT: Final = 2

# Record headers.  ``iot-received-ns`` is the bridge's ``time.time_ns()`` when the
# MQTT message arrived, as an ASCII integer; every stage copies it unchanged to
# what it derives from the record, so the sink can observe end-to-end latency.
RECEIVED_NS_HEADER: Final = "iot-received-ns"
DLQ_REASON_HEADER: Final = "iot-dlq-reason"
DLQ_DETAIL_HEADER: Final = "iot-dlq-detail"
SOURCE_TOPIC_HEADER: Final = "iot-source-topic"
SOURCE_PARTITION_HEADER: Final = "iot-source-partition"
SOURCE_OFFSET_HEADER: Final = "iot-source-offset"

# Dead-letter reasons (the value of the ``iot-dlq-reason`` header).
DLQ_MALFORMED: Final = "malformed"
DLQ_OUT_OF_RANGE: Final = "out_of_range"
DLQ_UNKNOWN_SCHEMA_VERSION: Final = "unknown_schema_version"
DLQ_DEVICE_MISMATCH: Final = "device_mismatch"
DLQ_REASONS: Final[tuple[str, ...]] = (
    DLQ_MALFORMED,
    DLQ_OUT_OF_RANGE,
    DLQ_UNKNOWN_SCHEMA_VERSION,
    DLQ_DEVICE_MISMATCH,
)

# MQTT.  Devices publish to ``devices/<device>/telemetry``; the bridge subscribes
# to the wildcard with a persistent session under a fixed client id.
MQTT_TELEMETRY_TOPIC: Final = "devices/{device}/telemetry"
MQTT_BRIDGE_SUBSCRIPTION: Final = "devices/+/telemetry"
MQTT_BRIDGE_CLIENT_ID: Final = "iot-bridge"
MQTT_SIM_CLIENT_ID: Final = "iot-sim-{n}"


def telemetry_topic(device: str) -> str:
    """The MQTT topic ``device`` publishes its readings to."""
    return MQTT_TELEMETRY_TOPIC.format(device=device)


def device_from_topic(mqtt_topic: str) -> str | None:
    """The device id in an MQTT telemetry topic, or None when the topic does
    not have the ``devices/<device>/telemetry`` shape."""
    parts = mqtt_topic.split("/")
    if len(parts) != 3 or parts[0] != "devices" or parts[2] != "telemetry" or not parts[1]:
        return None
    return parts[1]


def sim_client_id(n: int) -> str:
    """The MQTT client id of the simulator's ``n``-th connection."""
    return MQTT_SIM_CLIENT_ID.format(n=n)
