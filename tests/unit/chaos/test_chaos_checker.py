"""The chaos checker (tests/chaos/checker.py): one synthetic history per anomaly
class, each caught, and valid histories passing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.checker import ANOMALIES, Assign, Commit, History, Poll, Send, check
from tests.chaos.workload import read_history, write_history


def sends(partition: int, values: list[str], process: str = "w", first: int = 0) -> list[Send]:
    """ok sends of ``values`` to ``partition`` at offsets ``first``, ``first+1``..."""
    return [
        Send(process, i, "ok", "k", value, partition, first + i, invoke_ns=i, complete_ns=i + 1)
        for i, value in enumerate(values)
    ]


def poll(
    partition: int, values: list[str], first: int = 0, process: str = "r", final: bool = False
) -> Poll:
    return Poll(
        process, tuple((partition, first + i, v) for i, v in enumerate(values)), final=final
    )


def only(history: History, kind: str) -> None:
    """The history is invalid with ``kind`` and nothing else."""
    verdict = check(history)
    assert not verdict.valid
    assert verdict.count(kind) >= 1, verdict.report()
    others = {k: verdict.count(k) for k in ANOMALIES if k != kind and verdict.count(k)}
    assert not others, verdict.report()
    with pytest.raises(AssertionError, match=kind):
        verdict.assert_valid()


def test_valid_history_with_indeterminate_sends_passes() -> None:
    """Proves a clean history passes: ok sends all read, one indeterminate send
    that landed (read) and one that did not (never read), group commits going up."""
    history = History()
    for send in sends(0, ["a", "b", "c"]):
        history.add(send)
    history.add(Send("w", 3, "info", "k", "d", 0, error="timeout"))  # landed at 3
    history.add(Send("w", 4, "info", "k", "e", 0, error="timeout"))  # never landed
    history.add(Send("w", 5, "ok", "k", "f", 0, 4))
    history.add(Send("v", 0, "fail", "k", "x", 1, error="unknown topic"))
    history.add(Assign("g1", (0,), group=True))
    history.add(poll(0, ["a", "b"], process="g1"))
    history.add(Commit("g1", "ok", "G", 0, 2, invoke_ns=10, complete_ns=11))
    history.add(poll(0, ["c", "d", "f"], first=2, process="g1"))
    history.add(Commit("g1", "ok", "G", 0, 5, invoke_ns=12, complete_ns=13))
    history.add(Commit("obs", "ok", "G", 0, 5, invoke_ns=14, complete_ns=15, observed=True))
    history.add(Assign("final", (0, 1), group=False))
    history.add(poll(0, ["a", "b", "c", "d", "f"], process="final", final=True))
    verdict = check(history)
    verdict.assert_valid()
    assert verdict.totals["info_landed"] == 1
    assert "VALID" in verdict.report()


def test_acknowledged_value_below_a_read_is_lost() -> None:
    """Proves lost-write: an ok send at offset 1, a reader read offset 2, nobody
    read offset 1."""
    history = History()
    for send in sends(0, ["a", "b", "c"]):
        history.add(send)
    history.add(Poll("r", ((0, 0, "a"),)))
    history.add(Assign("r", (0,), group=True))
    history.add(Poll("r", ((0, 2, "c"),)))
    only(history, "lost")


def test_acknowledged_value_missing_from_final_read_is_lost() -> None:
    """Proves unseen after the final read: the last acked value is absent."""
    history = History()
    for send in sends(0, ["a", "b"]):
        history.add(send)
    history.add(poll(0, ["a"], final=True))
    only(history, "lost")


def test_landed_indeterminate_send_missing_later_is_lost() -> None:
    """Proves an info send that someone read counts as committed: absent from
    the final read it is lost."""
    history = History()
    history.add(Send("w", 0, "info", "k", "a", 0))
    history.add(poll(0, ["a"], process="early"))
    history.add(poll(0, [], final=True))
    only(history, "lost")


def test_value_at_two_offsets_is_duplicated() -> None:
    """Proves duplicate: one value read at offsets 0 and 1."""
    history = History()
    history.add(Send("w", 0, "ok", "k", "a", 0, 0))
    history.add(poll(0, ["a", "a"], final=True))
    only(history, "duplicated")


def test_two_values_at_one_offset_are_inconsistent() -> None:
    """Proves inconsistent offsets: two readers see different values at offset 0."""
    history = History()
    history.add(Send("w", 0, "info", "k", "a", 0))
    history.add(Send("w", 1, "info", "k", "b", 0))
    history.add(poll(0, ["a"], process="r1"))
    history.add(poll(0, ["b"], process="r2"))
    only(history, "inconsistent_offsets")


def test_acknowledged_offset_holding_another_value_is_reuse() -> None:
    """Proves offset reuse: offset 0 acked to "a", later read as "b"."""
    history = History()
    history.add(Send("w", 0, "ok", "k", "a", 0, 0))
    history.add(Send("w", 1, "info", "k", "b", 0))
    history.add(poll(0, ["b"]))
    verdict = check(history)
    assert verdict.count("offset_reuse") == 1, verdict.report()
    # "a" is also never read below a read index: the reuse lost it.
    assert verdict.count("lost") == 1


def test_two_acks_at_one_offset_are_reuse() -> None:
    """Proves offset reuse between acknowledgements alone."""
    history = History()
    history.add(Send("w", 0, "ok", "k", "a", 0, 0))
    history.add(Send("v", 0, "ok", "k", "b", 0, 0))
    verdict = check(history)
    assert verdict.count("offset_reuse") == 1, verdict.report()


def test_reader_going_backwards_is_nonmonotonic() -> None:
    """Proves a reader seeing offset 1 after 2, without reassignment, is caught."""
    history = History()
    for send in sends(0, ["a", "b", "c"]):
        history.add(send)
    history.add(poll(0, ["a", "b", "c"]))
    history.add(poll(0, ["b"], first=1))
    only(history, "nonmonotonic_poll")


def test_reader_going_backwards_after_rebalance_is_fine() -> None:
    """Proves a group rebalance lets a reader start again below what it read."""
    history = History()
    for send in sends(0, ["a", "b", "c"]):
        history.add(send)
    history.add(poll(0, ["a", "b", "c"]))
    history.add(Assign("r", (0,), group=True))
    history.add(poll(0, ["b", "c"], first=1))
    check(history).assert_valid()


def test_reader_jumping_over_values_skips() -> None:
    """Proves a reader jumping from offset 0 to 2 while assigned is caught (and
    nothing is lost: another reader saw offset 1)."""
    history = History()
    for send in sends(0, ["a", "b", "c"]):
        history.add(send)
    history.add(Poll("r", ((0, 0, "a"), (0, 2, "c"))))
    history.add(poll(0, ["a", "b", "c"], process="other"))
    only(history, "poll_skip")


def test_producer_order_broken_is_nonmonotonic_send() -> None:
    """Proves a producer's later send acked at a lower offset is caught."""
    history = History()
    history.add(Send("w", 0, "ok", "k", "a", 0, 1))
    history.add(Send("w", 1, "ok", "k", "b", 0, 0))
    history.add(poll(0, ["b", "a"], final=True))
    only(history, "nonmonotonic_send")


