"""The broker's own metrics registry, and a scrape rendered from it.

Not prometheus-client's global registry: a library or a test in the same
process registering its own metrics there must not show up in (or break) the
broker's scrape, and two brokers in one process (tests) keep theirs apart.
It holds the :class:`BrokerCollector` and prometheus-client's process
collector (CPU seconds, resident memory, open descriptors, start time: read
from /proc, so Linux only; elsewhere it exports nothing).

:func:`render` negotiates the format like prometheus-client's own HTTP server
(``Accept``: OpenMetrics for Prometheus, the text format otherwise) and
returns the body and its content type.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder

from broker.metrics.collector import BrokerCollector
from broker.state import Broker


def broker_registry(broker: Broker, connections_open: Callable[[], int]) -> CollectorRegistry:
    """A registry with the broker's collector and the process collector."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(BrokerCollector(broker, connections_open))
    return registry


def render(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The scrape's body and content type for a request's ``Accept`` header ("" if
    none).  Runs every collector: call it on the event loop."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
