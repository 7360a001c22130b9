"""The bridge: MQTT ``devices/+/telemetry`` -> Distributary ``iot.raw``, keyed by
device, acknowledged to MQTT only once Distributary has the record.

One paho client (client id ``iot-bridge``, persistent session, QoS 1, manual
acknowledgement) runs under trio (mqtt_client.py).  After each batch of
messages read from the socket, :meth:`Bridge._forward` hands each message to
the SDK Producer (idempotent, acks all) on topic ``iot.raw`` with the device id
from the MQTT topic as key and header ``iot-received-ns`` (the arrival time),
and appends (message id, connection generation, record handle) to the
in-flight queue.  :meth:`Bridge._ack_loop` waits for the oldest record's
acknowledgement and sends the PUBACKs of every acknowledged record at the
front of the queue, in arrival order.  So:

- at least once end to end: a message is acknowledged to MQTT only after
  Distributary acknowledged it; a crash in between makes the MQTT broker
  deliver it again (a duplicate in iot.raw, removed downstream);
- per-device order: messages are produced in arrival order through one
  producer, and a device's records all go to one partition;
- bounded: at most ``max_inflight`` messages are unacknowledged; beyond that
  the bridge stops reading the MQTT socket.  While Distributary is away the
  producer retries (up to its delivery timeout), nothing is acknowledged, and
  the MQTT broker holds everything else in its queue for the bridge's session;
- a PUBACK is only sent on the connection the message came in on: after an
  MQTT reconnect the broker re-sends what was not acknowledged, and the old
  copies' acknowledgements are dropped.

If a record fails for good (the producer's delivery timeout passed), the bridge
drops its in-flight queue without acknowledging, reconnects to MQTT (so every
unacknowledged message comes again) and starts a new producer.

SIGTERM: stop reading, wait for the in-flight records' acknowledgements, send
their PUBACKs, disconnect from MQTT (the session stays), close the producer.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Final, NamedTuple

import click
import structlog
import trio
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from client import Producer
from client.errors import DistributaryError
from client.producer import RecordHandle
from examples.iot import names, stage
from examples.iot.mqtt_client import BufferedClient, TrioMqttClient, split_address

log = structlog.get_logger("examples.iot.bridge")

MAX_INFLIGHT_DEFAULT: Final = 1000
PRODUCER_LINGER_MS: Final = 2
# How long a record may stay unacknowledged by Distributary before the producer
# gives up on it (and the bridge starts over from the MQTT broker's queue).
DELIVERY_TIMEOUT_MS: Final = 120_000
RESTART_BACKOFF_MIN_S: Final = 0.1
RESTART_BACKOFF_MAX_S: Final = 2.0
ACK_DELAY_BUCKETS_S: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class BridgeMetrics:
    """The ``iot_bridge_*`` series (IOT_PLAN.md)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "iot_bridge_mqtt_received", "MQTT messages received.", registry=registry
        )
        self.produced = Counter(
            "iot_bridge_produced", "Records acknowledged by Distributary.", registry=registry
        )
        self.produce_errors = Counter(
            "iot_bridge_produce_errors",
            "Records Distributary did not take within the delivery timeout.",
            registry=registry,
        )
        self.reconnects = Counter(
            "iot_bridge_mqtt_reconnects", "MQTT connections lost and retried.", registry=registry
        )
        self.inflight = Gauge(
            "iot_bridge_inflight_messages",
            "MQTT messages received and not yet acknowledged.",
            registry=registry,
        )
        self.ack_delay = Histogram(
            "iot_bridge_ack_delay_seconds",
            "MQTT receive to Distributary acknowledgement to PUBACK.",
            buckets=ACK_DELAY_BUCKETS_S,
            registry=registry,
        )


class _Inflight(NamedTuple):
    mid: int
    generation: int  # the MQTT connection it arrived on
    handle: RecordHandle | None  # None: nothing to produce (a topic of another shape)
    received_s: float  # time.monotonic() at arrival


class _ProduceFailed(Exception):
    """A record was not acknowledged within the producer's delivery timeout."""


