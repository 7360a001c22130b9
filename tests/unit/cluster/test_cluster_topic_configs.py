"""broker/cluster/topic_admin.py: the replication configs a new topic is stored with."""

from __future__ import annotations

import pytest

from broker.cluster.topic_admin import replication_configs
from broker.storage.config import LogConfig
from broker.topics import log_config_for
from client.errors import InvalidConfigError


def test_three_replicas_get_min_isr_two_unless_set() -> None:
    """Proves a topic of 3+ replicas is stored with min.insync.replicas=2, one that
    sets it (in either spelling) keeps its value, and fewer replicas keep 1."""
    assert replication_configs(LogConfig(), {}, 3) == {"min.insync.replicas": "2"}
    assert replication_configs(LogConfig(), {}, 5) == {"min.insync.replicas": "2"}
    assert replication_configs(LogConfig(), {"min_insync_replicas": "3"}, 3) == {
        "min_insync_replicas": "3"
    }
    assert replication_configs(LogConfig(), {}, 2) == {}
    stored = replication_configs(LogConfig(), {"unclean.leader.election.enable": "true"}, 1)
    assert log_config_for(LogConfig(), stored).unclean_leader_election_enable


def test_bad_replication_configs_are_refused() -> None:
    """Proves a min ISR above the replication factor, below 1 or not a number, and an
    unclean-election flag that is not a boolean, are INVALID_CONFIG."""
    for configs, replicas in (
        ({"min.insync.replicas": "4"}, 3),
        ({"min.insync.replicas": "2"}, 1),
        ({"min.insync.replicas": "0"}, 3),
        ({"min.insync.replicas": "two"}, 3),
        ({"unclean.leader.election.enable": "maybe"}, 3),
    ):
        with pytest.raises(InvalidConfigError):
            replication_configs(LogConfig(), configs, replicas)
