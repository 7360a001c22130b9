"""The etcd store against a real etcd: dead endpoints, etcd restarts under a watch,
cluster prefixes that keep two clusters apart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from etcd_process import (  # noqa: F401 (fixtures)
    EtcdCluster,
    EtcdProcess,
    etcd_cluster_fixture,
    etcd_server_fixture,
    free_port,
)

from broker.cluster.etcd_store import EtcdStore, open_etcd_store
from broker.cluster.etcd_url import parse_etcd_url
from broker.cluster.local_store import LocalStore
from broker.cluster.open_store import open_metadata_store
from broker.cluster.store import StoreUnavailableError, WatchBatch, WriteOutcomeUnknownError
from client.errors import InvalidConfigError

WAIT_S = 15.0


async def next_batch(batches: AsyncIterator[WatchBatch]) -> WatchBatch:
    with trio.fail_after(WAIT_S):
        return await batches.__anext__()


async def put_when_back(store_url: str, key: str, value: bytes) -> int:
    """Put through a fresh store, retrying while etcd is still starting."""
    async with open_etcd_store(parse_etcd_url(store_url)) as store:
        with trio.fail_after(WAIT_S):
            while True:
                try:
                    return await store.put(key, value)
                except StoreUnavailableError:
                    await trio.sleep(0.05)


async def test_a_dead_endpoint_in_the_list_is_skipped(etcd_server: EtcdProcess) -> None:
    """Proves requests and watches work when the first endpoint listed is dead."""
    dead = free_port()
    url = parse_etcd_url(f"etcd://127.0.0.1:{dead},{etcd_server.address}/two")
    async with open_etcd_store(url) as store:
        written = await store.put("k", b"v")
        item = await store.get("k")
        assert item is not None and item.mod_revision == written
        async with store.watch("", written) as batches:
            batch = await next_batch(aiter(batches))
        assert batch.events[0].key == "k"


async def test_every_endpoint_dead_raises_store_unavailable() -> None:
    """Proves a store whose endpoints all refuse raises StoreUnavailableError (not a
    hang, not an httpx error)."""
    url = parse_etcd_url(f"etcd://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/none")
    async with open_etcd_store(url) as store:
        with trio.fail_after(WAIT_S), pytest.raises(StoreUnavailableError):
            await store.get("k")


async def test_a_watch_survives_an_etcd_restart(etcd_server: EtcdProcess) -> None:
    """Proves a watch open while etcd is SIGKILLed and restarted resumes from its last
    revision: it delivers every later event exactly once."""
    url = etcd_server.cluster_url("restart")
    async with open_etcd_store(parse_etcd_url(url)) as store:
        start = await store.current_revision() + 1
        async with store.watch("w/", start) as batches:
            stream = aiter(batches)
            first = await store.put("w/1", b"1")
            assert (await next_batch(stream)).revision == first
            second = await store.put("w/2", b"2")
            await trio.to_thread.run_sync(etcd_server.kill)
            await trio.to_thread.run_sync(etcd_server.start)
            third = await put_when_back(url, "w/3", b"3")
            received = [await next_batch(stream), await next_batch(stream)]
    assert [batch.revision for batch in received] == [second, third]
    assert [batch.events[0].key for batch in received] == ["w/2", "w/3"]


async def test_two_prefixes_on_one_etcd_are_separate(etcd_server: EtcdProcess) -> None:
    """Proves keys of one cluster prefix are invisible under another."""
    async with (
        open_etcd_store(parse_etcd_url(etcd_server.cluster_url("a"))) as first,
        open_etcd_store(parse_etcd_url(etcd_server.cluster_url("ab"))) as second,
    ):
        await first.put("k", b"a")
        await second.put("k", b"ab")
        assert [item.value for item in (await first.read_prefix("")).items] == [b"a"]
        assert [item.value for item in (await second.read_prefix("")).items] == [b"ab"]


async def test_the_factory_picks_the_store_from_the_url(
    etcd_server: EtcdProcess, tmp_path: Path
) -> None:
    """Proves open_metadata_store opens the local store without a URL, the etcd store
    with one, and refuses a bad URL with InvalidConfigError."""
    async with open_metadata_store(None, tmp_path) as local:
        assert isinstance(local, LocalStore)
        await local.put("k", b"v")
    assert (tmp_path / "metadata.json").is_file()
    async with open_metadata_store(etcd_server.cluster_url("f"), tmp_path) as remote:
        assert isinstance(remote, EtcdStore)
        assert await remote.get("k") is None
    with pytest.raises(InvalidConfigError, match="scheme"):
        async with open_metadata_store("http://127.0.0.1:1/x", tmp_path):
            pass


async def test_a_paused_etcd_fails_requests_fast_and_a_watch_waits_it_out(
    etcd_server: EtcdProcess,
) -> None:
    """Proves that while etcd answers nothing (SIGSTOP) a read fails with
    StoreUnavailableError and a CAS with WriteOutcomeUnknownError after the client
    timeout, a watch opened meanwhile keeps retrying, and all work once it resumes."""
    async with open_etcd_store(parse_etcd_url(etcd_server.cluster_url("pause"))) as store:
        start = await store.current_revision() + 1
        etcd_server.pause()
        try:
            with trio.fail_after(WAIT_S):
                with pytest.raises(StoreUnavailableError):
                    await store.get("k")
                with pytest.raises(WriteOutcomeUnknownError):
                    await store.put("k", b"v", expected_version=0)
            async with store.watch("", start) as batches:
                stream = aiter(batches)
                with trio.move_on_after(1.5):
                    await stream.__anext__()
                    pytest.fail("a watch on a paused etcd delivered a batch")
                etcd_server.resume()
                written = await put_when_back(etcd_server.cluster_url("pause"), "after", b"a")
                received = [await next_batch(stream)]
                if received[0].events[0].key == "k":
                    # The CAS whose outcome was unknown did land (after the resume).
                    received.append(await next_batch(stream))
        finally:
            etcd_server.resume()
    assert received[-1].revision == written
    assert [event.key for batch in received[:-1] for event in batch.events] in ([], ["k"])


async def test_killing_the_etcd_leader_loses_no_event_and_no_write(
    etcd_cluster: EtcdCluster,
) -> None:
    """Proves that with three etcd members, SIGKILLing the one the store talks to (the
    Raft leader) costs no acknowledged write and no watch event: requests and the
    watch move to the survivors."""
    leader = await trio.to_thread.run_sync(etcd_cluster.leader)
    others = [member for member in etcd_cluster.members if member is not leader]
    addresses = ",".join(member.address for member in [leader, *others])
    async with open_etcd_store(parse_etcd_url(f"etcd://{addresses}/ha")) as store:
        start = await store.current_revision() + 1
        async with store.watch("k/", start) as batches:
            stream = aiter(batches)
            first = await store.put("k/1", b"1")
            assert (await next_batch(stream)).revision == first
            await trio.to_thread.run_sync(leader.kill)
            with trio.fail_after(WAIT_S):
                while True:
                    try:
                        second = await store.put("k/2", b"2")
                        break
                    except StoreUnavailableError:
                        await trio.sleep(0.05)
            batch = await next_batch(stream)
        item = await store.get("k/1")
    assert (batch.revision, batch.events[0].key) == (second, "k/2")
    assert item is not None and item.mod_revision == first
