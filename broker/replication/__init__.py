"""Partition replication: the sans-I/O state machines (leader epochs, the leader's
view of its followers, a follower's truncate-then-fetch progress, elections) and
the trio shell that drives them across brokers.  docs/replication.md tells the
whole protocol.  This package's ``__init__`` imports nothing, so a sans-I/O module
here stays free of the shell's imports.
"""
