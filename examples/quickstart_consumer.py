"""Quick start: read a topic from the beginning with the async SDK.

    python examples/quickstart_consumer.py --bootstrap 127.0.0.1:9392

Reads every partition of ``--topic`` from the earliest offset and prints each
record until ``--idle-s`` seconds pass without a new one (Ctrl-C stops it too).
"""

from __future__ import annotations

import argparse

import anyio

from client import Consumer


async def main(bootstrap: str, topic: str, idle_s: float) -> None:
    async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        await consumer.assign([topic])  # a topic name means all its partitions
        total = 0
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000), max_records=10_000)
            if not batch:
                break
            for tp, records in batch.items():
                for record in records:
                    print(f"{tp} offset={record.offset} key={record.key!r} value={record.value!r}")
                total += len(records)
        print(f"read {total} records; nothing new for {idle_s} s")


def cli() -> None:
    parser = argparse.ArgumentParser(description="Print the records of a Distributary topic.")
    parser.add_argument("--bootstrap", default="127.0.0.1:9392", help="broker HOST:PORT")
    parser.add_argument("--topic", default="quickstart")
    parser.add_argument("--idle-s", type=float, default=2.0)
    parser.add_argument("--backend", default="trio", choices=["trio", "asyncio"])
    args = parser.parse_args()
    anyio.run(main, args.bootstrap, args.topic, args.idle_s, backend=args.backend)


if __name__ == "__main__":
    cli()
