"""The venue circuit breaker: a pure state machine over execution reports and event time.

```
CLOSED --(error rate over the window > max_error_pct, with >= min_reports)--> OPEN
OPEN --(cooldown elapsed, checked on any later event)--> HALF_OPEN
HALF_OPEN --(one probe order let through; its first report: accepted/filled)--> CLOSED
HALF_OPEN --(the probe is rejected)--> OPEN (a new cool-down)
```

A report counts as a failure when it is a rejection (``rejected``), as a success when the
venue accepted or filled the order; cancels are neutral (we asked for them). The window is
by event time. Orders to an OPEN venue are rejected; in HALF_OPEN exactly one order (the
probe) is let through until its outcome is known.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from services.risk.limits import BreakerConfig

BreakerStatus = Literal["CLOSED", "OPEN", "HALF_OPEN"]


class BreakerState(msgspec.Struct, forbid_unknown_fields=True):
    status: BreakerStatus = "CLOSED"
    times: list[int] = msgspec.field(default_factory=list)  # report times in the window
    failed: list[bool] = msgspec.field(default_factory=list)
    failures: int = 0  # failures among ``failed``
    opened_at: int = 0
    probe: str = ""  # the client order id of the half-open probe ("" = none sent yet)
    reason: str = ""


class Transition(msgspec.Struct, frozen=True):
    venue: str
    before: BreakerStatus
    after: BreakerStatus
    reason: str


class VenueBreaker:
    """Breakers of every venue; ``state`` is a plain dict so it snapshots with the engine."""

    def __init__(self, config: BreakerConfig, state: dict[str, BreakerState]) -> None:
        self.config = config
        self.window = config.window_ns
        self.cooldown = config.cooldown_ns
        self.state = state
        self.next_deadline = self._deadline()

    def _deadline(self) -> int | None:
        opened = [s.opened_at for s in self.state.values() if s.status == "OPEN"]
        return min(opened) + self.cooldown if opened else None

    def tick(self, now: int) -> list[Transition]:
        """OPEN -> HALF_OPEN for every venue whose cool-down elapsed by ``now``."""
        deadline = self.next_deadline
        if deadline is None or now < deadline:
            return []
        out: list[Transition] = []
        for venue, state in sorted(self.state.items()):
            if state.status == "OPEN" and now >= state.opened_at + self.cooldown:
                state.status, state.probe = "HALF_OPEN", ""
                state.reason = f"cool-down of {self.config.cooldown} over: one probe order allowed"
                out.append(Transition(venue, "OPEN", "HALF_OPEN", state.reason))
        self.next_deadline = self._deadline()
        return out

    def allows(self, venue: str) -> tuple[bool, str]:
        """Whether an order may go to ``venue`` now, and why not."""
        state = self.state.get(venue)
        if state is None or state.status == "CLOSED":
            return True, ""
        if state.status == "OPEN":
            return False, f"venue {venue} breaker OPEN: {state.reason}"
        if state.probe:
            return False, f"venue {venue} breaker HALF_OPEN: probe {state.probe} outstanding"
        return True, ""

    def sent(self, venue: str, client_order_id: str) -> None:
        """An order went to ``venue``: in HALF_OPEN it is the probe."""
        state = self.state.get(venue)
        if state is not None and state.status == "HALF_OPEN" and not state.probe:
            state.probe = client_order_id

    def report(self, venue: str, client_order_id: str, status: str, now: int) -> Transition | None:
        if status == "rejected":
            failed = True
        elif status in ("accepted", "filled", "partially_filled"):
            failed = False
        else:
            return None
        state = self.state.get(venue)
        if state is None:
            state = self.state[venue] = BreakerState()
        if state.status == "HALF_OPEN":
            if not state.probe or client_order_id != state.probe:
                return None  # a late report of an order sent before the breaker opened
            if failed:
                return self._open(venue, state, "HALF_OPEN", now, "probe order rejected")
            state.status, state.probe, state.reason = "CLOSED", "", "probe order went through"
            state.times.clear()
            state.failed.clear()
            state.failures = 0
            return Transition(venue, "HALF_OPEN", "CLOSED", state.reason)
        if state.status == "OPEN":
            return None
        times, flags = state.times, state.failed
        times.append(now)
        flags.append(failed)
        state.failures += failed
        horizon = now - self.window
        drop = 0
        while drop < len(times) and times[drop] <= horizon:
            state.failures -= flags[drop]
            drop += 1
        if drop:
            del times[:drop]
            del flags[:drop]
        total = len(times)
        if failed and total >= self.config.min_reports:
            rate = 100.0 * state.failures / total
            if rate > self.config.max_error_pct:
                reason = (
                    f"{state.failures} of {total} reports rejected in {self.config.window} "
                    f"({rate:.1f}% > {self.config.max_error_pct:g}%)"
                )
                return self._open(venue, state, "CLOSED", now, reason)
        return None

    def _open(
        self, venue: str, state: BreakerState, before: BreakerStatus, now: int, reason: str
    ) -> Transition:
        state.status, state.opened_at, state.probe, state.reason = "OPEN", now, "", reason
        state.times.clear()
        state.failed.clear()
        state.failures = 0
        self.next_deadline = self._deadline()
        return Transition(venue, before, "OPEN", reason)
