"""The broker's own metrics registry, and a scrape rendered from it.

Not prometheus-client's global registry: a library or a test in the same
process registering its own metrics there must not show up in (or break) the
broker's scrape, and two brokers in one process (tests) keep theirs apart.
:class:`MetricsRegistry` holds the :class:`BrokerCollector` and
prometheus-client's process collector (CPU seconds, resident memory, open
descriptors, start time: read from /proc, so Linux only; elsewhere it exports
nothing), registered in a ``CollectorRegistry`` of its own (``.registry``).

Rendering negotiates the format like prometheus-client's own HTTP server
(``Accept``: OpenMetrics for Prometheus, the text format otherwise).
:meth:`MetricsRegistry.render_in_steps` is what the endpoint uses: it collects
and formats one metric family at a time and lets the event loop run between
two, so a scrape of a broker with 1,000 partitions (tens of ms in all) never
holds the loop for more than one family (see docs/benchmarks.md).  Families
are each consistent; two of them may be a few scheduler steps apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import trio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from broker.metrics.collector import BrokerCollector
from broker.state import Broker

OPENMETRICS_END = b"# EOF\n"


class _OneFamily(Collector):
    """A single family, for the encoder (it renders whatever ``collect`` yields)."""

    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterable[Metric]:
        return (self.family,)


class MetricsRegistry:
    """The broker's collectors and their registry (see the module docstring)."""

    def __init__(self, broker: Broker, connections_open: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        process = ProcessCollector(registry=self.registry)
        collector = BrokerCollector(broker, connections_open)
        self.registry.register(collector)
        self.collectors: list[Collector] = [process, collector]

    def render(self, accept: str) -> tuple[bytes, str]:
        """The whole scrape at once: body and content type for a request's
        ``Accept`` header ("" if none).  Call it on the event loop."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def render_in_steps(self, accept: str) -> tuple[bytes, str]:
        """:meth:`render`, one family at a time with a scheduler checkpoint after
        each."""
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        parts: list[bytes] = []
        for collector in self.collectors:
            for family in collector.collect():
                text = encoder(_OneFamily(family))
                if openmetrics:
                    assert text.endswith(OPENMETRICS_END), text[-20:]
                    text = text[: -len(OPENMETRICS_END)]
                parts.append(text)
                await trio.lowlevel.checkpoint()
        if openmetrics:
            parts.append(OPENMETRICS_END)
        return b"".join(parts), content_type
