"""Chaos testing: real brokers, real faults, and a Jepsen-style checker.

- checker.py: the pure checker of a history of sends, polls and commits;
- workload.py: producers and consumers through the public SDK, recording the history;
- cluster.py: etcd and three ``distributary serve`` processes on 127.0.0.2-4;
- faults.py: SIGKILL, SIGSTOP, nftables partitions, a full disk, a wiped data dir;
- runner.py and __main__.py: ``python -m tests.chaos --seed S --minutes M``.

docs/testing.md explains the verdicts and how to run it.
"""
