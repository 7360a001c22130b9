"""Following the device registry: the compacted ``iot.devices`` topic, read in full.

registry.py publishes each device's metadata keyed by its id (``{device, site,
model, firmware, temp_max_c}``); a tombstone (no value) removes a device.
:func:`follow_devices` reads the topic from its start up to the end offsets it
found when it started (then it reports itself started, so a stage enriches from
the whole registry from its first record on), and keeps following it for
changes.  It uses a consumer without a group: every stage process wants every
device.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
import structlog
import trio

from client import BrokerUnavailableError, Consumer, Record, TopicPartition
from examples.iot import names

log = structlog.get_logger("examples.iot.devices")

# How long one wait for registry changes lasts (a change is seen within this).
POLL_TIMEOUT_MS: Final = 1_000
LATEST_OFFSET: Final = -1  # ListOffsets: the log end


class DeviceInfo(msgspec.Struct, frozen=True):
    """A device's metadata as the registry publishes it."""

    device: str
    site: str | None = None
    model: str | None = None
    firmware: int | None = None
    temp_max_c: float | None = None


_device_decoder: Final = msgspec.json.Decoder(DeviceInfo)


class DeviceDirectory:
    """The latest metadata of every device in the registry."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceInfo] = {}
        self.undecodable = 0  # registry records that were not a DeviceInfo

    def get(self, device: str) -> DeviceInfo | None:
        return self.devices.get(device)

    def apply(self, records: list[Record[Any]]) -> None:
        """Registry records in offset order: the newest value per key wins."""
        for record in records:
            if record.key is None:
                self.undecodable += 1
                continue
            device = record.key.decode("utf-8", "replace")
            if record.value is None:
                self.devices.pop(device, None)
                continue
            try:
                self.devices[device] = _device_decoder.decode(record.value)
            except msgspec.DecodeError as error:
                self.undecodable += 1
                log.warning("undecodable registry record", device=device, error=str(error))


async def follow_devices(
    bootstrap: str,
    directory: DeviceDirectory,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Fill ``directory`` from ``iot.devices`` and keep it current (forever: run it
    with ``nursery.start``, which returns once the registry has been read up to
    where it ended at the start).  Raises UnknownTopicOrPartitionError when the
    topic does not exist."""
    async with Consumer(
        bootstrap, client_id="iot-devices", auto_offset_reset="earliest"
    ) as consumer:
        await consumer.assign([names.DEVICES_TOPIC])
        tps: list[TopicPartition] = sorted(consumer.assignment())
        ends = await consumer.list_offsets(dict.fromkeys(tps, LATEST_OFFSET))
        started = False
        while True:
            if not started:
                positions = [await consumer.position(tp) for tp in tps]
                if all(position >= ends[tp] for position, tp in zip(positions, tps)):
                    log.info("device registry read", devices=len(directory.devices))
                    task_status.started()
                    started = True
            try:
                batch = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
            except BrokerUnavailableError as error:
                log.warning("registry unreachable, still trying", error=str(error))
                continue
            for records in batch.values():
                directory.apply(records)
