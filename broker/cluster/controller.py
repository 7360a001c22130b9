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
runs :func:`broker.cluster.placement.elect_leaders` (broker/replication/
election.py): dead brokers leave every ISR (into the ELR when the ISR falls below
the topic's min ISR), a broker seen back with a new registration (a new broker
epoch: it was dead in between) is fenced too and, after an unclean shutdown,
leaves every ELR, and partitions whose leader is gone get a new one.  An unclean
election or recovery is logged at warning.  A failed write (a conflict or an
unreachable etcd) is retried after the next change or after RETRY_S.

Preferred-leader election: once a partition's first replica is live and in the
ISR but not leading for PREFERRED_LEADER_DELAY_S, the controller moves leadership
back to it (:func:`elect_preferred_leaders` does it at once, for the
ElectLeaders request).  The broker epochs seen are kept in memory: a new
controller starts from the registrations it finds (a restart it did not see is
fenced when the broker next dies).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Final

import trio

from broker.cluster.placement import elect_leaders, preferred_elections
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
from broker.replication.election import ElectionKind
from client.errors import ErrorCode, NotControllerError

if TYPE_CHECKING:
    from broker.cluster.member import ClusterMember

RETRY_S: Final = 0.5
# How long a preferred replica must be back in the ISR before it gets leadership
# back: long enough that a broker flapping in and out does not move leaders each
# time, short enough that load rebalances within seconds of a restart.
PREFERRED_LEADER_DELAY_S: Final = 5.0

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


class ControllerMemory:
    """What a controller remembers between rounds: the broker epochs it has acted on,
    and since when each partition's preferred replica could lead again."""

    def __init__(self, broker_epochs: dict[int, int]) -> None:
        self.broker_epochs = dict(broker_epochs)
        self.preferred_since: dict[tuple[str, int], float] = {}

    def restarted(self, metadata: ClusterMetadata) -> dict[int, bool]:
        """Brokers registered anew since the last round -> whether cleanly."""
        return {
            node: metadata.brokers[node].clean_shutdown
            for node, epoch in metadata.broker_epochs.items()
            if self.broker_epochs.get(node) != epoch
        }


async def run_controller(member: ClusterMember) -> None:
    """Act as controller whenever elected (module docstring), until cancelled."""
    epoch = 0
    memory = ControllerMemory({})
    while True:  # until cancelled
        changed = member.change_event()
        metadata = member.metadata
        controller = my_controller(member, metadata)
        retry = False
        wait_s = float("inf")
        if controller is not None:
            if controller.epoch != epoch:
                epoch = controller.epoch
                memory = ControllerMemory(metadata.broker_epochs)
                _logger.info("elected controller", node=member.node_id, controller_epoch=epoch)
            restarted = memory.restarted(metadata)
            retry = await _elect(member.store, controller, metadata, restarted)
            if not retry:
                memory.broker_epochs = dict(metadata.broker_epochs)
                wait_s = await _preferred(member.store, controller, metadata, memory)
            elif my_controller(member, member.metadata) is None:
                epoch = 0
        elif epoch:
            _logger.info("no longer controller", node=member.node_id, controller_epoch=epoch)
            epoch = 0
        with trio.move_on_after(RETRY_S if retry else wait_s):
            await changed.wait()


async def _elect(
    store: MetadataStore,
    controller: Controller,
    metadata: ClusterMetadata,
    restarted: dict[int, bool],
) -> bool:
    """Write every leadership change; True when one failed (retry later)."""
    changes = elect_leaders(metadata.topics, metadata.states, metadata.live(), restarted)
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
        log = _logger.info
        if decision.kind in (ElectionKind.UNCLEAN, ElectionKind.RECOVERY):
            log = _logger.warning
        log(
            f"{decision.kind.value} leader election" if decision.kind is not ElectionKind.CLEAN
            else "leader elected",
            topic=topic,
            partition=partition,
            leader=state.leader,
            leader_epoch=state.leader_epoch,
            isr=state.isr,
            elr=state.elr,
            controller_epoch=controller.epoch,
        )  # fmt: skip
    return failed