class Bridge:
    """See the module docstring.  ``run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        *,
        mqtt_address: str,
        bootstrap: str,
        max_inflight: int = MAX_INFLIGHT_DEFAULT,
        registry: CollectorRegistry | None = None,
        delivery_timeout_ms: int = DELIVERY_TIMEOUT_MS,
        rng: random.Random | None = None,
    ) -> None:
        assert max_inflight >= 1
        self.bootstrap = bootstrap
        self.max_inflight = max_inflight
        self.delivery_timeout_ms = delivery_timeout_ms
        self.metrics = BridgeMetrics(registry if registry is not None else CollectorRegistry())
        self._rng = rng if rng is not None else random.Random()
        host, port = split_address(mqtt_address)
        client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=names.MQTT_BRIDGE_CLIENT_ID,
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        self.client = client
        self.mqtt = TrioMqttClient(
            client,
            host,
            port,
            name=names.MQTT_BRIDGE_CLIENT_ID,
            on_connected=self._subscribe,
            on_read_batch=self._forward,
            rng=self._rng,
        )
        self._received: list[MQTTMessage] = []
        self.mqtt.set_on_message(self._received.append)
        client.on_subscribe = self._subscribed
        self.subscribed = trio.Event()
        self._inflight: deque[_Inflight] = deque()
        self._producer: Producer | None = None
        self._producer_ready = trio.Event()
        self._stopping = False
        self._wake_acks = trio.Event()  # something was added, or the stop began
        self._window_open = trio.Event()
        self._reconnects_seen = 0
        self.forwarded = 0
        self.acknowledged = 0

    def stopping(self) -> bool:
        """True once the stop began: nothing more is read from MQTT."""
        return self._stopping

    # -- MQTT side -------------------------------------------------------------------------------

    def _subscribe(self) -> None:
        if self.mqtt.reconnects != self._reconnects_seen:
            self.metrics.reconnects.inc(self.mqtt.reconnects - self._reconnects_seen)
            self._reconnects_seen = self.mqtt.reconnects
        self.client.subscribe(names.MQTT_BRIDGE_SUBSCRIPTION, qos=1)
        self._received.clear()  # anything parsed before this connection was accepted

    def _subscribed(self, _client: Client, _userdata: object, *_: object) -> None:
        if not self.subscribed.is_set():
            # The demo starts the simulator only after this line: before the first
            # subscription the MQTT broker has no session to queue messages for.
            print(f"subscribed to {names.MQTT_BRIDGE_SUBSCRIPTION}", flush=True)
            self.subscribed.set()

    async def _forward(self) -> None:
        """Produce what the reader just parsed (it waits for us: backpressure)."""
        received = self._received
        if not received:
            return
        self.metrics.received.inc(len(received))
        messages = received[:]
        received.clear()
        generation = self.mqtt.generation
        inflight = self._inflight
        for message in messages:
            while len(inflight) >= self.max_inflight or self.stopping():
                self.metrics.inflight.set(len(inflight))
                self._wake_acks.set()
                if self.stopping():
                    await trio.sleep_forever()  # read nothing more: the broker keeps it
                self._window_open = trio.Event()
                await self._window_open.wait()
            producer = self._producer
            while producer is None:
                if self.stopping():
                    await trio.sleep_forever()  # read nothing more: the broker keeps it
                await self._producer_ready.wait()
                producer = self._producer
            if generation != self.mqtt.generation:
                return  # the connection went away meanwhile: these come again
            device = names.device_from_topic(message.topic)
            handle = None
            if device is None:
                log.warning("not a telemetry topic", topic=message.topic)
            else:
                headers = [(names.RECEIVED_NS_HEADER, str(time.time_ns()).encode())]
                try:
                    handle = producer.send_nowait(
                        names.RAW_TOPIC, message.payload, device.encode(), headers
                    )
                except DistributaryError:
                    try:  # buffer full or metadata missing: the waiting path
                        handle = await producer.enqueue(
                            names.RAW_TOPIC, message.payload, device.encode(), headers
                        )
                    except DistributaryError as error:
                        log.warning("produce refused", error=str(error))
                        return  # the producer is being replaced: these come again
            inflight.append(_Inflight(message.mid, generation, handle, time.monotonic()))
            self.forwarded += 1
        self.metrics.inflight.set(len(inflight))
        self._wake_acks.set()

    # -- Distributary side ---------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        """PUBACK each record once Distributary acknowledged it, in arrival order.
        Returns when stopping and nothing is in flight.  Raises _ProduceFailed."""
        inflight = self._inflight
        metrics = self.metrics
        while True:
            if not inflight:
                if self._stopping:
                    return
                self._wake_acks = trio.Event()
                await self._wake_acks.wait()
                continue
            front = inflight[0].handle
            if front is not None and not front.done():
                try:
                    await front.wait()
                except DistributaryError as error:
                    raise _ProduceFailed(str(error)) from error
            now_s = time.monotonic()
            generation = self.mqtt.generation if self.mqtt.connected else -1
            delays: list[float] = []
            while inflight and (inflight[0].handle is None or inflight[0].handle.done()):
                entry = inflight.popleft()
                if entry.handle is not None:
                    try:
                        entry.handle.result()
                    except DistributaryError as error:
                        inflight.appendleft(entry)
                        raise _ProduceFailed(str(error)) from error
                if entry.generation == generation:
                    self.client.ack(entry.mid, 1)
                delays.append(now_s - entry.received_s)
            self.acknowledged += len(delays)
            metrics.produced.inc(len(delays))
            for delay in delays:
                metrics.ack_delay.observe(delay)
            metrics.inflight.set(len(inflight))
            self._window_open.set()

    async def _start_producer(self) -> Producer | None:
        """A started producer with iot.raw's metadata, retrying with backoff while
        Distributary is unreachable or the topic is missing; None when stopping."""
        backoff_s = RESTART_BACKOFF_MIN_S
        while not self._stopping:
            producer = Producer(
                self.bootstrap,
                client_id=names.MQTT_BRIDGE_CLIENT_ID,
                acks="all",
                linger_ms=PRODUCER_LINGER_MS,
                delivery_timeout_ms=self.delivery_timeout_ms,
                rng=self._rng,
            )
            try:
                await producer.start()
            except DistributaryError as error:
                log.info("distributary unavailable", error=str(error))
            else:
                try:
                    await producer.partitions_for(names.RAW_TOPIC)
                    return producer
                except DistributaryError as error:
                    log.info("waiting for the raw topic", error=str(error))
                await producer.close(flush=False)
            await trio.sleep(backoff_s * (0.5 + self._rng.random()))
            backoff_s = min(backoff_s * 2, RESTART_BACKOFF_MAX_S)
        return None

    async def run(self, stop: trio.Event) -> None:
        """Bridge until ``stop`` is set, then drain (see the module docstring)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.mqtt.run)

            async def watch_stop() -> None:
                await stop.wait()
                self._stopping = True
                self._wake_acks.set()
                self._window_open.set()
                self._producer_ready.set()

            nursery.start_soon(watch_stop)
            backoff_s = RESTART_BACKOFF_MIN_S
            while True:
                producer = await self._start_producer()
                if producer is None:
                    break
                self._producer = producer
                self._producer_ready.set()
                try:
                    await self._ack_loop()
                except _ProduceFailed as failure:
                    log.warning("produce failed: starting over from MQTT", error=str(failure))
                    self.metrics.produce_errors.inc(len(self._inflight))
                    self._producer = None
                    self._producer_ready = trio.Event()
                    self._inflight.clear()
                    self.metrics.inflight.set(0)
                    self._window_open.set()
                    self.client.disconnect()  # reconnects: the broker re-sends the rest
                    await producer.close(flush=False)
                    await trio.sleep(backoff_s * (0.5 + self._rng.random()))
                    backoff_s = min(backoff_s * 2, RESTART_BACKOFF_MAX_S)
                    continue
                await producer.close()
                break
            await self.mqtt.disconnect()
            nursery.cancel_scope.cancel()
        log.info("bridge stopped", forwarded=self.forwarded, acknowledged=self.acknowledged)

    def check_invariants(self) -> None:
        assert len(self._inflight) <= self.max_inflight
        assert self.acknowledged <= self.forwarded


