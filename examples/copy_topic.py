"""Copy every record of one topic into another with the blocking SDK (client.sync).

    python examples/copy_topic.py SOURCE DESTINATION [--bootstrap HOST:PORT]
                                  [--idle-timeout SECONDS]

Reads SOURCE from the beginning of every partition and writes each record's
key, value and headers to the same partition of DESTINATION (which must exist
and have at least as many partitions), one portal hop per fetched batch.  Stops
once no new record has arrived for ``--idle-timeout`` seconds, flushes, and
prints how many records it copied.  A failure (an unknown topic, an unreachable
broker) is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from client.errors import DistributaryError
from client.sync import Admin, Consumer, Producer


def copy_topic(bootstrap: str, source: str, destination: str, idle_timeout_s: float) -> int:
    """Copy until ``source`` is idle for ``idle_timeout_s``; returns the record count."""
    with Admin(bootstrap) as admin:
        source_partitions = len(admin.describe_topics([source])[0].partitions)
        destination_partitions = len(admin.describe_topics([destination])[0].partitions)
    if destination_partitions < source_partitions:
        raise SystemExit(
            f"{destination!r} has {destination_partitions} partitions, "
            f"fewer than {source!r}'s {source_partitions}"
        )
    copied = 0
    with Consumer(bootstrap) as consumer, Producer(bootstrap, acks="all") as producer:
        consumer.assign([source])
        consumer.seek_to_beginning()
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_timeout_s:
            batches = consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                producer.enqueue_many(
                    destination,
                    [(record.key, record.value, record.headers) for record in records],
                    partition=tp.partition,
                )
                copied += len(records)
            if batches:
                idle_since = time.monotonic()
        producer.flush(timeout=60)
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("destination")
    parser.add_argument(
        "--bootstrap", default=os.environ.get("DISTRIBUTARY_BOOTSTRAP", "127.0.0.1:9392")
    )
    parser.add_argument("--idle-timeout", type=float, default=2.0)
    arguments = parser.parse_args()
    try:
        count = copy_topic(
            arguments.bootstrap, arguments.source, arguments.destination, arguments.idle_timeout
        )
    except (DistributaryError, ValueError) as error:  # an unknown topic, a bad address ...
        raise SystemExit(f"copy_topic: {error}") from None
    print(
        f"copied {count} records from {arguments.source!r} to {arguments.destination!r}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
