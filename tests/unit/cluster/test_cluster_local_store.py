"""The local metadata store's own behaviour: the file across restarts, leases on
trio's clock, the bounded watch history, write failures.  The shared contract (CAS,
watches, leases) is in tests/integration/test_metadata_store_contract.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

from broker.cluster import local_store as local_store_module
from broker.cluster.follow import PrefixView, follow_prefix
from broker.cluster.local_store import open_local_store
from broker.cluster.store import (
    LeaseLostError,
    RevisionCompactedError,
    Snapshot,
    StoreUnavailableError,
    VersionConflictError,
    WatchBatch,
)
from client.errors import StorageError

WAIT_S = 5.0


async def test_keys_and_revisions_survive_a_reopen(tmp_path: Path) -> None:
    """Proves the file keeps every key with its revisions and the store revision, so
    revisions keep growing after a restart; history from before it is compacted."""
    path = tmp_path / "metadata.json"
    async with open_local_store(path) as store:
        created = await store.put("a", b"1")
        await store.put("b", b"2")
        await store.delete("b")
        last = await store.put("a", b"3")
        store.check_invariants()
    async with open_local_store(path) as store:
        item = await store.get("a")
        assert item is not None
        assert (item.value, item.create_revision, item.mod_revision) == (b"3", created, last)
        assert await store.get("b") is None
        assert await store.current_revision() == last
        assert await store.put("c", b"4") == last + 1
        with pytest.raises(RevisionCompactedError):
            async with store.watch("", last) as batches:
                await aiter(batches).__anext__()
        async with store.watch("", last + 1) as batches:
            with trio.fail_after(WAIT_S):
                batch = await aiter(batches).__anext__()
        assert batch.revision == last + 1
        store.check_invariants()


async def test_keys_of_leases_are_deleted_when_the_store_opens(tmp_path: Path) -> None:
    """Proves a restart ends every lease: keys attached to one are gone after reopening,
    in one new revision, while plain keys stay."""
    path = tmp_path / "metadata.json"
    async with open_local_store(path) as store:
        lease = await store.grant_lease(60)
        await store.put("brokers/1", b"x", lease=lease.lease_id)
        await store.put("brokers/2", b"y", lease=lease.lease_id)
        last = await store.put("topics/t", b"t")
    async with open_local_store(path) as store:
        snapshot = await store.read_prefix("")
        assert [item.key for item in snapshot.items] == ["topics/t"]
        assert snapshot.revision == last + 1
        store.check_invariants()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not valid"),
        (json.dumps({"version": 99, "revision": 1, "keys": []}).encode(), "unknown version"),
        (
            json.dumps(
                {
                    "version": 1,
                    "revision": 3,
                    "keys": [{"key": "k", "value": "", "create_revision": 2, "mod_revision": 9}],
                }
            ).encode(),
            "bad revisions",
        ),
    ],
)
async def test_a_damaged_file_is_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    """Proves a file that is not a valid store is refused with StorageError, never
    half-loaded."""
    path = tmp_path / "metadata.json"
    path.write_bytes(content)
    with pytest.raises(StorageError, match=reason):
        async with open_local_store(path):
            pass


async def test_a_lease_expires_on_trio_clock(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Proves a lease lives while kept alive within its TTL, and once not kept alive
    for its TTL its keys are deleted and it cannot be renewed."""
    async with open_local_store(tmp_path / "metadata.json", durable=False) as store:
        lease = await store.grant_lease(5)
        start = await store.put("brokers/1", b"x", lease=lease.lease_id) + 1
        mock_clock.jump(4)
        assert await store.keep_alive(lease.lease_id) == 5
        mock_clock.jump(4)
        await trio.testing.wait_all_tasks_blocked()
        assert await store.get("brokers/1") is not None
        mock_clock.jump(2)
        async with store.watch("brokers/", start) as batches:
            with trio.fail_after(5):
                batch = await aiter(batches).__anext__()
        assert [(event.kind.value, event.key) for event in batch.events] == [
            ("delete", "brokers/1")
        ]
        with pytest.raises(LeaseLostError):
            await store.keep_alive(lease.lease_id)
        store.check_invariants()


async def test_a_lease_past_its_deadline_is_lost_before_the_expiry_task_runs(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Proves a keepalive or put after the deadline fails even if the expiry task has
    not deleted the lease yet (no renewal of an expired lease)."""
    async with open_local_store(tmp_path / "metadata.json", durable=False) as store:
        lease = await store.grant_lease(1)
        mock_clock.jump(1)
        with pytest.raises(LeaseLostError):
            await store.keep_alive(lease.lease_id)
        with pytest.raises(LeaseLostError):
            await store.put("k", b"v", lease=lease.lease_id)


async def test_a_watch_that_falls_behind_the_history_is_compacted(tmp_path: Path) -> None:
    """Proves the history is bounded: a watch needing a revision no longer kept raises
    RevisionCompactedError, and follow_prefix re-reads and carries on."""
    path = tmp_path / "metadata.json"
    async with open_local_store(path, durable=False, history_revisions_max=3) as store:
        async with follow_prefix(store, "k/") as updates:
            view = PrefixView()
            with trio.fail_after(WAIT_S):
                view.apply(await updates.__anext__())
            for i in range(5):
                await store.put(f"k/{i}", b"v")
            with trio.fail_after(WAIT_S):
                update = await updates.__anext__()
            assert isinstance(update, Snapshot) and updates.resyncs == 1
            view.apply(update)
            assert len(view.items) == 5
            last = await store.put("k/9", b"w")
            with trio.fail_after(WAIT_S):
                update = await updates.__anext__()
            assert isinstance(update, WatchBatch) and update.revision == last
            view.apply(update)
            view.check_invariants()
        store.check_invariants()


async def test_a_failed_file_write_fails_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proves a write whose file update fails changes nothing in memory and leaves the
    store failed (memory and disk may disagree after it)."""

    def broken_write(path: Path, data: bytes, *, durable: bool = True) -> None:
        raise StorageError(f"cannot write {path}: disk full")

    async with open_local_store(tmp_path / "metadata.json") as store:
        await store.put("a", b"1")
        monkeypatch.setattr(local_store_module, "write_atomic", broken_write)
        with pytest.raises(StorageError, match="disk full"):
            await store.put("b", b"2")
        with pytest.raises(StorageError, match="disk full"):
            await store.get("a")


async def test_errors_in_the_body_come_out_unwrapped(tmp_path: Path) -> None:
    """Proves an error raised inside ``async with open_local_store(...)`` reaches the
    caller as itself, not inside an ExceptionGroup from the store's nursery."""
    with pytest.raises(VersionConflictError):
        async with open_local_store(tmp_path / "metadata.json", durable=False) as store:
            await store.put("k", b"v", expected_version=5)


async def test_a_watch_ends_when_the_store_closes(tmp_path: Path) -> None:
    """Proves a watch waiting for new revisions raises StoreUnavailableError when its
    store closes, instead of waiting forever."""
    errors: list[BaseException] = []

    async with open_local_store(tmp_path / "metadata.json", durable=False) as store:

        async def consume() -> None:
            async with store.watch("", 2) as batches:
                try:
                    await aiter(batches).__anext__()
                except StoreUnavailableError as error:
                    errors.append(error)

        with trio.fail_after(WAIT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await trio.testing.wait_all_tasks_blocked()
                store.close()
    assert len(errors) == 1