def test_failed_send_read_is_aborted_read() -> None:
    """Proves G1a: a value whose send failed for certain shows up in a read."""
    history = History()
    history.add(Send("w", 0, "fail", "k", "a", 0, error="refused"))
    history.add(poll(0, ["a"]))
    only(history, "aborted_read")


def test_value_never_sent_is_unexpected() -> None:
    """Proves a read of a value nobody sent is caught."""
    history = History()
    history.add(poll(0, ["ghost"]))
    only(history, "unexpected")


def test_commit_going_backwards_is_caught() -> None:
    """Proves a committed offset lower than one acknowledged before it started
    (a commit or a read of the committed offsets) is caught; overlapping commits
    are not compared."""
    history = History()
    history.add(Commit("c1", "ok", "G", 0, 10, invoke_ns=1, complete_ns=2))
    history.add(Commit("c2", "ok", "G", 0, 8, invoke_ns=1, complete_ns=3))  # concurrent
    check(history).assert_valid()
    history.add(Commit("c2", "ok", "G", 0, 7, invoke_ns=4, complete_ns=5))
    history.add(Commit("obs", "ok", "G", 0, 7, invoke_ns=6, complete_ns=7, observed=True))
    history.add(Commit("c3", "fail", "G", 0, 1, invoke_ns=8, complete_ns=9))
    verdict = check(history)
    assert verdict.count("nonmonotonic_commit") == 2, verdict.report()
    assert all(verdict.count(k) == 0 for k in ANOMALIES if k != "nonmonotonic_commit")


