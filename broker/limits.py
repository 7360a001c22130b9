"""The broker's resource limits, each named with its unit, and why each default is what it is.

One frozen Struct, the ``[limits]`` table of the config file.  The limits are
enforced in broker/server.py (connections, per address, idle eviction),
broker/connection.py (frames, in-flight requests, timeouts, the frame deadline),
broker/request_memory.py (request bytes held by all connections) and
broker/handlers.py (fetch sizes); broker/scrubbing.py paces the scrubber.
Exceeding a limit costs the offending connection an error response or its socket,
with a log line; at queued_request_bytes_max every reader pauses until memory
frees.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from client.protocol.connection import INFLIGHT_REQUESTS_MAX_DEFAULT
from client.protocol.frames import (
    BODY_BYTES_MAX_DEFAULT,
    FRAME_BYTES_MAX_DEFAULT,
    FRAME_HEADER_BYTES,
)

# Room a fetch response needs besides record bytes: the frame header and a body
# listing every partition.  fetch_bytes_max must leave this much under frame_bytes_max.
FETCH_RESPONSE_OVERHEAD_BYTES: Final = FRAME_HEADER_BYTES + BODY_BYTES_MAX_DEFAULT

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-connection and broker-wide limits.  Every field is a positive integer
    (scrub_bytes_per_second may be 0: off)."""

    # The biggest frame a client may send or receive (64 MiB): a 16 MiB batch plus
    # several 1 MiB partitions fit; Kafka's socket.request.max.bytes is 100 MiB.
    # A declared length above it closes the connection before anything is buffered.
    frame_bytes_max: Positive = FRAME_BYTES_MAX_DEFAULT
    # Requests read but not yet answered on one connection (256): deep enough to
    # keep a producer's pipe full, small enough that one client cannot queue
    # unbounded work.  The excess request is answered with TOO_MANY_REQUESTS.
    inflight_requests_max: Positive = INFLIGHT_REQUESTS_MAX_DEFAULT
    # Open client connections (4096): an idle one costs a socket, two tasks and a
    # small buffer (about 10 KiB of broker memory each, measured in
    # docs/benchmarks.md), so thousands fit easily; the broker raises its soft
    # open-file limit to this plus room for segment files at start (broker/server.py).
    # Excess connections are closed at once.
    connections_max: Positive = 4096
    # Record bytes in one fetch response (50 MiB, Kafka's fetch.max.bytes).  A
    # request may ask for less, never more; one whole batch is always returned so
    # a consumer makes progress even past a huge batch.
    fetch_bytes_max: Positive = 50 * 1024 * 1024
    # How long a request may take, not counting a Fetch's own max_wait_ms (30 s,
    # Kafka's request.timeout.ms); the wait itself is capped at this too.  Also
    # bounds writing one response to a client that does not read.
    request_timeout_ms: Positive = 30_000
    # A connection with no request in flight and no bytes received for this long
    # is closed (10 minutes, Kafka's connections.max.idle.ms).
    idle_connection_timeout_ms: Positive = 600_000
    # Bytes of unfinished frames and queued requests held by all connections
    # together (256 MiB, Kafka's queued.max.request.bytes): at the limit, readers
    # stop reading until memory frees.  Without it, connections_max clients that
    # stop mid-frame could pin connections_max x frame_bytes_max.  At least
    # frame_bytes_max, so that one biggest frame always fits.
    queued_request_bytes_max: Positive = 256 * 1024 * 1024
    # A frame whose first byte arrived must be complete within this (60 s): a
    # connection that started a frame and did not finish it in time is closed
    # (a slowloris client trickling a byte a second holds nothing for long).
    frame_receive_timeout_ms: Positive = 60_000
    # Open connections from one client address (1024, Kafka's
    # max.connections.per.ip): one host cannot take every connection slot.
    connections_per_address_max: Positive = 1024
    # At connections_max, a new connection is admitted by closing the connection
    # idle longest, if it has had no request for at least this long (10 s):
    # idle or trickling connections cannot lock legitimate clients out.
    connection_evict_idle_ms: Positive = 10_000
    # Bytes per second the background scrubber re-reads of sealed segments to
    # re-verify their CRCs (4 MiB/s: a pass over 100 GiB in about 7 hours, little
    # disk bandwidth); a corrupt batch found is logged and no longer served.  0 = off.
    scrub_bytes_per_second: NonNegative = 4 * 1024 * 1024
    # On SIGTERM/SIGINT, how long in-flight requests get to finish before their
    # connections are cut (10 s); logs are flushed and closed after that either way.
    shutdown_timeout_ms: Positive = 10_000

    def check(self) -> None:
        """Raise ValueError when the limits contradict each other."""
        if self.frame_bytes_max < FRAME_HEADER_BYTES:
            raise ValueError(
                f"limits.frame_bytes_max={self.frame_bytes_max} is below the "
                f"{FRAME_HEADER_BYTES}-byte frame header"
            )
        if self.queued_request_bytes_max < self.frame_bytes_max:
            raise ValueError(
                f"limits.queued_request_bytes_max={self.queued_request_bytes_max} is "
                f"below limits.frame_bytes_max={self.frame_bytes_max}"
            )
        if self.fetch_bytes_max > self.frame_bytes_max:
            raise ValueError(
                f"limits.fetch_bytes_max={self.fetch_bytes_max} exceeds "
                f"limits.frame_bytes_max={self.frame_bytes_max}"
            )
