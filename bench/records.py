"""Record-batch codec throughput: encode (append + build) and decode, records/s.

``python -m bench.records`` builds ``--records`` records of ``--value-bytes``
bytes in batches of ``--batch-records`` (1,000 x 100 B is about a 110 KB batch,
a typical produce batch), with no compression and with zstd, then decodes the
same batches concatenated as one fetch buffer (CRC checked, the default).
Record timestamps come from the wall clock, as in a real producer.  Values are
random hex text (compresses about 2x, like typical JSON payloads).

Each figure is timed ``--reps`` times; the table shows median, min and max, and
one JSON line per figure follows (``{"bench": ..., "records_per_s": median,
...}``) for tools.  ``run(reps)`` returns the same dicts so bench/storage.py
can include them.  The garbage collector stays enabled: decoding creates
millions of objects and a consumer pays for the collector too.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from client.records.builder import BatchBuilder
from client.records.decoder import RecordDecoder
from client.records.header import BatchHeader, Compression

RECORDS_DEFAULT = 100_000
BATCH_RECORDS_DEFAULT = 1_000
VALUE_BYTES_DEFAULT = 100
CODECS = (Compression.NONE, Compression.ZSTD)


def make_values(count: int, value_bytes: int, seed: int = 7) -> list[bytes]:
    """``count`` distinct values of ``value_bytes`` random hex characters."""
    rng = random.Random(seed)
    return [
        rng.randbytes((value_bytes + 1) // 2).hex()[:value_bytes].encode() for _ in range(count)
    ]


def encode(values: list[bytes], codec: Compression, batch_records: int) -> list[bytearray]:
    """Append every value (one Python call each) and build a batch per ``batch_records``."""
    batches: list[bytearray] = []
    for start in range(0, len(values), batch_records):
        builder = BatchBuilder(codec)
        append = builder.append
        for value in values[start : start + batch_records]:
            append(value)
        batches.append(builder.build())
    return batches


def fetch_buffer(batches: list[bytearray]) -> bytes:
    """The batches stamped with consecutive offsets, back to back, as a broker serves them."""
    next_offset = 0
    for batch in batches:
        header = BatchHeader.parse(batch)
        header.stamp(next_offset, leader_epoch=0)
        next_offset = header.next_offset
    return b"".join(batches)


def time_reps(reps: int, work: Callable[[], object]) -> list[float]:
    seconds: list[float] = []
    for _ in range(reps):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return seconds


def figure(
    bench: str, codec: Compression, records: int, payload_bytes: int, seconds: list[float]
) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {
        "bench": bench,
        "codec": codec.name.lower(),
        "records": records,
        "reps": len(seconds),
        "records_per_s": round(records / median),
        "records_per_s_min": round(records / max(seconds)),
        "records_per_s_max": round(records / min(seconds)),
        "mib_per_s": round(payload_bytes / median / (1 << 20), 1),
    }


def run(
    reps: int,
    *,
    records: int = RECORDS_DEFAULT,
    batch_records: int = BATCH_RECORDS_DEFAULT,
    value_bytes: int = VALUE_BYTES_DEFAULT,
) -> list[dict[str, Any]]:
    """Measure encode and decode for each codec; one dict per figure (medians)."""
    assert reps > 0 and records > 0 and batch_records > 0, (reps, records, batch_records)
    values = make_values(records, value_bytes)
    payload_bytes = records * value_bytes
    decoder = RecordDecoder()
    results: list[dict[str, Any]] = []
    for codec in CODECS:
        encode(values[:batch_records], codec, batch_records)  # warm up
        seconds = time_reps(reps, functools.partial(encode, values, codec, batch_records))
        results.append(figure("records.encode", codec, records, payload_bytes, seconds))
        buffer = fetch_buffer(encode(values, codec, batch_records))
        fetched = decoder.decode_fetch(buffer)
        assert len(fetched.records) == records, len(fetched.records)
        assert fetched.records[-1].value == values[-1]
        del fetched
        seconds = time_reps(reps, functools.partial(decoder.decode_fetch, buffer))
        result = figure("records.decode", codec, records, payload_bytes, seconds)
        result["batch_bytes_mean"] = round(len(buffer) / -(-records // batch_records))
        results.append(result)
    return results


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"{'bench':<16} {'codec':<6} {'records/s (median)':>19} {'min':>11} {'max':>11} {'MiB/s':>7}"
    )
    for result in results:
        print(
            f"{result['bench']:<16} {result['codec']:<6} {result['records_per_s']:>19,} "
            f"{result['records_per_s_min']:>11,} {result['records_per_s_max']:>11,} "
            f"{result['mib_per_s']:>7}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--records", type=int, default=RECORDS_DEFAULT)
    parser.add_argument("--batch-records", type=int, default=BATCH_RECORDS_DEFAULT)
    parser.add_argument("--value-bytes", type=int, default=VALUE_BYTES_DEFAULT)
    arguments = parser.parse_args(argv)
    results = run(
        arguments.reps,
        records=arguments.records,
        batch_records=arguments.batch_records,
        value_bytes=arguments.value_bytes,
    )
    print_table(results)
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
