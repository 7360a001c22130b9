"""The device registry: one record per device on the compacted ``iot.devices`` topic.

Key: the device id.  Value: JSON ``{"device", "site", "model", "firmware",
"temp_max_c"}``, from :func:`examples.iot.sim.device_profile` with the same seed
as the simulator, so the aggregate's enrichment and the alerts' thresholds
describe exactly the simulated devices.  Publishing again replaces each
device's record (compaction keeps the latest per key).
"""

from __future__ import annotations

from typing import Final

import click
import msgspec
import trio

from client import Producer
from examples.iot import names, stage
from examples.iot.telemetry import V1_DEVICES_DEFAULT, device_profile

_encoder: Final = msgspec.json.Encoder()


def registry_records(
    seed: int, devices: int, v1_fraction: float = V1_DEVICES_DEFAULT
) -> list[tuple[bytes, bytes]]:
    """(key, value) of every device's registry record."""
    records = []
    for index in range(devices):
        profile = device_profile(seed, index, v1_fraction)
        records.append((profile.device.encode(), _encoder.encode(profile.registry_record())))
    return records


async def run(
    *, bootstrap: str, devices: int, seed: int, v1_fraction: float = V1_DEVICES_DEFAULT
) -> int:
    """Publish the registry and wait until Distributary acknowledged all of it;
    returns the record count.  Raises the SDK's typed errors (DistributaryError)."""
    records = registry_records(seed, devices, v1_fraction)
    async with Producer(bootstrap, acks="all", client_id="iot-registry") as producer:
        await producer.send_many(
            names.DEVICES_TOPIC,
            [value for _key, value in records],
            keys=[key for key, _value in records],
        )
    return len(records)


@click.command("registry")
@stage.bootstrap_option
@click.option("--devices", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--fault-v1-devices",
    type=float,
    default=V1_DEVICES_DEFAULT,
    show_default=True,
    help="Share of devices on firmware 1 (as given to the simulator).",
)
def command(bootstrap: str, devices: int, seed: int, fault_v1_devices: float) -> None:
    """Publish the device metadata to the compacted iot.devices topic."""
    count = trio.run(
        lambda: run(bootstrap=bootstrap, devices=devices, seed=seed, v1_fraction=fault_v1_devices)
    )
    print(f"published {count} device records to {names.DEVICES_TOPIC}", flush=True)
