"""When ``keel up`` restarts a process that exited, and when it gives up: a pure policy.

It reads no clock and starts nothing: the supervisor (``cli/fleet_commands.py``) tells it
when a process started and how it exited, with ``now`` from its own monotonic clock, and
gets a decision back. The jitter comes from an injected ``random.Random``, so a seeded
policy decides the same delays every time.
"""

from __future__ import annotations

import random
import signal

import msgspec


class RestartPolicy(msgspec.Struct, frozen=True):
    """Exponential backoff with jitter; ``max_crashes`` within ``window_s`` is a give-up.

    A process that stayed up ``stable_s`` before it crashed starts again from the first
    delay (the crash still counts in the window)."""

    max_crashes: int = 5
    window_s: float = 300.0
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    stable_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_crashes < 1:
            raise ValueError(f"max_crashes must be at least 1, got {self.max_crashes}")
        if self.window_s <= 0 or self.backoff_s < 0 or self.backoff_max_s < self.backoff_s:
            raise ValueError("window_s > 0 and 0 <= backoff_s <= backoff_max_s")
        if self.factor < 1 or not 0 <= self.jitter < 1 or self.stable_s < 0:
            raise ValueError("factor >= 1, 0 <= jitter < 1, stable_s >= 0")


class Finished(msgspec.Struct, frozen=True):
    """Exit code 0: the process ended its work (a feed at its last bar); not restarted."""


class Restart(msgspec.Struct, frozen=True):
    delay_s: float
    crashes: int
    """Crashes counted in the window, this one included."""


class GiveUp(msgspec.Struct, frozen=True):
    crashes: int
    window_s: float


Decision = Finished | Restart | GiveUp


class History(msgspec.Struct, frozen=True):
    """One process's record: when it last started, its crashes in the window, its streak."""

    started_at: float = 0.0
    crash_times: tuple[float, ...] = ()
    streak: int = 0
    """Crashes since it last stayed up ``stable_s``: the exponent of the next delay."""


def crashed(returncode: int) -> bool:
    """A non-zero exit code, or a signal (a negative ``Popen.returncode``)."""
    return returncode != 0


def describe_exit(returncode: int) -> str:
    """``exit code 2`` or ``signal SIGKILL``, as ``Popen.returncode`` reports it."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def started(history: History, now: float) -> History:
    return msgspec.structs.replace(history, started_at=now)


def decide(
    policy: RestartPolicy, history: History, returncode: int, now: float, rng: random.Random
) -> tuple[History, Decision]:
    """The record after an exit at ``now`` and what to do about it."""
    if not crashed(returncode):
        return history, Finished()
    recent = (*(t for t in history.crash_times if now - t < policy.window_s), now)
    stable = now - history.started_at >= policy.stable_s
    streak = 1 if stable else history.streak + 1
    after = History(history.started_at, recent, streak)
    if len(recent) >= policy.max_crashes:
        return after, GiveUp(len(recent), policy.window_s)
    return after, Restart(backoff(policy, streak, rng), len(recent))


def backoff(policy: RestartPolicy, streak: int, rng: random.Random) -> float:
    """The delay before restart number ``streak`` (1 = the first): ``backoff_s`` doubling
    up to ``backoff_max_s``, then spread by up to ``jitter`` either way so processes that
    crashed together do not all come back in the same instant."""
    base = min(policy.backoff_max_s, policy.backoff_s * policy.factor ** min(streak - 1, 64))
    return base * (1 + policy.jitter * (2 * rng.random() - 1))


class Supervision:
    """The histories of a fleet's processes by name, with one policy and one random source."""

    def __init__(self, policy: RestartPolicy, rng: random.Random) -> None:
        self.policy = policy
        self.rng = rng
        self.histories: dict[str, History] = {}

    def started(self, name: str, now: float) -> None:
        self.histories[name] = started(self.histories.get(name, History()), now)

    def exited(self, name: str, returncode: int, now: float) -> Decision:
        history, decision = decide(
            self.policy, self.histories.get(name, History()), returncode, now, self.rng
        )
        self.histories[name] = history
        return decision
