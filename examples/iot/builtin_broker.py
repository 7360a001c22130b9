"""The fallback MQTT broker where mosquitto cannot be had: amqtt's pure-Python
MQTT 3.1.1 broker, run in this process (``mqtt-broker --builtin``).

It listens on one loopback port and accepts every client.  It is labelled as
the fallback wherever it runs, because it is weaker than mosquitto where the
pipeline's at-least-once delivery needs it:

- sessions and queued QoS 1 messages live in memory only: a restart loses them;
- amqtt waits a fixed 5 s for the PUBACK of a QoS 1 message it sent, then
  drops the message, and it also drops what was in flight when a subscriber's
  connection closes (it does not re-send it on the session's next connection).
  So a bridge that stops acknowledging for longer (a Distributary outage), or
  that disconnects while messages are on their way to it (even on a clean
  stop), loses those messages here; what arrives while it is away is queued.

Clients are admitted by :class:`OpenAuthPlugin` rather than amqtt's
``AnonymousAuthPlugin``: amqtt marks a session admitted by the latter as
anonymous, and for an anonymous session it neither queues QoS 1 messages while
the client is away nor keeps the session once it disconnects.  The bridge's
persistent session (``clean_session=False``) needs both: after the bridge
reconnects, the broker re-sends what it had not acknowledged and what arrived
meanwhile.

amqtt logs through the standard library; only its warnings and errors are
shown, with a prefix naming it, so a run's log holds the start and stop lines.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

LABEL = (
    "the FALLBACK (amqtt, in memory: a restart loses queued messages); "
    "install mosquitto for the real one"
)


class OpenAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """Admits every client without marking its session anonymous (see the
    module docstring), so persistent sessions keep their queue."""

    async def authenticate(self, *, session: Session) -> bool:
        return True


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt's broker configuration: one TCP listener, every client admitted."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {f"{OpenAuthPlugin.__module__}.{OpenAuthPlugin.__qualname__}": {}},
    }


def run(host: str, port: int) -> None:
    """Serve on ``host:port`` until SIGTERM/SIGINT, then shut down (exit 0)."""
    logging.basicConfig(level=logging.WARNING, format="amqtt %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(host, port))


async def _serve(host: str, port: int) -> None:
    broker = Broker(broker_config(host, port))
    await broker.start()
    print(f"builtin MQTT broker on {host}:{port} -- {LABEL}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await broker.shutdown()
