"""A live feed worker's life, whichever venue kind feeds it: start-up until ``stop()``, the
heartbeat, the lockstep fence, the supervision of its jobs and the shutdown.

The ccxt feed (``live.session``) and the IB feed (``ib.session``) fill in how to reach their
venue (``_scope``, ``_close``) and what to serve (``_serve``); both publish the same events
on the same subjects, so what they share here must stay the same for both.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, ClassVar

import msgspec

from contracts.events import Bar, Instrument
from contracts.intervals import interval_ns
from contracts.subjects import name_token
from eventstore.bus import Bus
from eventstore.log_reader import last_per_subject
from services.config import MarketConfig
from services.marketdata.feed import HEARTBEAT_S, lockstep
from services.marketdata.live.calls import Stopped, VenueCalls
from services.marketdata.live.publisher import Publisher
from services.runtime.clock import Clock
from services.runtime.heartbeat import StoreWatch, publish_heartbeat
from services.venues.config import VenueConfig

TICK_S = 1.0
MIN_TICK_WALL_S = 0.02
STOP_GRACE_S = 2.0


class SessionResult(msgspec.Struct):
    bars: int = 0
    instruments: int = 0
    dead_letters: int = 0
    empty_minutes: int = 0
    reconnects: int = 0


class FeedSession(abc.ABC):
    """One venue's live feed until ``stop()``; a venue kind's session says how to serve."""

    RELOAD_EVERY_S: ClassVar[float]

    def __init__(
        self,
        bus: Bus,
        venue: VenueConfig,
        market: MarketConfig,
        clock: Clock,
        *,
        name: str = "marketdata",
        consumers: set[str] | None = None,
        backfill_bars: int = 0,
        reload_every_s: float | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        seed: int = 0,
        shard: int = 0,
    ) -> None:
        self.bus = bus
        self.venue = venue
        self.market = market
        self.clock = clock
        self.name = name
        self.consumers = consumers or set()
        self.backfill_bars = backfill_bars
        self.reload_every_s = self.RELOAD_EVERY_S if reload_every_s is None else reload_every_s
        self.heartbeat_s = heartbeat_s
        self.seed = seed
        self.shard = shard
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = asyncio.Event()
        self.step_ns = interval_ns(market.interval)
        self.result = SessionResult()
        self._tasks: list[asyncio.Task[Any]] = []

    def stop(self) -> None:
        self.stopping.set()

    # -- what a venue kind fills in ------------------------------------------------------

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        """The venue's client, made before anything runs and kept until after the shutdown."""
        yield

    @abc.abstractmethod
    async def _serve(self) -> None:
        """Start-up, then the jobs until stopped (``_supervise``)."""

    @abc.abstractmethod
    async def _silence(self) -> None:
        """Stop what feeds the publisher before its last flush."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Count what the jobs did and close the venue's client (within ``STOP_GRACE_S``)."""

    # -- running -------------------------------------------------------------------------

    async def run(self) -> SessionResult:
        self.calls = VenueCalls(self.venue.name, self.clock, self.stopping, self.seed)
        watch = StoreWatch(self.bus, self.name, self.instance)
        self.publisher = Publisher(self.bus, self.name, watch, self.stopping)
        with self._scope():
            beating = asyncio.create_task(self._heartbeat())
            serving = asyncio.create_task(self._start_up(watch))
            stopped = asyncio.create_task(self.stopping.wait())
            try:
                await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not serving.done():
                    # A stop cuts a start-up that waits (a venue away, a fleet behind in lockstep).
                    done, _ = await asyncio.wait({serving}, timeout=STOP_GRACE_S)
                    if not done:
                        serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
            finally:
                serving.cancel()
                stopped.cancel()
                beating.cancel()
                await self._shutdown()
        return self.result

    async def _start_up(self, watch: StoreWatch) -> None:
        with contextlib.suppress(Stopped):
            await watch.resume()
            await self._serve()

    def _fence(self) -> Callable[[], Awaitable[None]] | None:
        """The fleet's lockstep when configured, one wait at a time: a backfill's steps and
        the publisher's fenced feed states share it."""
        if not (self.market.lockstep and self.consumers):
            self.publisher.fence = None
            return None
        wait = lockstep(self.bus, self.consumers)
        guard = asyncio.Lock()

        async def settle() -> None:
            async with guard:
                await wait()

        self.publisher.fence = settle
        return settle

    async def _last_stored(self) -> tuple[list[Instrument], dict[str, int]]:
        """Where the log left off: the last Instrument of each symbol and the open time of
        its last bar."""
        venue = name_token(self.venue.name, "venue")
        instruments = await self.bus.retry(
            f"{self.name}: read",
            lambda: last_per_subject(self.bus, "MARKET", f"md.instrument.{venue}.*"),
            stop=self.stopping,
        )
        interval = name_token(self.market.interval)
        bars = await self.bus.retry(
            f"{self.name}: read",
            lambda: last_per_subject(self.bus, "MARKET", f"md.bar.{venue}.*.{interval}"),
            stop=self.stopping,
        )
        known = [s.event for s in instruments if isinstance(s.event, Instrument)]
        last = {s.event.symbol: s.event.open_time for s in bars if isinstance(s.event, Bar)}
        return known, last

    async def _supervise(self, jobs: Sequence[Coroutine[Any, Any, None]]) -> None:
        """Run the jobs until stopped; the first one that fails ends the session."""
        self._tasks += [asyncio.create_task(job) for job in jobs]
        stopped = asyncio.create_task(self.stopping.wait())
        running: set[asyncio.Task[Any]] = {stopped, *self._tasks}
        try:
            while not stopped.done():
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stopped and not task.cancelled() and task.exception():
                        raise task.exception()  # type: ignore[misc]
        finally:
            stopped.cancel()

    def _tick_s(self) -> float:
        """The watchdog's tick in exchange seconds, never faster than ``MIN_TICK_WALL_S`` of
        wall time when a test runs the clock fast."""
        return max(TICK_S, MIN_TICK_WALL_S / max(self.clock.wall_seconds(1.0), 1e-9))

    async def _heartbeat(self) -> None:
        seq = 0
        while not self.stopping.is_set():
            seq += 1
            processed = self.flow.bars if hasattr(self, "flow") else 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_s):
                    await publish_heartbeat(
                        self.bus, self.name, self.instance, "running", seq, processed
                    )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_s):
                    await self.stopping.wait()

    async def _shutdown(self) -> None:
        await self._silence()
        if self._tasks:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_GRACE_S):
                    await self.publisher.flush()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if hasattr(self, "flow"):
            self.result.bars = self.flow.bars
            self.result.empty_minutes = self.flow.empty_minutes
        await self._close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_GRACE_S):
                await publish_heartbeat(self.bus, self.name, self.instance, "stopped")