@click.command("bridge")
@stage.mqtt_option
@stage.bootstrap_option
@click.option(
    "--max-inflight",
    type=int,
    default=MAX_INFLIGHT_DEFAULT,
    show_default=True,
    help="MQTT messages received and not yet acknowledged, at most.",
)
@click.option(
    "--delivery-timeout-ms",
    type=int,
    default=DELIVERY_TIMEOUT_MS,
    show_default=True,
    help="How long Distributary may stay away before the bridge starts over from MQTT.",
)
@stage.metrics_port_option
def command(
    mqtt_address: str,
    bootstrap: str,
    max_inflight: int,
    delivery_timeout_ms: int,
    metrics_port: int,
) -> None:
    """MQTT devices/+/telemetry -> iot.raw, PUBACK after the log acked.

    /metrics is served once the first subscription is acknowledged: before it
    the MQTT broker has no session for the bridge and drops what devices send,
    so whoever starts the simulator waits for the bridge's metrics (or for the
    "subscribed to" line) first.
    """
    registry = CollectorRegistry()

    async def main(stop: trio.Event) -> None:
        bridge = Bridge(
            mqtt_address=mqtt_address,
            bootstrap=bootstrap,
            max_inflight=max_inflight,
            registry=registry,
            delivery_timeout_ms=delivery_timeout_ms,
        )
        async with trio.open_nursery() as nursery:

            async def serve_when_subscribed() -> None:
                await bridge.subscribed.wait()
                stage.serve_metrics(registry, port=metrics_port)

            nursery.start_soon(serve_when_subscribed)
            await bridge.run(stop)
            nursery.cancel_scope.cancel()

    stage.run_stage(main)
