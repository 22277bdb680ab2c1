"""The one clock a venue-facing process reads: wall time, and sleeping against it.

Deciders never read a clock (they get each event's time). The live marketdata worker does:
a bar is due at its close, stale at close + grace. It takes a ``Clock`` so that a test can
run it against an exchange simulator whose time runs faster than the wall; ``system_clock``
is what the command line uses.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Wall time, ns since the epoch (UTC)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...

    def wall_seconds(self, seconds: float) -> float:
        """How long ``seconds`` of this clock's time last on the wall."""
        ...


class WallClock:
    def now_ns(self) -> int:
        return time.time_ns()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def wall_seconds(self, seconds: float) -> float:
        return seconds


def system_clock() -> Clock:
    return WallClock()
