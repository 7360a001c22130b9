"""The chaos runner's seeded schedule (tests/chaos/runner.py): the same seed gives
the same steps, every step fits the run, only the chosen faults appear."""

from __future__ import annotations

from broker.cluster.member import LEASE_TTL_S
from tests.chaos.runner import FAULTS, schedule


def test_same_seed_same_schedule_and_another_seed_differs() -> None:
    """Proves a schedule is a function of its seed."""
    assert schedule(5, 300.0, FAULTS) == schedule(5, 300.0, FAULTS)
    assert schedule(5, 300.0, FAULTS) != schedule(6, 300.0, FAULTS)


def test_steps_fit_the_run_and_use_the_chosen_faults() -> None:
    """Proves the steps' waits and durations fit the run, only the chosen kinds
    appear, and a pause lasts longer than the broker lease."""
    steps = schedule(9, 120.0, ("kill", "pause"))
    assert steps
    assert sum(step.wait_s + step.duration_s for step in steps) <= 120.0
    assert {step.kind for step in steps} <= {"kill", "pause"}
    assert all(step.duration_s > LEASE_TTL_S for step in steps if step.kind == "pause")
    assert schedule(9, 120.0, ()) == []
