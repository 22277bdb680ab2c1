"""The settle barrier: wait until named workers have acknowledged everything stored for them.

A consumer's pending count is updated asynchronously after a store, so right after a publish
it can still read 0 and a barrier built on it passes too early. This one relies only on facts
the server updates synchronously: each stream's last sequence, the highest stored sequence
that each consumer's filter matches (tracked here by an ordered consumer per stream), and
each consumer's ack floor. A worker acknowledges an input only after its outputs are stored,
so when every consumer's ack floor covers its last match and no stream has grown meanwhile,
every cascade has finished.

A server restart does not end a wait early or crash it: each read retries with capped
backoff, the trackers subscribe again after an outage (re-reading the last message of every
subject, so nothing is missed), and the time the server was away does not count against the
timeout, so a lockstep feed never moves on before the fleet caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from contracts.subjects import subject_matches
from eventstore.bus import Bus
from eventstore.retry import backoff, transient

ConsumerKey = tuple[str, str]
"""(stream, durable consumer name)."""
STALE_AFTER_S = 5.0  # behind a stream's last sequence this long with no news: subscribe again


class _Stale(Exception):
    """The trackers may have missed messages (an outage happened): subscribe again."""


class Barrier:
    def __init__(
        self,
        bus: Bus,
        streams: tuple[str, ...],
        filters: dict[ConsumerKey, tuple[str, ...]] | None = None,
        consumers: set[str] | None = None,
    ) -> None:
        """Give the consumers' ``filters`` when they do not exist yet, or the ``consumers``
        to look up at ``start`` (all durable consumers of the streams when None)."""
        self._bus = bus
        self._streams = streams
        self._filters = dict(filters or {})
        self._names = consumers
        self._due: dict[ConsumerKey, int] = dict.fromkeys(self._filters, 0)
        self._seen = dict.fromkeys(streams, 0)
        self._moved = asyncio.Event()
        self._subs: list = []
        self._outages = bus.outage.outages

    async def start(self) -> None:
        await self._bus.retry("settle barrier", self._subscribe)

    async def _subscribe(self) -> None:
        await self.stop()
        self._outages = self._bus.outage.outages
        js = self._bus.js
        discover = not self._filters or self._names is not None
        for stream in self._streams:
            if discover:
                for info in await js.consumers_info(stream):
                    name = info.config.durable_name
                    if name and (self._names is None or name in self._names):
                        config = info.config
                        subjects = config.filter_subjects or [config.filter_subject or ">"]
                        self._filters[(stream, name)] = tuple(subjects)
                        self._due.setdefault((stream, name), 0)
            subject = (await js.stream_info(stream)).config.subjects[0]
            track = functools.partial(self._track, stream)
            # The last message of every subject, then everything new: the highest matching
            # sequence per consumer without reading a long history.
            self._subs.append(
                await js.subscribe(
                    subject,
                    stream=stream,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                    cb=track,
                )
            )

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    async def _track(self, stream: str, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        for key, patterns in self._filters.items():
            if key[0] == stream and any(subject_matches(p, msg.subject) for p in patterns):
                self._due[key] = max(self._due.get(key, 0), seq)
        self._seen[stream] = max(self._seen[stream], seq)
        self._moved.set()

    async def _last_seqs(self) -> dict[str, int]:
        """Each stream's last sequence, 0 when it holds nothing: a purged stream keeps its
        last sequence but has no message left for the tracker to see."""
        js = self._bus.js
        out: dict[str, int] = {}
        for s in self._streams:
            state = (await js.stream_info(s)).state
            out[s] = state.last_seq if state.messages else 0
        return out

    async def wait(self, timeout: float) -> bool:
        """True once settled; False when ``timeout`` passes first (not counting the time
        the server was away)."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            try:
                return await self._wait(deadline)
            except Exception as exc:
                stale = isinstance(exc, _Stale)
                if not stale and not transient(exc):
                    raise
                began = time.monotonic()
                if not stale:
                    self._bus.outage.trouble("settle barrier", exc)
                    attempt += 1
                    await asyncio.sleep(backoff(attempt))
                await self.start()
                deadline += time.monotonic() - began

    async def _wait(self, deadline: float) -> bool:
        js = self._bus.js
        while time.monotonic() < deadline:
            last = await self._last_seqs()
            behind_since = time.monotonic()
            while any(self._seen[s] < last[s] for s in self._streams):
                now = time.monotonic()
                if now >= deadline:
                    return False
                if self._bus.outage.outages != self._outages or now - behind_since > STALE_AFTER_S:
                    raise _Stale
                self._moved.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._moved.wait()
                if self._moved.is_set():
                    behind_since = time.monotonic()
            floors: dict[ConsumerKey, tuple[int, int]] = {}
            for stream in self._streams:
                for info in await js.consumers_info(stream):
                    floor = info.ack_floor.stream_seq if info.ack_floor else 0
                    floors[(stream, info.name)] = (floor or 0, info.num_ack_pending or 0)
            settled = all(
                key in floors and floors[key][0] >= due and not floors[key][1]
                for key, due in self._due.items()
            )
            if settled and await self._last_seqs() == last:
                return True
            await asyncio.sleep(0.0005)
        return False
