"""The MetadataStore contract, run against both stores: the local store in a temp dir
and the etcd store against a real etcd process (etcd_process.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from etcd_process import etcd_server_fixture  # noqa: F401 (a fixture)

from broker.cluster.etcd_store import open_etcd_store
from broker.cluster.etcd_url import parse_etcd_url
from broker.cluster.follow import PrefixView, follow_prefix
from broker.cluster.local_store import open_local_store
from broker.cluster.store import (
    ABSENT,
    Compare,
    Delete,
    LeaseLostError,
    MetadataStore,
    Put,
    RevisionCompactedError,
    Snapshot,
    VersionConflictError,
    WatchBatch,
)

# Bounds for waits on etcd (a lease of 1 s expires within about 1.5 s).
WAIT_S = 10.0


@pytest.fixture(params=["local", "etcd"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetadataStore]:
    if request.param == "local":
        async with open_local_store(tmp_path / "metadata.json", durable=False) as local:
            yield local
            local.check_invariants()
    else:
        etcd = request.getfixturevalue("etcd_server")
        async with open_etcd_store(parse_etcd_url(etcd.cluster_url())) as remote:
            yield remote


async def next_batch(batches: AsyncIterator[WatchBatch]) -> WatchBatch:
    with trio.fail_after(WAIT_S):
        return await batches.__anext__()


def summary(batch: WatchBatch) -> list[tuple[str, str, bytes]]:
    return [(event.kind.value, event.key, event.value) for event in batch.events]


async def test_put_with_expected_version_succeeds_then_conflicts(store: MetadataStore) -> None:
    """Proves a CAS put succeeds on the current version and is refused on a stale one."""
    first = await store.put("k", b"1", expected_version=ABSENT)
    second = await store.put("k", b"2", expected_version=first)
    assert second > first
    with pytest.raises(VersionConflictError) as conflict:
        await store.put("k", b"3", expected_version=first)
    assert conflict.value.actual_versions == {"k": second}
    item = await store.get("k")
    assert item is not None
    assert (item.value, item.create_revision, item.mod_revision) == (b"2", first, second)


async def test_create_if_absent_refuses_an_existing_key(store: MetadataStore) -> None:
    """Proves expected_version=0 creates a key only once."""
    created = await store.put("broker/1", b"a", expected_version=ABSENT)
    with pytest.raises(VersionConflictError) as conflict:
        await store.put("broker/1", b"b", expected_version=ABSENT)
    assert conflict.value.actual_versions == {"broker/1": created}
    item = await store.get("broker/1")
    assert item is not None and item.value == b"a"


async def test_delete_checks_the_version(store: MetadataStore) -> None:
    """Proves a versioned delete is refused on a stale version and applied on the
    current one; an unconditional delete of an absent key changes nothing."""
    version = await store.put("k", b"v")
    with pytest.raises(VersionConflictError):
        await store.delete("k", expected_version=version - 1)
    assert await store.get("k") is not None
    deleted_at = await store.delete("k", expected_version=version)
    assert deleted_at > version
    assert await store.get("k") is None
    assert await store.delete("k") == deleted_at
    with pytest.raises(VersionConflictError):
        await store.delete("k", expected_version=version)


async def test_txn_applies_all_or_nothing(store: MetadataStore) -> None:
    """Proves a txn writes every key in one revision when its compares hold, and
    nothing (reporting the actual versions) when one does not."""
    epoch = await store.put("controller/epoch", b"7")
    old = await store.put("state/a", b"old")
    revision = await store.txn(
        [Compare("controller/epoch", epoch), Compare("state/a", old), Compare("state/b", 0)],
        [Put("state/a", b"new"), Put("state/b", b"b"), Delete("controller/none")],
    )
    a = await store.get("state/a")
    b = await store.get("state/b")
    assert a is not None and b is not None
    assert a.mod_revision == b.mod_revision == revision
    assert (a.value, b.value) == (b"new", b"b")

    with pytest.raises(VersionConflictError) as conflict:
        await store.txn(
            [Compare("controller/epoch", epoch), Compare("state/a", old)],
            [Put("state/a", b"lost"), Delete("controller/epoch")],
        )
    assert conflict.value.actual_versions == {"controller/epoch": epoch, "state/a": revision}
    a = await store.get("state/a")
    assert a is not None and a.value == b"new"
    assert await store.get("controller/epoch") is not None


async def test_txn_compares_create_revision(store: MetadataStore) -> None:
    """Proves a compare on the create revision holds across later puts of the key
    (a controller's epoch is its key's create revision)."""
    created = await store.put("controller/x", b"1")
    await store.put("controller/x", b"2")
    await store.txn([Compare("controller/x", created, target="create")], [Put("topic", b"t")])
    with pytest.raises(VersionConflictError):
        await store.txn(
            [Compare("controller/x", created + 100, target="create")], [Put("topic", b"u")]
        )
    item = await store.get("topic")
    assert item is not None and item.value == b"t"


async def test_read_prefix_returns_sorted_keys_and_the_revision(store: MetadataStore) -> None:
    """Proves a prefix read returns exactly the keys under it, sorted, with the
    store revision of the read."""
    await store.put("topics/b", b"2")
    await store.put("topics/a", b"1")
    await store.put("topicsx", b"other")
    last = await store.put("brokers/1", b"b")
    snapshot = await store.read_prefix("topics/")
    assert [(item.key, item.value) for item in snapshot.items] == [
        ("topics/a", b"1"),
        ("topics/b", b"2"),
    ]
    assert snapshot.revision == last == await store.current_revision()
    assert (await store.read_prefix("nothing/")).items == ()


async def test_watch_from_a_revision_gets_exactly_the_later_events(store: MetadataStore) -> None:
    """Proves a watch from revision R delivers exactly the events under its prefix
    from R on, one batch per revision, in order (a txn's events together)."""
    await store.put("t/before", b"0")
    start = await store.put("t/a", b"1")
    await store.put("other/x", b"not watched")
    txn_revision = await store.txn([], [Put("t/b", b"2"), Put("t/c", b"3")])
    delete_revision = await store.delete("t/a")
    async with store.watch("t/", start) as batches:
        stream = aiter(batches)
        first = await next_batch(stream)
        second = await next_batch(stream)
        third = await next_batch(stream)
    assert (first.revision, summary(first)) == (start, [("put", "t/a", b"1")])
    assert (second.revision, summary(second)) == (
        txn_revision,
        [("put", "t/b", b"2"), ("put", "t/c", b"3")],
    )
    assert (third.revision, summary(third)) == (delete_revision, [("delete", "t/a", b"")])


async def test_watch_delivers_new_events_while_open(store: MetadataStore) -> None:
    """Proves a watch from the next revision delivers writes made after it opened."""
    start = await store.current_revision() + 1
    async with store.watch("live/", start) as batches:
        stream = aiter(batches)
        written = await store.put("live/k", b"v")
        batch = await next_batch(stream)
    assert (batch.revision, summary(batch)) == (written, [("put", "live/k", b"v")])
    assert batch.events[0].create_revision == written


async def test_watch_resumes_from_the_last_revision_after_reopening(
    store: MetadataStore,
) -> None:
    """Proves a consumer that reopens its watch at last revision + 1 misses nothing
    and sees nothing twice."""
    start = await store.current_revision() + 1
    async with store.watch("r/", start) as batches:
        stream = aiter(batches)
        await store.put("r/1", b"1")
        seen = await next_batch(stream)
    missed = [await store.put(f"r/{i}", b"x") for i in (2, 3)]
    async with store.watch("r/", seen.revision + 1) as batches:
        stream = aiter(batches)
        resumed = [await next_batch(stream), await next_batch(stream)]
    assert [batch.revision for batch in resumed] == missed
    assert [batch.events[0].key for batch in resumed] == ["r/2", "r/3"]


async def test_watch_from_a_compacted_revision_raises_and_follow_resyncs(
    store: MetadataStore,
) -> None:
    """Proves a watch from before a compaction raises RevisionCompactedError, and
    follow_prefix answers it with a fresh snapshot and then live batches."""
    start = await store.put("c/1", b"1")
    async with follow_prefix(store, "c/") as updates:
        view = PrefixView()
        with trio.fail_after(WAIT_S):
            view.apply(await updates.__anext__())
        assert set(view.items) == {"c/1"}
        await store.put("c/2", b"2")
        latest = await store.put("c/3", b"3")
        await store.compact(latest)
        with pytest.raises(RevisionCompactedError):
            async with store.watch("c/", start) as batches:
                await next_batch(aiter(batches))
        with trio.fail_after(WAIT_S):
            update = await updates.__anext__()
        assert isinstance(update, Snapshot) and updates.resyncs == 1
        view.apply(update)
        assert set(view.items) == {"c/1", "c/2", "c/3"}
        view.check_invariants()
        written = await store.put("c/4", b"4")
        with trio.fail_after(WAIT_S):
            view.apply(await updates.__anext__())
        assert view.revision == written and set(view.items) == {"c/1", "c/2", "c/3", "c/4"}


async def test_lease_expiry_deletes_its_keys_and_keepalive_reports_it_lost(
    store: MetadataStore,
) -> None:
    """Proves keys attached to a lease that is not kept alive vanish together (one
    revision), and a keepalive or put with that lease afterwards raises LeaseLostError."""
    lease = await store.grant_lease(1)
    await store.put("brokers/1", b"a", lease=lease.lease_id)
    start = await store.put("brokers/2", b"b", lease=lease.lease_id) + 1
    async with store.watch("brokers/", start) as batches:
        batch = await next_batch(aiter(batches))
    assert sorted(summary(batch)) == [("delete", "brokers/1", b""), ("delete", "brokers/2", b"")]
    assert (await store.read_prefix("brokers/")).items == ()
    with pytest.raises(LeaseLostError):
        await store.keep_alive(lease.lease_id)
    with pytest.raises(LeaseLostError):
        await store.put("brokers/1", b"again", lease=lease.lease_id)


async def test_keepalive_keeps_the_keys(store: MetadataStore) -> None:
    """Proves a lease kept alive past its TTL keeps its keys."""
    lease = await store.grant_lease(2)
    assert lease.ttl_s >= 2
    await store.put("alive", b"1", lease=lease.lease_id)
    for _ in range(6):  # 3 s in all, past the 2 s TTL
        await trio.sleep(0.5)
        assert await store.keep_alive(lease.lease_id) >= 1
    item = await store.get("alive")
    assert item is not None and item.lease == lease.lease_id


async def test_revoke_deletes_the_keys_at_once(store: MetadataStore) -> None:
    """Proves revoking a lease deletes its keys, and revoking it again is harmless."""
    lease = await store.grant_lease(30)
    await store.put("e/1", b"x", lease=lease.lease_id)
    await store.put("e/2", b"y")
    await store.revoke_lease(lease.lease_id)
    assert [item.key for item in (await store.read_prefix("e/")).items] == ["e/2"]
    await store.revoke_lease(lease.lease_id)
    with pytest.raises(LeaseLostError):
        await store.keep_alive(lease.lease_id)


async def test_put_with_an_unknown_lease_is_refused(store: MetadataStore) -> None:
    """Proves a put (plain or in a txn) naming a lease that does not exist raises
    LeaseLostError and writes nothing."""
    with pytest.raises(LeaseLostError):
        await store.put("k", b"v", lease=0x7777)
    with pytest.raises(LeaseLostError):
        await store.txn([Compare("k", 0)], [Put("k", b"v", lease=0x7777)])
    assert await store.get("k") is None


async def test_the_empty_prefix_reads_every_key(store: MetadataStore) -> None:
    """Proves the empty prefix covers every key of the store."""
    await store.put("x", b"1")
    await store.put("y/z", b"2")
    snapshot = await store.read_prefix("")
    assert [item.key for item in snapshot.items] == ["x", "y/z"]
