"""FetchSession without sockets: continuation positions, their bound, their
loss on truncation, and the stream's answer count."""

from __future__ import annotations

import pytest

from broker.fetch_session import STREAM_ANSWER_BYTES_MAX, FetchSession
from client.errors import ErrorCode, InvalidRequestError
from client.protocol.messages import (
    FETCH_OFFSET_CONTINUE,
    FetchPartition,
    FetchPartitionResponse,
    FetchRequest,
    FetchResponse,
    FetchTopic,
    FetchTopicResponse,
)


class Truncations:
    """A stand-in for the partitions' truncation counters."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}

    def __call__(self, topic: str, partition: int) -> int | None:
        return self.counts.get((topic, partition), 0)


def fetch(offsets: dict[int, int]) -> FetchRequest:
    return FetchRequest(
        topics=[FetchTopic("t", [FetchPartition(p, o) for p, o in offsets.items()])]
    )


def answered(records: dict[int, int], errors: dict[int, int] | None = None) -> FetchResponse:
    """A response with ``records`` bytes per partition (and error codes)."""
    errors = errors or {}
    partitions = [
        FetchPartitionResponse(p, error_code=errors.get(p, 0), records_bytes=size)
        for p, size in records.items()
    ]
    return FetchResponse([FetchTopicResponse("t", partitions)])


def test_a_continuation_resumes_after_the_last_batch_sent() -> None:
    """After an answer with records the position is the next offset; without
    records it stays where the fetch started; an error forgets it."""
    session, truncations = FetchSession(), Truncations()
    session.note(
        fetch({0: 5, 1: 9, 2: 3}), answered({0: 100, 1: 0, 2: 0}, {2: 1}), [8], truncations
    )
    session.check_invariants()
    body = fetch({0: FETCH_OFFSET_CONTINUE, 1: FETCH_OFFSET_CONTINUE})
    session.resolve(body, truncations)
    assert [p.fetch_offset for p in body.topics[0].partitions] == [8, 9]
    with pytest.raises(InvalidRequestError):
        session.resolve(fetch({2: FETCH_OFFSET_CONTINUE}), truncations)


def test_a_continuation_without_an_earlier_fetch_is_refused() -> None:
    """Nothing fetched on the connection: nothing to continue."""
    with pytest.raises(InvalidRequestError) as raised:
        FetchSession().resolve(fetch({0: FETCH_OFFSET_CONTINUE}), Truncations())
    assert raised.value.code == ErrorCode.INVALID_REQUEST


def test_a_position_taken_before_a_truncation_is_dropped() -> None:
    """A truncation of the partition since the position was noted makes a
    continuation of it fail (and forgets it); other partitions are unaffected."""
    session, truncations = FetchSession(), Truncations()
    session.note(fetch({0: 4, 1: 4}), answered({0: 10, 1: 10}), [6, 7], truncations)
    truncations.counts[("t", 0)] = 1
    with pytest.raises(InvalidRequestError):
        session.resolve(fetch({0: FETCH_OFFSET_CONTINUE}), truncations)
    assert session.position("t", 0) is None
    body = fetch({1: FETCH_OFFSET_CONTINUE})
    session.resolve(body, truncations)
    assert body.topics[0].partitions[0].fetch_offset == 7
    session.check_invariants()


def test_positions_are_bounded_keeping_the_newest() -> None:
    """At most positions_max positions: the most recently fetched are kept."""
    session, truncations = FetchSession(positions_max=3), Truncations()
    for index in range(5):
        session.note(fetch({index: 7}), answered({index: 0}), [], truncations)
        session.check_invariants()
    assert len(session) == 3
    assert session.position("t", 0) is None and session.position("t", 4) == 7
    session.note(fetch({2: 7}), answered({2: 0}), [], truncations)  # refreshed: newest
    session.note(fetch({5: 7}), answered({5: 0}), [], truncations)
    assert session.position("t", 2) == 7 and session.position("t", 3) is None


def test_a_stream_continues_only_with_small_clean_answers_and_nothing_behind() -> None:
    """A stream answers at most responses_max times; a big answer, an empty one,
    an error, a request behind it or a shutdown ends it at once."""
    session = FetchSession()
    session.start_stream(3)
    assert session.may_continue(10, False, others_waiting=False, shutting_down=False)
    assert session.may_continue(10, False, others_waiting=False, shutting_down=False)
    assert not session.may_continue(10, False, others_waiting=False, shutting_down=False)
    for payload, error, others, stopping in (
        (STREAM_ANSWER_BYTES_MAX + 1, False, False, False),
        (0, False, False, False),
        (10, True, False, False),
        (10, False, True, False),
        (10, False, False, True),
    ):
        session.start_stream(5)
        assert not session.may_continue(
            payload, error, others_waiting=others, shutting_down=stopping
        )
        assert session.stream_answers_left == 0
    session.start_stream(1)
    assert not session.may_continue(10, False, others_waiting=False, shutting_down=False)
    session.check_invariants()


def test_continue_after_points_the_request_at_the_positions() -> None:
    """A stream's next answer starts where the last one ended."""
    session, truncations = FetchSession(), Truncations()
    body = fetch({0: 0})
    session.note(body, answered({0: 50}), [3], truncations)
    session.continue_after(body)
    assert body.topics[0].partitions[0].fetch_offset == 3


def test_a_replica_fetch_neither_continues_nor_streams() -> None:
    """Proves a follower's fetch must name its offsets (they report its log end to
    the leader) and be answered once, even where a consumer's could continue."""
    session, truncations = FetchSession(), Truncations()
    session.note(fetch({0: 5}), answered({0: 100}), [8], truncations)
    body = fetch({0: FETCH_OFFSET_CONTINUE})
    body.replica_id = 2
    with pytest.raises(InvalidRequestError, match="names its fetch offset"):
        session.resolve(body, truncations)
    streaming = fetch({0: 8})
    streaming.replica_id, streaming.responses_max = 2, 5
    with pytest.raises(InvalidRequestError, match="answered once"):
        session.resolve(streaming, truncations)
    plain = fetch({0: 8})
    plain.replica_id = 2
    session.resolve(plain, truncations)
    assert plain.topics[0].partitions[0].fetch_offset == 8