async def _preferred(
    store: MetadataStore,
    controller: Controller,
    metadata: ClusterMetadata,
    memory: ControllerMemory,
) -> float:
    """Move leadership back to preferred replicas that waited PREFERRED_LEADER_DELAY_S;
    returns how long until the next one is due (inf: none)."""
    now = trio.current_time()
    candidates = preferred_elections(metadata.topics, metadata.states, metadata.live())
    since = {key: memory.preferred_since.get(key, now) for key in candidates}
    memory.preferred_since = since
    due = {key: state for key, state in candidates.items()
           if now - since[key] >= PREFERRED_LEADER_DELAY_S}  # fmt: skip
    await _write_preferred(store, controller, metadata, due)
    waiting = [since[key] + PREFERRED_LEADER_DELAY_S - now for key in candidates if key not in due]
    return max(0.0, min(waiting)) if waiting else float("inf")


async def _write_preferred(
    store: MetadataStore,
    controller: Controller,
    metadata: ClusterMetadata,
    changes: dict[tuple[str, int], PartitionState],
) -> dict[tuple[str, int], ErrorCode]:
    """Write preferred-leader changes; each partition's outcome (NONE: moved).
    Raises NotControllerError when this broker's controller epoch is over."""
    outcomes: dict[tuple[str, int], ErrorCode] = {}
    for (topic, partition), state in sorted(changes.items()):
        version = metadata.state_versions[(topic, partition)]
        try:
            await write_state(store, controller, topic, partition, state, version)
        except ControllerFencedError as error:
            raise NotControllerError(error.message) from error
        except MetadataStoreError as error:
            _logger.info("preferred leader not written", topic=topic, error=error.message)
            outcomes[(topic, partition)] = ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE
            continue
        outcomes[(topic, partition)] = ErrorCode.NONE
        _logger.info(
            "preferred leader elected",
            topic=topic,
            partition=partition,
            leader=state.leader,
            leader_epoch=state.leader_epoch,
            controller_epoch=controller.epoch,
        )
    return outcomes


async def elect_preferred_leaders(
    member: ClusterMember, partitions: Collection[tuple[str, int]] | None
) -> dict[tuple[str, int], tuple[ErrorCode, int]]:
    """The ElectLeaders request on the controller: move each partition (of
    ``partitions``, None: every one) to its preferred replica now.  Each partition's
    outcome and leader: NONE (moved), ELECTION_NOT_NEEDED (already led by it),
    PREFERRED_LEADER_NOT_AVAILABLE (not live or not in sync, or the write failed),
    UNKNOWN_TOPIC_OR_PARTITION.  Raises NotControllerError on any other broker."""
    metadata = member.metadata
    controller = my_controller(member, metadata)
    if controller is None:
        raise NotControllerError(f"broker {member.node_id} is not the controller")
    wanted = sorted(partitions) if partitions is not None else sorted(metadata.states)
    changes = preferred_elections(metadata.topics, metadata.states, metadata.live(), set(wanted))
    written = await _write_preferred(member.store, controller, metadata, changes)
    outcomes: dict[tuple[str, int], tuple[ErrorCode, int]] = {}
    for key in wanted:
        state = metadata.states.get(key)
        topic = metadata.topics.get(key[0])
        if state is None or topic is None:
            outcomes[key] = (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, -1)
        elif key in written:
            moved = written[key] == ErrorCode.NONE
            outcomes[key] = (written[key], changes[key].leader if moved else state.leader)
        elif state.leader == topic.replicas[key[1]][0]:
            outcomes[key] = (ErrorCode.ELECTION_NOT_NEEDED, state.leader)
        else:
            outcomes[key] = (ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE, state.leader)
    return outcomes
