"""The settle barrier: wait until named workers have acknowledged everything stored for them.

A consumer's pending count is updated asynchronously after a store, so right after a publish
it can still read 0 and a barrier built on it passes too early. This one relies only on facts
the server updates synchronously: each stream's last sequence, the highest stored sequence
that each consumer's filter matches (tracked here by an ordered consumer per stream), and
each consumer's ack floor. A worker acknowledges an input only after its outputs are stored,
so when every consumer's ack floor covers its last match and no stream has grown meanwhile,
every cascade has finished.
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

ConsumerKey = tuple[str, str]
"""(stream, durable consumer name)."""


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

    async def start(self) -> None:
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
        """True once settled; False when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        js = self._bus.js
        while time.monotonic() < deadline:
            last = await self._last_seqs()
            while any(self._seen[s] < last[s] for s in self._streams):
                if time.monotonic() >= deadline:
                    return False
                self._moved.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._moved.wait(), 0.5)
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
