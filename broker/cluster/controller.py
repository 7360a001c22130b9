"""The controller: the one broker that moves partition leadership when brokers
come and go.

Election: every member puts ``controller/<lease hex>`` with its own lease when it
registers; the key with the lowest ``create_revision`` wins, and that revision is
the **controller epoch**.  When the controller's lease expires its key goes, and
the next-oldest candidate is the controller (no extra round trip).

Every controller write is one transaction that also compares the controller's
own election key's ``create_revision`` with its epoch: once that key is gone (a
paused controller whose lease expired, then resumed) the compare fails, the write
is refused by etcd, and the ex-controller steps down.  Each write also compares the
partition state's version (a CAS), so it never overwrites a state it has not seen.

After every change the member applies (broker/cluster/member.py), the controller
runs :func:`broker.cluster.placement.elect_leaders` over the live brokers and
writes the partitions whose leadership must change.  A failed write (a conflict
or an unreachable etcd) is retried after the next change or after RETRY_S.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import trio

from broker.cluster.placement import elect_leaders
from broker.cluster.schema import PartitionState, controller_key, encode, state_key
from broker.cluster.snapshot import ClusterMetadata, Controller
from broker.cluster.store import (
    Compare,
    MetadataStore,
    MetadataStoreError,
    Put,
    VersionConflictError,
)
from broker.logging import get_logger

if TYPE_CHECKING:
    from broker.cluster.member import ClusterMember

RETRY_S: Final = 0.5

_logger = get_logger()


class ControllerFencedError(MetadataStoreError):
    """This broker's controller epoch is over: its election key is gone."""


async def write_state(
    store: MetadataStore,
    controller: Controller,
    topic: str,
    partition: int,
    state: PartitionState,
    version: int,
) -> int:
    """One fenced CAS of a partition's state.  Returns the new revision.  Raises
    ControllerFencedError (no longer controller), VersionConflictError (the state
    changed), MetadataStoreError."""
    key = state_key(topic, partition)
    compares = [Compare(controller.key, controller.epoch, "create"), Compare(key, version)]
    try:
        return await store.txn(compares, [Put(key, encode(state))])
    except VersionConflictError as error:
        if error.actual_versions.get(controller.key, controller.epoch) != controller.epoch:
            raise ControllerFencedError(
                f"controller epoch {controller.epoch} is over: {controller.key} is gone"
            ) from error
        raise


def my_controller(member: ClusterMember, metadata: ClusterMetadata) -> Controller | None:
    """The election result, if it is this member's current candidacy."""
    controller = metadata.controller
    if controller is None or controller.node_id != member.node_id:
        return None
    if controller.key != controller_key(member.lease_id) or member.view.is_fenced():
        return None
    return controller


async def run_controller(member: ClusterMember) -> None:
    """Act as controller whenever elected (module docstring), until cancelled."""
    epoch = 0
    while True:  # until cancelled
        changed = member.change_event()
        metadata = member.metadata
        controller = my_controller(member, metadata)
        retry = False
        if controller is not None:
            if controller.epoch != epoch:
                epoch = controller.epoch
                _logger.info("elected controller", node=member.node_id, controller_epoch=epoch)
            retry = await _elect(member.store, controller, metadata)
            if retry and my_controller(member, member.metadata) is None:
                epoch = 0
        elif epoch:
            _logger.info("no longer controller", node=member.node_id, controller_epoch=epoch)
            epoch = 0
        with trio.move_on_after(RETRY_S if retry else float("inf")):
            await changed.wait()


async def _elect(store: MetadataStore, controller: Controller, metadata: ClusterMetadata) -> bool:
    """Write every leadership change; True when one failed (retry later)."""
    changes = elect_leaders(metadata.topics, metadata.states, metadata.live())
    failed = False
    for (topic, partition), decision in sorted(changes.items()):
        state = decision.state
        version = metadata.state_versions[(topic, partition)]
        try:
            await write_state(store, controller, topic, partition, state, version)
        except ControllerFencedError as error:
            _logger.warning("controller write fenced; stepping down", error=error.message)
            return True
        except MetadataStoreError as error:
            _logger.info("leadership change not written", topic=topic, error=error.message)
            failed = True
            continue
        _logger.info(
            "leader elected",
            topic=topic,
            partition=partition,
            leader=state.leader,
            leader_epoch=state.leader_epoch,
            controller_epoch=controller.epoch,
        )
    return failed