def test_resuming_by_auto_offset_reset_after_an_acknowledged_commit_is_caught() -> None:
    """Proves a member that starts a newly assigned partition by auto_offset_reset
    (resume point -1) although a commit of it was acknowledged before the member
    fetched is caught; the same reset before any acknowledged commit is not."""
    history = History()
    history.add(Commit("c1", "ok", "G", 0, 40, invoke_ns=1, complete_ns=2, resumed=False))
    history.add(
        Commit("c2", "ok", "G", 1, -1, invoke_ns=1, complete_ns=3, observed=True, resumed=True)
    )
    check(history).assert_valid()
    history.add(
        Commit("c2", "ok", "G", 0, -1, invoke_ns=5, complete_ns=6, observed=True, resumed=True)
    )
    only(history, "nonmonotonic_commit")
    assert "resumed from -1 by c2 after 40" in check(history).report()


def test_resuming_from_a_commit_refused_for_certain_is_caught() -> None:
    """Proves a member resuming from (or the observer reading) an offset that only a
    commit refused for certain (fail) carried, or that no commit carried, is caught
    as uncommitted_read; reading an ok commit, or an info one (it may have taken
    effect), is not."""
    history = History()
    history.add(Commit("c1", "ok", "G", 0, 10, invoke_ns=1, complete_ns=2))
    history.add(Commit("c1", "info", "G", 0, 15, invoke_ns=3, complete_ns=4))
    history.add(Commit("c1", "fail", "G", 0, 20, invoke_ns=5, complete_ns=6))
    history.add(
        Commit("c2", "ok", "G", 0, 10, invoke_ns=2, complete_ns=3, observed=True, resumed=True)
    )
    history.add(Commit("obs", "ok", "G", 0, 15, invoke_ns=7, complete_ns=8, observed=True))
    check(history).assert_valid()
    history.add(
        Commit("c3", "ok", "G", 0, 20, invoke_ns=7, complete_ns=8, observed=True, resumed=True)
    )
    only(history, "uncommitted_read")
    history.add(Commit("obs", "ok", "G", 0, 25, invoke_ns=9, complete_ns=10, observed=True))
    verdict = check(history)
    assert verdict.count("uncommitted_read") == 2, verdict.report()
    report = verdict.report()
    assert "resumed from 20 by c3: only commits refused for certain carried it" in report
    assert "read as 25 by obs: no commit carried it" in report


def test_reading_a_commit_before_it_was_sent_is_caught() -> None:
    """Proves a read of the committed offsets naming an offset whose only commit was
    invoked after the read had ended is caught as uncommitted_read."""
    history = History()
    history.add(Commit("obs", "ok", "G", 0, 10, invoke_ns=1, complete_ns=2, observed=True))
    history.add(Commit("c1", "ok", "G", 0, 10, invoke_ns=3, complete_ns=4))
    only(history, "uncommitted_read")
    assert "only commits invoked after the read carried it" in check(history).report()


def test_report_lists_counts_and_examples() -> None:
    """Proves the report names every class with its count and an example."""
    history = History()
    history.add(poll(0, ["ghost"]))
    report = check(history).report()
    assert report.startswith("checker: INVALID (1 anomalies)")
    for kind in ANOMALIES:
        assert kind in report
    assert "'ghost' at p0@0" in report


def test_history_survives_a_round_trip_through_json_lines(tmp_path: Path) -> None:
    """Proves write_history / read_history keep every operation as it was."""
    history = History()
    history.add(Send("w", 0, "ok", "k", "a", 0, 0, 1, 2))
    history.add(Send("w", 1, "info", "k", "b", 0, None, 3, 4, "timeout"))
    history.add(Assign("r", (0, 1), True, 5, 5))
    history.add(Poll("r", ((0, 0, "a"),), 6, 7, final=True))
    history.add(Commit("r", "ok", "G", 0, 1, 8, 9, observed=True))
    history.add(Commit("r", "ok", "G", 1, -1, 8, 9, observed=True, resumed=True))
    path = tmp_path / "history.jsonl"
    write_history(history, path)
    assert read_history(path).ops == history.ops


def test_duplicates_read_in_order_are_no_skip() -> None:
    """Proves a reader reading a log holding duplicates in order reports the
    duplicates only, not a skip (positions are by offset, not by value)."""
    history = History()
    history.add(Send("w", 0, "ok", "k", "a", 0, 1))
    history.add(Send("w", 1, "ok", "k", "b", 0, 2))
    history.add(poll(0, ["x", "a", "b", "b", "a", "c"], process="r"))
    history.add(Send("w", 2, "ok", "k", "c", 0, 5))
    history.add(Send("v", 0, "ok", "k", "x", 0, 0))
    verdict = check(history)
    assert verdict.count("duplicated") == 2, verdict.report()
    assert verdict.count("poll_skip") == 0, verdict.report()
