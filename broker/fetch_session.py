"""One connection's fetch session: where each partition's last fetch ended, and
the state of the fetch stream being answered.  Sans-I/O: no trio, no sockets.

A fetch may ask to continue where the connection's previous fetch of a
partition ended (``fetch_offset`` FETCH_OFFSET_CONTINUE): the session remembers,
per (topic, partition), the offset after the last batch sent and the
partition's truncation count when it was taken.  A position taken before a
truncation of the log is dropped (the offset it names may be gone or hold other
records), so continuing it is refused and the client fetches from an offset.

A fetch with ``responses_max`` > 1 is a stream: it is answered again and again,
each answer flagged MORE and continuing after the previous one, while the
answers are small live ones and nothing but continuations waits behind it.
The session counts the answers the stream may still send.

A replica fetch (a follower's) neither continues nor streams: its fetch offset
tells the leader how far the follower's log reaches, so it must be the offset
the follower appended up to, never one the leader guessed for it.

Bounded: at most FETCH_POSITIONS_MAX positions (the most recently noted kept).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from client.errors import InvalidRequestError
from client.protocol.messages import FETCH_OFFSET_CONTINUE, FetchRequest, FetchResponse

# Partitions whose fetch position one connection remembers (for continuations);
# far more than a consumer assigns, a bound on what a client can make us keep.
FETCH_POSITIONS_MAX: Final = 10_000
# A stream answer carries at most this many record bytes (16 KiB): a consumer
# catching up gets single answers, each bounded by what it asked for, so a
# stream never piles up big answers it did not want.
STREAM_ANSWER_BYTES_MAX: Final = 16 * 1024

# (topic, partition) -> the partition's truncation count now, or None when the
# partition does not exist (here).
TruncationsOf = Callable[[str, int], "int | None"]


class FetchSession:
    """Fetch positions and the current stream of one connection."""

    def __init__(self, positions_max: int = FETCH_POSITIONS_MAX) -> None:
        assert positions_max >= 1, positions_max
        self.positions_max = positions_max
        # (topic, partition) -> (next offset, the partition's truncations then)
        self._positions: dict[tuple[str, int], tuple[int, int]] = {}
        self.stream_answers_left = 0  # answers the current stream may still send

    def __len__(self) -> int:
        return len(self._positions)

    def position(self, topic: str, partition: int) -> int | None:
        entry = self._positions.get((topic, partition))
        return None if entry is None else entry[0]

    def resolve(self, body: FetchRequest, truncations_of: TruncationsOf) -> None:
        """Replace each FETCH_OFFSET_CONTINUE in ``body`` (in place) by where this
        connection's previous fetch of that partition ended.  Call it when the
        fetch's turn comes, once every earlier fetch is answered.  Raises
        InvalidRequestError for a partition without a position (never fetched
        here, last fetch failed, forgotten, or truncated since), and for a replica
        fetch that continues or asks for a stream."""
        if body.replica_id >= 0 and body.responses_max != 1:
            raise InvalidRequestError(
                f"a replica fetch is answered once (responses_max {body.responses_max})"
            )
        positions = self._positions
        for fetch_topic in body.topics:
            for wanted in fetch_topic.partitions:
                if wanted.fetch_offset != FETCH_OFFSET_CONTINUE:
                    continue
                if body.replica_id >= 0:
                    raise InvalidRequestError(
                        f"{fetch_topic.name}/{wanted.partition}: a replica fetch names "
                        "its fetch offset (the follower's log end)"
                    )
                key = (fetch_topic.name, wanted.partition)
                entry = positions.get(key)
                if entry is not None and truncations_of(*key) != entry[1]:
                    del positions[key]  # the log was truncated (or the topic replaced)
                    entry = None
                if entry is None:
                    raise InvalidRequestError(
                        f"{fetch_topic.name}/{wanted.partition}: fetch_offset "
                        f"{FETCH_OFFSET_CONTINUE} (continue) needs an earlier successful "
                        "fetch of it on this connection, with no truncation since"
                    )
                wanted.fetch_offset = entry[0]

    def note(
        self,
        body: FetchRequest,
        response: FetchResponse,
        next_offsets: list[int],
        truncations_of: TruncationsOf,
    ) -> None:
        """Remember where each partition of an answered fetch ends: after the
        last batch sent (``next_offsets``: one per partition with records, in
        response order), or where it started when nothing was; forgotten on an
        error."""
        positions = self._positions
        for fetch_topic in body.topics:
            for wanted in fetch_topic.partitions:
                key = (fetch_topic.name, wanted.partition)
                positions.pop(key, None)  # re-inserted last: the newest position
                truncations = truncations_of(*key)
                if truncations is not None:
                    positions[key] = (wanted.fetch_offset, truncations)
        sent = iter(next_offsets)
        for topic in response.topics:
            for result in topic.partitions:
                key = (topic.name, result.partition)
                if result.error_code:
                    positions.pop(key, None)
                elif result.records_bytes:
                    offset = next(sent)
                    entry = positions.get(key)
                    if entry is not None:
                        positions[key] = (offset, entry[1])
        excess = len(positions) - self.positions_max
        if excess > 0:
            # A client cycling through more partitions than that on one connection
            # keeps what it fetched last (insertion order); a continuation of a
            # forgotten one is refused (it then fetches from an offset).
            for key in list(positions)[:excess]:
                del positions[key]

    def continue_after(self, body: FetchRequest) -> None:
        """Point ``body`` (in place) at where its last answer ended, for a
        stream's next answer."""
        for fetch_topic in body.topics:
            for wanted in fetch_topic.partitions:
                position = self.position(fetch_topic.name, wanted.partition)
                assert position is not None, (fetch_topic.name, wanted.partition)
                wanted.fetch_offset = position

    # -- streams ----------------------------------------------------------------------

    def start_stream(self, responses_max: int) -> None:
        """A fetch may now answer ``responses_max`` times (1: a plain fetch)."""
        assert responses_max >= 1, responses_max
        self.stream_answers_left = responses_max

    def may_continue(
        self, payload_bytes: int, has_error: bool, *, others_waiting: bool, shutting_down: bool
    ) -> bool:
        """Whether the stream answers again after an answer of ``payload_bytes``:
        it has answers left, no request but continuations waits behind it, the
        broker is not shutting down, and this is a small live answer without
        errors.  Counts the answer."""
        assert self.stream_answers_left >= 1, self.stream_answers_left
        self.stream_answers_left -= 1
        more = (
            self.stream_answers_left > 0
            and not others_waiting
            and not shutting_down
            and 0 < payload_bytes <= STREAM_ANSWER_BYTES_MAX
            and not has_error
        )
        if not more:
            self.stream_answers_left = 0
        return more

    def check_invariants(self) -> None:
        assert len(self._positions) <= self.positions_max, len(self._positions)
        assert self.stream_answers_left >= 0, self.stream_answers_left
        for (topic, partition), (offset, truncations) in self._positions.items():
            assert offset >= 0 and truncations >= 0, (topic, partition, offset, truncations)
