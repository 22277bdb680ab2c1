"""The restart policy of ``keel up`` (issue 13, defect 5): backoff, jitter, reset, give-up."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.supervision import (
    Finished,
    GiveUp,
    History,
    Restart,
    RestartPolicy,
    Supervision,
    backoff,
    decide,
    describe_exit,
)

POLICY = RestartPolicy(max_crashes=5, window_s=300, backoff_s=0.5, backoff_max_s=30, jitter=0.2)


def test_exit_zero_is_finished_not_a_crash() -> None:
    history = History(started_at=10.0)
    after, decision = decide(POLICY, history, 0, 20.0, random.Random(1))
    assert decision == Finished()
    assert after == history


def test_crashes_back_off_then_give_up_on_the_fifth_in_the_window() -> None:
    sup = Supervision(RestartPolicy(jitter=0.0), random.Random(7))
    decisions = []
    now = 0.0
    for _ in range(5):
        sup.started("risk", now)
        now += 1.0
        decisions.append(sup.exited("risk", -9, now))
    assert decisions[:4] == [Restart(0.5, 1), Restart(1.0, 2), Restart(2.0, 3), Restart(4.0, 4)]
    assert decisions[4] == GiveUp(5, 300.0)


def test_a_worker_that_stayed_up_starts_again_from_the_first_delay() -> None:
    sup = Supervision(RestartPolicy(jitter=0.0, stable_s=60), random.Random(7))
    sup.started("risk", 0.0)
    assert sup.exited("risk", 1, 1.0) == Restart(0.5, 1)
    sup.started("risk", 1.5)
    assert sup.exited("risk", 1, 2.0) == Restart(1.0, 2)
    sup.started("risk", 3.0)
    assert sup.exited("risk", 1, 100.0) == Restart(0.5, 3)  # up 97 s: the streak resets


def test_crashes_older_than_the_window_are_forgotten() -> None:
    sup = Supervision(RestartPolicy(max_crashes=2, window_s=10, jitter=0.0), random.Random(0))
    sup.started("feed", 0.0)
    assert isinstance(sup.exited("feed", 1, 1.0), Restart)
    sup.started("feed", 2.0)
    assert isinstance(sup.exited("feed", 1, 20.0), Restart)  # the first crash left the window
    sup.started("feed", 21.0)
    assert sup.exited("feed", 1, 22.0) == GiveUp(2, 10.0)


def test_workers_are_counted_apart() -> None:
    sup = Supervision(RestartPolicy(max_crashes=2, jitter=0.0), random.Random(0))
    for name in ("risk", "portfolio"):
        sup.started(name, 0.0)
        assert sup.exited(name, 1, 1.0) == Restart(0.5, 1)


@given(
    seed=st.integers(0, 2**32),
    exits=st.lists(st.integers(-15, 3).filter(lambda c: c != 0), min_size=1, max_size=20),
    gaps=st.lists(st.floats(0, 400, allow_nan=False), min_size=20, max_size=20),
)
def test_delays_stay_in_their_band_and_the_same_seed_decides_the_same(
    seed: int, exits: list[int], gaps: list[float]
) -> None:
    def run() -> list[object]:
        sup = Supervision(POLICY, random.Random(seed))
        out: list[object] = []
        now = 0.0
        for code, gap in zip(exits, gaps, strict=False):
            sup.started("w", now)
            now += gap
            out.append(sup.exited("w", code, now))
        return out

    first = run()
    assert first == run()
    for decision in first:
        if isinstance(decision, Restart):
            assert 0.5 * 0.8 <= decision.delay_s <= 30 * 1.2
            assert decision.crashes < POLICY.max_crashes
        else:
            assert isinstance(decision, GiveUp) and decision.crashes >= POLICY.max_crashes


@given(streak=st.integers(1, 200), u=st.integers(0, 2**32))
def test_backoff_never_decreases_without_jitter(streak: int, u: int) -> None:
    policy = RestartPolicy(jitter=0.0)
    rng = random.Random(u)
    assert backoff(policy, streak, rng) <= backoff(policy, streak + 1, rng) <= 30.0


def test_exits_are_named_by_code_or_signal() -> None:
    assert describe_exit(2) == "exit code 2"
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(-15) == "signal SIGTERM"


@pytest.mark.parametrize(
    "bad",
    [
        {"max_crashes": 0},
        {"window_s": 0},
        {"backoff_s": 5, "backoff_max_s": 1},
        {"jitter": 1.0},
        {"factor": 0.5},
    ],
)
def test_a_policy_that_makes_no_sense_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RestartPolicy(**bad)
