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
leaves every ELR, a replica whose broker gave it up after a storage failure
(``offline/`` keys: broker/replication/replica_manager.py) counts as dead for its
partition, and partitions whose leader is gone get a new one.  An unclean
election or recovery is logged at warning; every election written is counted by
kind in the broker's ReplicationCounters (the metrics read them).  A failed write
(a conflict or an unreachable etcd) is retried after the next change or after
RETRY_S.  A restart is applied to each partition once (:class:`ControllerMemory`):
a round that failed part-way does not fence the restarted broker again out of a
partition whose fence was written, which it may have rejoined since.  After
writing, the next round waits until the member has applied those writes
(OWN_WRITES_WAIT_S at most), so it never decides from the states they replaced.

Preferred-leader election: once a partition's first replica is live and in the
ISR but not leading for PREFERRED_LEADER_DELAY_S, the controller moves leadership
back to it (:func:`elect_preferred_leaders` does it at once, for the
ElectLeaders request).  The broker epochs seen are kept in memory: a new
controller starts from the registrations it finds.  Independently of that memory,
a partition whose leader registered after the partition's state was written
(:func:`registered_after_state`: a whole-cluster restart, or a restart no
controller saw) is re-elected with a new leader epoch: the same leader after a
clean shutdown, else another ISR member (election.py's ``reconcile``); the
leader's broker leads only a state written after its current registration
(broker/replication/replica_manager.py).  Other replicas registered after the
state are fenced as restarts the controller saw.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Final

import trio

from broker.cluster.placement import elect_leaders, preferred_elections
from broker.cluster.schema import NO_LEADER, PartitionState, controller_key, encode, state_key
from broker.cluster.snapshot import ClusterMetadata, Controller
from broker.cluster.store import (
    Compare,
    MetadataStore,
    MetadataStoreError,
    Put,
    VersionConflictError,
)
from broker.logging import get_logger
from broker.metrics.counters import ReplicationCounters
from broker.replication.election import Decision, ElectionKind
from client.errors import ErrorCode, NotControllerError

if TYPE_CHECKING:
    from broker.cluster.member import ClusterMember

RETRY_S: Final = 0.5
# After writing, the next round waits (at most this long) until the member has
# applied the controller's own writes, so it does not decide from the states they
# replaced (a certain version conflict, and a failed round).
OWN_WRITES_WAIT_S: Final = 1.0
# How long a preferred replica must be back in the ISR before it gets leadership
# back: long enough that a broker flapping in and out does not move leaders each
# time, short enough that load rebalances within seconds of a restart.
PREFERRED_LEADER_DELAY_S: Final = 5.0

PartitionKey = tuple[str, int]

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
    the restarts already applied to some partitions in a round that did not
    complete, and since when each partition's preferred replica could lead again.

    A restart (a broker seen with a new broker epoch) is applied to each partition
    once: when its fenced state is written, or when the state needed no change.  A
    round with a failed write keeps ``broker_epochs`` as it was, so the partitions
    whose write failed get the restart again in the next round; ``applied`` keeps
    the others from getting it again, since by then their state may list the
    broker because it rejoined (a leader's expansion from its new incarnation), not
    from its previous life."""

    def __init__(self, broker_epochs: Mapping[int, int]) -> None:
        self.broker_epochs = dict(broker_epochs)
        # Partition -> {broker: the broker epoch whose restart it already got}.
        self.applied: dict[PartitionKey, dict[int, int]] = {}
        self.preferred_since: dict[PartitionKey, float] = {}

    def restarted(self, metadata: ClusterMetadata) -> dict[int, bool]:
        """Brokers registered anew since the last completed round -> whether cleanly."""
        return {
            node: metadata.brokers[node].clean_shutdown
            for node, epoch in metadata.broker_epochs.items()
            if self.broker_epochs.get(node) != epoch
        }

    def restarted_for(
        self, key: PartitionKey, restarted: Mapping[int, bool], metadata: ClusterMetadata
    ) -> dict[int, bool]:
        """The restarts of ``restarted`` that partition ``key`` has not got yet."""
        done = self.applied.get(key, {})
        return {
            node: clean
            for node, clean in restarted.items()
            if done.get(node) != metadata.broker_epochs.get(node)
        }

    def applied_to(
        self, key: PartitionKey, restarted: Collection[int], metadata: ClusterMetadata
    ) -> None:
        """Partition ``key`` got the restarts of ``restarted`` (their current epochs)."""
        if restarted:
            done = self.applied.setdefault(key, {})
            done.update({node: metadata.broker_epochs[node] for node in restarted})

    def round_completed(self, metadata: ClusterMetadata) -> None:
        """Every change of a round was written: its broker epochs are acted on."""
        self.broker_epochs = dict(metadata.broker_epochs)
        self.applied = {}

    def check_invariants(self) -> None:
        for key, done in self.applied.items():
            assert done, key
            for node, epoch in done.items():
                # Pending restarts only: a completed round clears them.
                assert self.broker_epochs.get(node) != epoch, (key, node, epoch)


def registered_after_state(metadata: ClusterMetadata) -> dict[tuple[str, int], dict[int, bool]]:
    """Per partition, its replicas whose current registration (broker epoch) is
    newer than the partition's state -> whether that registration says
    clean_shutdown.  They restarted after the state was written, whether or not
    this controller saw it (a whole-cluster restart, a new controller): the state's
    ISR and leadership of them are from their previous life."""
    found: dict[tuple[str, int], dict[int, bool]] = {}
    for key, version in metadata.state_versions.items():
        topic = metadata.topics.get(key[0])
        if topic is None or key[1] >= len(topic.replicas):
            continue
        for replica in topic.replicas[key[1]]:
            registration = metadata.brokers.get(replica)
            epoch = metadata.broker_epochs.get(replica)
            if registration is not None and epoch is not None and epoch > version:
                found.setdefault(key, {})[replica] = registration.clean_shutdown
    return found


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
            counters = member.broker.metrics.replication
            retry, written = await _elect(member.store, controller, metadata, memory, counters)
            if not retry:
                memory.round_completed(metadata)
                wait_s, preferred_written = await _preferred(
                    member.store, controller, metadata, memory, counters
                )
                written = max(written, preferred_written)
            elif my_controller(member, member.metadata) is None:
                epoch = 0
            memory.check_invariants()
            if written and not await member.wait_applied(written, OWN_WRITES_WAIT_S):
                _logger.warning(
                    "controller's own writes not applied yet",
                    revision=written,
                    waited_s=OWN_WRITES_WAIT_S,
                )
        elif epoch:
            _logger.info("no longer controller", node=member.node_id, controller_epoch=epoch)
            epoch = 0
        with trio.move_on_after(RETRY_S if retry else wait_s):
            await changed.wait()


def election_label(kind: ElectionKind, before: PartitionState, after: PartitionState) -> str | None:
    """The ``kind`` label of distributary_leader_elections_total for a decision that
    took ``before`` to ``after``; None when no leader was elected (unchanged, or the
    partition went offline).  A clean election from the ELR is told apart from one
    from the ISR by where the new leader was."""
    if kind is ElectionKind.CLEAN:
        return "clean" if after.leader in before.isr else "elr"
    if kind is ElectionKind.UNCLEAN:
        return "unclean"
    if kind is ElectionKind.RECOVERY:
        return "unclean_recovery"
    if kind is ElectionKind.PREFERRED:
        return "preferred"
    return None


async def _elect(
    store: MetadataStore,
    controller: Controller,
    metadata: ClusterMetadata,
    memory: ControllerMemory,
    counters: ReplicationCounters,
) -> tuple[bool, int]:
    """Write every leadership change (each election written is counted in
    ``counters``; each partition's restarts go into ``memory`` once written, or
    when they changed nothing).  Returns (whether a write failed: retry later, the
    last revision written or 0)."""
    restarted = memory.restarted(metadata)
    registered_after = registered_after_state(metadata)
    # Partitions grouped by the restarts they have still to get (one group unless a
    # round failed part-way).
    pending: dict[PartitionKey, dict[int, bool]] = {}
    groups: dict[frozenset[tuple[int, bool]], dict[PartitionKey, PartitionState]] = {}
    for key, state in metadata.states.items():
        pending[key] = memory.restarted_for(key, restarted, metadata)
        groups.setdefault(frozenset(pending[key].items()), {})[key] = state
    changes: dict[PartitionKey, Decision] = {}
    for group, states in groups.items():
        changes |= elect_leaders(
            metadata.topics,
            states,
            metadata.live(),
            dict(group),
            metadata.offline_replicas,
            registered_after,
        )
    for key in metadata.states.keys() - changes.keys():
        memory.applied_to(key, pending[key], metadata)  # nothing to change
    failed = False
    written = 0
    for (topic, partition), decision in sorted(changes.items()):
        state = decision.state
        version = metadata.state_versions[(topic, partition)]
        try:
            written = await write_state(store, controller, topic, partition, state, version)
        except ControllerFencedError as error:
            _logger.warning("controller write fenced; stepping down", error=error.message)
            return True, written
        except MetadataStoreError as error:
            _logger.info(
                "leadership change not written",
                topic=topic,
                partition=partition,
                error=error.message,
            )
            failed = True
            continue
        memory.applied_to((topic, partition), pending[(topic, partition)], metadata)
        before = metadata.states[(topic, partition)]
        kind = election_label(decision.kind, before, state)
        if kind is not None:
            counters.elected(kind)
        log = _logger.info
        if decision.kind in (ElectionKind.UNCLEAN, ElectionKind.RECOVERY):
            log = _logger.warning
        log(
            _change_message(decision.kind, before, state),
            topic=topic,
            partition=partition,
            leader=state.leader,
            leader_epoch=state.leader_epoch,
            isr=state.isr,
            elr=state.elr,
            controller_epoch=controller.epoch,
        )
    return failed, written


def _change_message(kind: ElectionKind, before: PartitionState, after: PartitionState) -> str:
    """The log line's event for a change the controller wrote."""
    if kind is ElectionKind.CLEAN:
        return "leader elected"
    if kind is not ElectionKind.NONE:
        return f"{kind.value} leader election"
    if after.leader == NO_LEADER and before.leader != NO_LEADER:
        return "partition offline: no eligible leader"
    return "replicas fenced"


async def _preferred(
    store: MetadataStore,
    controller: Controller,
    metadata: ClusterMetadata,
    memory: ControllerMemory,
    counters: ReplicationCounters,
) -> tuple[float, int]:
    """Move leadership back to preferred replicas that waited PREFERRED_LEADER_DELAY_S;
    returns (how long until the next one is due (inf: none), the last revision
    written or 0).  One whose write failed is due again after RETRY_S: a write etcd
    did not answer may have changed nothing, so no metadata change would come to
    wake the controller."""
    now = trio.current_time()
    candidates = preferred_elections(
        metadata.topics, metadata.states, metadata.live(), offline=metadata.offline_replicas
    )
    since = {key: memory.preferred_since.get(key, now) for key in candidates}
    memory.preferred_since = since
    due = {key: state for key, state in candidates.items()
           if now - since[key] >= PREFERRED_LEADER_DELAY_S}  # fmt: skip
    outcomes, written = await _write_preferred(store, controller, metadata, due, counters)
    waiting = [since[key] + PREFERRED_LEADER_DELAY_S - now for key in candidates if key not in due]
    if any(outcome is not ErrorCode.NONE for outcome in outcomes.values()):
        waiting.append(RETRY_S)
    return (max(0.0, min(waiting)) if waiting else float("inf")), written


async def _write_preferred(
    store: MetadataStore,
    controller: Controller,
    metadata: ClusterMetadata,
    changes: dict[tuple[str, int], PartitionState],
    counters: ReplicationCounters,
) -> tuple[dict[PartitionKey, ErrorCode], int]:
    """Write preferred-leader changes; each partition's outcome (NONE: moved) and
    the last revision written (0: none).  Raises NotControllerError when this
    broker's controller epoch is over."""
    outcomes: dict[PartitionKey, ErrorCode] = {}
    written = 0
    for (topic, partition), state in sorted(changes.items()):
        version = metadata.state_versions[(topic, partition)]
        try:
            written = await write_state(store, controller, topic, partition, state, version)
        except ControllerFencedError as error:
            raise NotControllerError(error.message) from error
        except MetadataStoreError as error:
            _logger.info(
                "preferred leader not written",
                topic=topic,
                partition=partition,
                error=error.message,
            )
            outcomes[(topic, partition)] = ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE
            continue
        outcomes[(topic, partition)] = ErrorCode.NONE
        counters.elected("preferred")
        _logger.info(
            "preferred leader elected",
            topic=topic,
            partition=partition,
            leader=state.leader,
            leader_epoch=state.leader_epoch,
            controller_epoch=controller.epoch,
        )
    return outcomes, written


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
    changes = preferred_elections(
        metadata.topics,
        metadata.states,
        metadata.live(),
        set(wanted),
        offline=metadata.offline_replicas,
    )
    counters = member.broker.metrics.replication
    written, _ = await _write_preferred(member.store, controller, metadata, changes, counters)
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
