"""Exchange time that runs faster than the wall, shared by a fake and the processes under test.

Live bars are one minute long and tests cannot wait minutes: at ``rate`` 60 an exchange
minute lasts one wall second. The fake ticks on this clock and a worker started as a
subprocess gets the same one through ``KEEL_TEST_CLOCK`` (``site/sitecustomize.py``), so both
agree on which candle is forming.
"""

from __future__ import annotations

import asyncio
import time


class ScaledClock:
    """``now_ns() = start_ns + (wall_now - wall0_ns) * rate``; implements ``Clock``."""

    def __init__(self, start_ns: int, rate: float, wall0_ns: int | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.start_ns = int(start_ns)
        self.rate = float(rate)
        self.wall0_ns = time.time_ns() if wall0_ns is None else int(wall0_ns)

    def now_ns(self) -> int:
        return self.start_ns + int((time.time_ns() - self.wall0_ns) * self.rate)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds / self.rate))

    def wall_seconds(self, seconds: float) -> float:
        return seconds / self.rate

    async def sleep_until(self, ns: int) -> None:
        """Wait until exchange time reaches ``ns`` (returns at once if it has)."""
        await self.sleep((ns - self.now_ns()) / 1e9)

    def to_env(self) -> str:
        return f"{self.start_ns}:{self.wall0_ns}:{self.rate!r}"

    @classmethod
    def from_env(cls, text: str) -> ScaledClock:
        try:
            start, wall0, rate = text.strip().split(":")
            return cls(int(start), float(rate), int(wall0))
        except ValueError:
            raise ValueError(
                f"KEEL_TEST_CLOCK={text!r}: expected <start_ns>:<wall0_ns>:<rate>"
            ) from None

    def __repr__(self) -> str:
        return f"ScaledClock({self.to_env()!r})"
