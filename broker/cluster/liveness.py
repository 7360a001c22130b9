"""Fast detection of a dead broker process: the controller probes each broker's
listener, and every other broker the controller's, and the lease of one whose
port refuses connections is revoked.

A broker's registration lives as long as its etcd lease (LEASE_TTL_S in
broker/cluster/member.py), so on its own a killed broker is noticed only when
the lease expires.  Every PROBE_INTERVAL_S this member opens a TCP connection
(from its own listen host, as the replica fetcher does) and closes it at once:
while it is the controller (``my_controller``), to every other registered
broker's advertised host:port (:func:`probe_targets`); otherwise to the elected
controller's alone (:func:`controller_target`), so that a dead controller is
replaced in about a second too (its lease holds its election key: revoking it
makes the next candidate controller at once).  What an attempt shows:

- accepted: the process is there (it may be paused: the kernel completes the
  handshake into the listen backlog even for a stopped process);
- refused (ECONNREFUSED): nothing listens on that port, the process is gone;
- a timeout or any other error: no evidence either way (a partitioned or paused
  host), so the lease decides, as before.

REFUSALS_TO_REVOKE refusals in a row for one registration make this member
revoke that broker's lease: its keys vanish in one revision and the controller's
normal path elects new leaders and fences the broker out of every ISR (a dead
controller's successor does so).  Several brokers may revoke a dead controller's
lease; revoking one that is gone already is a no-op.  Refused
is safe evidence because a process that can still acknowledge a write must still
hold its listening socket (the broker closes its listeners only on its way out),
and a broker that did lose its lease while alive registers again through
member.py's LeaseLostError path.  :class:`RefusalTally` is the decision (no I/O);
:func:`run_liveness` is the trio shell.
"""

from __future__ import annotations

import enum
import errno
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import trio

from broker.cluster.schema import controller_key
from broker.cluster.snapshot import ClusterMetadata
from broker.cluster.store import MetadataStoreError
from broker.logging import get_logger

if TYPE_CHECKING:
    from broker.cluster.member import ClusterMember

# How often the controller probes every other broker's listener.
PROBE_INTERVAL_S: Final = 0.5
# How long one probe's connect may take before it counts as no answer.
PROBE_TIMEOUT_S: Final = 0.4
# Refused probes in a row (for one registration) before the lease is revoked.
REFUSALS_TO_REVOKE: Final = 2
# Listen hosts that name no single address: probes are then not bound.
_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})

_logger = get_logger()


