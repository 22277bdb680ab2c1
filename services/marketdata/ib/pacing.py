"""IB's historical-data pacing, kept on our side so IB never has to say 162.

IB's documented rules (exchange time): no identical request within 15 s; no more than 60
requests in any 10 minutes; six or more requests for one contract within 2 s is a violation
(so at most five). A 162 that still comes (another client of the same login asked too)
blocks every request for a backoff that doubles per violation in a row, with jitter. Pure:
times are given, the caller sleeps.
"""

from __future__ import annotations

import random
from collections import deque

NS = 1_000_000_000
SAME_S = 15.0
WINDOW_S = 600.0
WINDOW_MAX = 60
CONTRACT_S = 2.0
CONTRACT_MAX = 5
BACKOFF_FIRST_S = 15.0
BACKOFF_CAP_S = 600.0

Request = tuple[str, ...]


class HistoryPacing:
    """When the next historical request may go, given those already sent."""

    def __init__(self, seed: int = 0) -> None:
        self._sent: deque[tuple[int, str, Request]] = deque()
        self._blocked_until = 0
        self._violations = 0
        self._random = random.Random(seed)
        self.violations = 0

    def wait_ns(self, contract: str, request: Request, now_ns: int) -> int:
        """How long to wait before sending ``request`` about ``contract`` (0: send now)."""
        self._forget(now_ns)
        ready = self._blocked_until
        same = [t for t, _, r in self._sent if r == request]
        if same:
            ready = max(ready, same[-1] + int(SAME_S * NS))
        if len(self._sent) >= WINDOW_MAX:
            ready = max(ready, self._sent[-WINDOW_MAX][0] + int(WINDOW_S * NS))
        mine = [t for t, c, _ in self._sent if c == contract]
        if len(mine) >= CONTRACT_MAX:
            ready = max(ready, mine[-CONTRACT_MAX] + int(CONTRACT_S * NS))
        return max(0, ready - now_ns)

    def sent(self, contract: str, request: Request, now_ns: int) -> None:
        self._sent.append((now_ns, contract, request))

    def answered(self) -> None:
        """An answer that was not a violation: the backoff starts again from the first step."""
        self._violations = 0

    def violated(self, now_ns: int) -> float:
        """IB said 162: every request waits; returns the backoff in seconds."""
        self._violations += 1
        self.violations += 1
        base = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** (self._violations - 1))
        backoff = base * (1 + 0.25 * self._random.random())
        self._blocked_until = max(self._blocked_until, now_ns + int(backoff * NS))
        return backoff

    def _forget(self, now_ns: int) -> None:
        horizon = now_ns - int(WINDOW_S * NS)
        while self._sent and self._sent[0][0] <= horizon:
            self._sent.popleft()
