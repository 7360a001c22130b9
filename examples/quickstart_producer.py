"""Quick start: create a topic and send a few records with the async SDK.

    distributary serve &                     # a one-node broker on 127.0.0.1:9392
    python examples/quickstart_producer.py --bootstrap 127.0.0.1:9392

Runs on trio by default; ``--backend asyncio`` runs the very same code on asyncio.
"""

from __future__ import annotations

import argparse

import anyio

from client import Admin, NewTopic, Producer, TopicAlreadyExistsError


async def main(bootstrap: str, topic: str, count: int) -> None:
    async with Admin(bootstrap) as admin:
        try:
            await admin.create_topics([NewTopic(topic, partitions=3)])
            print(f"created topic {topic!r} with 3 partitions")
        except TopicAlreadyExistsError:
            print(f"topic {topic!r} already exists")

    async with Producer(bootstrap, linger_ms=5, compression="zstd") as producer:
        # One record, waiting for its acknowledgement.
        metadata = await producer.send(topic, "hello", key="greeting", headers=[("lang", "en")])
        print(f"sent 'hello' to partition {metadata.partition} at offset {metadata.offset}")
        # Many records without waiting for each: enqueue returns a handle at once.
        handles = [
            await producer.enqueue(topic, f"reading {index}", key=f"sensor-{index % 4}")
            for index in range(count)
        ]
        await producer.flush()
        last = handles[-1].result()
        print(
            f"sent {count} more; the last went to partition {last.partition}, offset {last.offset}"
        )


def cli() -> None:
    parser = argparse.ArgumentParser(description="Send a few records to a Distributary topic.")
    parser.add_argument("--bootstrap", default="127.0.0.1:9392", help="broker HOST:PORT")
    parser.add_argument("--topic", default="quickstart")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--backend", default="trio", choices=["trio", "asyncio"])
    args = parser.parse_args()
    anyio.run(main, args.bootstrap, args.topic, args.count, backend=args.backend)


if __name__ == "__main__":
    cli()