class ProbeOutcome(enum.Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    NO_ANSWER = "no answer"  # a timeout or any error other than a refusal


class RefusalTally:
    """Refused probes in a row per broker registration (node id and lease id).

    :meth:`record` says when a registration's lease should be revoked; anything
    but a refusal resets its count, and a registration that changed (a new lease)
    or went starts from zero.  Probes of this broker itself or of a node that is
    not registered are ignored."""

    def __init__(self, own_node_id: int, refusals_to_revoke: int = REFUSALS_TO_REVOKE) -> None:
        assert refusals_to_revoke >= 1, refusals_to_revoke
        self.own_node_id = own_node_id
        self.refusals_to_revoke = refusals_to_revoke
        # node id -> (lease id, refusals in a row for that lease)
        self._refusals: dict[int, tuple[int, int]] = {}

    def forget_gone(self, leases: Mapping[int, int]) -> None:
        """Drop the counts of registrations no longer in ``leases`` (node -> lease)."""
        self._refusals = {
            node: (lease, count)
            for node, (lease, count) in self._refusals.items()
            if leases.get(node) == lease
        }

    def record(self, node_id: int, lease_id: int, outcome: ProbeOutcome) -> bool:
        """Count one probe of ``node_id`` registered with ``lease_id``; True when its
        lease should be revoked now (the count then starts again)."""
        if node_id == self.own_node_id or lease_id == 0:
            return False
        if outcome is not ProbeOutcome.REFUSED:
            self._refusals.pop(node_id, None)
            return False
        lease, count = self._refusals.get(node_id, (lease_id, 0))
        count = count + 1 if lease == lease_id else 1
        if count >= self.refusals_to_revoke:
            self._refusals.pop(node_id, None)
            return True
        self._refusals[node_id] = (lease_id, count)
        return False

    def refusals(self, node_id: int) -> int:
        """Refused probes in a row counted for ``node_id``'s current registration."""
        return self._refusals.get(node_id, (0, 0))[1]

    def check_invariants(self) -> None:
        for node, (lease, count) in self._refusals.items():
            assert node != self.own_node_id, node
            assert lease != 0, node
            assert 1 <= count < self.refusals_to_revoke, (node, count)


def probe_targets(metadata: ClusterMetadata, own_node_id: int) -> dict[int, tuple[str, int, int]]:
    """Every other registered broker -> (host, port, lease id)."""
    return {
        node: (registration.host, registration.port, metadata.broker_leases.get(node, 0))
        for node, registration in metadata.brokers.items()
        if node != own_node_id
    }


def controller_target(
    metadata: ClusterMetadata, own_node_id: int
) -> dict[int, tuple[str, int, int]]:
    """The elected controller, when it is another broker -> (host, port, lease id):
    what a member that is not the controller probes.  Empty when there is none, or
    when its registration is not held by the lease of its election key."""
    controller = metadata.controller
    if controller is None or controller.node_id == own_node_id:
        return {}
    registration = metadata.brokers.get(controller.node_id)
    lease = metadata.broker_leases.get(controller.node_id, 0)
    if registration is None or lease == 0 or controller.key != controller_key(lease):
        return {}
    return {controller.node_id: (registration.host, registration.port, lease)}


def liveness_targets(
    metadata: ClusterMetadata, own_node_id: int, is_controller: bool
) -> dict[int, tuple[str, int, int]]:
    """What this member probes: every other broker as controller, else the
    controller alone."""
    if is_controller:
        return probe_targets(metadata, own_node_id)
    return controller_target(metadata, own_node_id)


async def probe(host: str, port: int, local_host: str | None) -> ProbeOutcome:
    """Open a TCP connection to host:port (from ``local_host`` when given) and close
    it at once; what the attempt showed.  Raises nothing."""
    with trio.move_on_after(PROBE_TIMEOUT_S):
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, kind, proto, _, address = infos[0]
            with trio.socket.socket(family, kind, proto) as sock:
                if local_host is not None:
                    await sock.bind((local_host, 0))
                await sock.connect(address)
            return ProbeOutcome.ACCEPTED
        except OSError as error:
            if error.errno == errno.ECONNREFUSED:
                return ProbeOutcome.REFUSED
            return ProbeOutcome.NO_ANSWER
    return ProbeOutcome.NO_ANSWER


async def run_liveness(member: ClusterMember) -> None:
    """Probe every other broker while this member is the controller, else the
    controller (module docstring), until cancelled."""
    from broker.cluster.controller import my_controller

    host = member.broker.config.host
    local_host = None if host in _WILDCARD_HOSTS else host
    tally = RefusalTally(member.node_id)
    while True:  # until cancelled
        next_round = trio.current_time() + PROBE_INTERVAL_S
        metadata = member.metadata
        is_controller = my_controller(member, metadata) is not None
        targets = liveness_targets(metadata, member.node_id, is_controller)
        tally.forget_gone({node: lease for node, (_, _, lease) in targets.items()})
        outcomes: dict[int, ProbeOutcome] = {}
        async with trio.open_nursery() as nursery:
            for node, (address, port, _) in targets.items():
                nursery.start_soon(_probe_into, outcomes, node, address, port, local_host)
        for node, outcome in sorted(outcomes.items()):
            lease = targets[node][2]
            if tally.record(node, lease, outcome):
                await _revoke(member, node, lease)
        await trio.sleep_until(next_round)


async def _probe_into(
    outcomes: dict[int, ProbeOutcome], node: int, host: str, port: int, local_host: str | None
) -> None:
    outcomes[node] = await probe(host, port, local_host)


async def _revoke(member: ClusterMember, node: int, lease: int) -> None:
    """Revoke a dead broker's lease, unless this member may no longer probe it (it
    stopped being controller, or that broker stopped being the controller) or the
    registration changed meanwhile.  Raises nothing (a failure is logged; the lease
    then expires on its own)."""
    from broker.cluster.controller import my_controller

    metadata = member.metadata
    is_controller = my_controller(member, metadata) is not None
    target = liveness_targets(metadata, member.node_id, is_controller).get(node)
    if target is None or target[2] != lease:
        return
    try:
        await member.store.revoke_lease(lease)
    except MetadataStoreError as error:
        _logger.warning("cannot revoke a dead broker's lease", node=node, error=error.message)
        return
    _logger.info(
        "broker process gone: lease revoked",
        node=node,
        controller=not is_controller,
        lease=f"{lease:x}",
        refusals=REFUSALS_TO_REVOKE,
    )
