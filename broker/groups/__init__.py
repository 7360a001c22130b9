"""Consumer groups: the coordinator and its storage (docs/groups.md).

``coordinator`` is the sans-I/O state machine over every group, built from
``membership`` (joins, heartbeats, leaves, fencing, expiry), ``assignment``
(subscriptions, RE2-compiled topic regexes and the target assignment),
``offsets`` (commits, deletions, replay of ``__consumer_offsets``) and
``group`` (one group and the reconciliation step); ``assignors`` are the
server-side assignors and ``records`` the ``__consumer_offsets`` codec.
``service`` is the trio shell that stores records and expires sessions;
``handlers`` turns wire messages into calls on it.
"""
