"""Prometheus metrics of a broker.

- :mod:`broker.metrics.counters`: plain integers the hot path bumps (per request,
  per answered partition, per flush; never per record).
- :mod:`broker.metrics.collector`: a prometheus-client Collector that reads them,
  and the state of partitions and groups, when Prometheus scrapes.
- :mod:`broker.metrics.group_lag`: consumer-group lag in records and seconds.
- :mod:`broker.metrics.registry`: the broker's own registry (its collector, the
  process collector) and the rendering of a scrape.
- :mod:`broker.metrics.endpoint`: the HTTP listener serving ``GET /metrics``
  inside the broker's task tree (h11).

This package's ``__init__`` imports nothing: the storage layer imports
:mod:`broker.metrics.counters` and must not pull the broker in with it.
docs/monitoring.md lists every metric.
"""
