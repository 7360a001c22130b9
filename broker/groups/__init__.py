"""Consumer groups: the coordinator and its storage (docs/groups.md).

``coordinator`` is the sans-I/O state machine over every group (``group`` holds
one group and the reconciliation step, ``assignors`` the server-side
assignors, ``records`` the ``__consumer_offsets`` codec); ``service`` is the
trio shell that stores records and expires sessions; ``handlers`` turns wire
messages into calls on it.
"""
