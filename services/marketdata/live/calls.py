"""Calling an exchange through ccxt without a crash loop: network trouble, rate limits and
maintenance (ccxt's ``NetworkError`` family: ``RateLimitExceeded``, ``DDoSProtection``,
``ExchangeNotAvailable``, ``RequestTimeout``) are waited out with exponential backoff and
jitter on the session's clock, and said in one log line per outage, not one per retry."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import ccxt

from services.runtime.clock import Clock

T = TypeVar("T")

BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 60.0

log = logging.getLogger("keel.marketdata")


class Stopped(Exception):
    """The session is stopping: a retry left without an answer."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Backoff:
    """1 s, 2 s, 4 s ... capped, each with up to 25 % jitter (seeded: a test is repeatable),
    so that many symbols or sessions do not retry in step."""

    def __init__(
        self, first_s: float = BACKOFF_FIRST_S, cap_s: float = BACKOFF_CAP_S, seed: int = 0
    ) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self.attempt = 0
        self._random = random.Random(seed)

    def next(self) -> float:
        self.attempt += 1
        base = min(self.cap_s, self.first_s * 2 ** (self.attempt - 1))
        return base * (1 + 0.25 * self._random.random())

    def reset(self) -> None:
        self.attempt = 0


class VenueOutage:
    """One log line when a venue stops answering (what failed and why) and one when it
    answers again, however many retries in between."""

    def __init__(self, venue: str) -> None:
        self.venue = venue
        self.down: str | None = None
        self.outages = 0

    def trouble(self, what: str, exc: BaseException) -> None:
        if self.down is not None:
            return
        self.down = what
        self.outages += 1
        log.warning("%s: %s: %s; backing off and retrying", self.venue, what, one_line(exc))

    def cleared(self) -> None:
        if self.down is None:
            return
        log.warning("%s: answers again (%s); carrying on", self.venue, self.down)
        self.down = None


class VenueCalls:
    """REST calls that ride out the venue's trouble until ``stop``."""

    def __init__(self, venue: str, clock: Clock, stop: asyncio.Event, seed: int = 0) -> None:
        self.clock = clock
        self.stop = stop
        self.outage = VenueOutage(venue)
        self.seed = seed

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn`` until it answers; a ``NetworkError`` backs off, anything else propagates."""
        backoff = Backoff(seed=self.seed)
        while True:
            try:
                result = await fn()
            except ccxt.NetworkError as exc:
                self.outage.trouble(what, exc)
                await self.pause(backoff.next())
                continue
            self.outage.cleared()
            return result

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds`` of clock time, cut short by ``stop`` (then ``Stopped``)."""
        waiting = asyncio.ensure_future(self.stop.wait())
        sleeping = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait({waiting, sleeping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            sleeping.cancel()
        if self.stop.is_set():
            raise Stopped
