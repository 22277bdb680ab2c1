"""Riding out server trouble: which errors pass, how long to wait, and saying so once.

After the first connect the client reconnects forever; ``transient`` names the errors a caller
retries (``Bus.retry``, capped exponential backoff), and ``Outage`` logs one line when the log
stops answering and one when it is back, not one per retry. A publish JetStream refuses for a
storage limit is a ``StoreFull``: nothing was stored, and the same publish succeeds once there
is room (event streams refuse at their limit, ``eventstore/streams.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

import nats.errors
from nats.js.errors import APIError, NoStreamResponseError

from contracts.subjects import subject_matches
from eventstore.credentials import redact_url
from eventstore.errors import KeelError
from eventstore.streams import MAX_BYTES_ENV, REPLAY_PREFIX, STREAMS

BACKOFF_FIRST = 0.2
BACKOFF_CAP = 5.0

log = logging.getLogger("keel.bus")


class StoreFull(KeelError):
    """JetStream refused a publish for a storage limit (the stream's byte limit, or the
    server's disk): nothing was stored, and a retry succeeds once there is room."""

    def __init__(self, stream: str, reason: str) -> None:
        super().__init__(
            f"the store refused a publish to {stream}: {reason} (raise {MAX_BYTES_ENV} or free "
            "the server's storage)"
        )
        self.stream = stream
        self.reason = reason


class Unacknowledged(KeelError):
    """A window of publishes still not acknowledged when ``publish_many`` gave up."""


class Interrupted(Exception):
    """A retry left because the process is stopping: whatever it carried stays
    unacknowledged and is delivered again."""


STORE_LIMIT_CODES = frozenset({10023, 10028, 10047, 10077})
"""JetStream's insufficient resources, memory and storage resources exceeded, and store
failed (``maximum bytes exceeded``, ``maximum messages exceeded``, a disk error)."""

TRANSIENT = (
    TimeoutError,  # nats.errors.TimeoutError and FlushTimeoutError too
    ConnectionError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.errors.NoServersError,
    NoStreamResponseError,
    Unacknowledged,
)


def store_refusal(exc: BaseException) -> str | None:
    """The server's reason when ``exc`` is JetStream refusing to store for lack of room."""
    if isinstance(exc, APIError) and exc.err_code in STORE_LIMIT_CODES:
        return exc.description or f"error {exc.err_code}"
    return None


def transient(exc: BaseException) -> bool:
    """Server trouble that passes: the connection is down or back but JetStream is not
    ready yet (no responders, 503), or an answer timed out. Retry these; not a full store."""
    if isinstance(exc, APIError):
        return exc.code == 503 and store_refusal(exc) is None
    return isinstance(exc, TRANSIENT)


def describe(exc: BaseException) -> str:
    """One line for a log or an error, the server's text first."""
    reason = store_refusal(exc) or str(exc).strip().removeprefix("nats: ")
    first = reason.splitlines()[0] if reason else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def backoff(attempt: int) -> float:
    """0.2 s, 0.4 s, 0.8 s ... capped at 5 s."""
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** max(0, attempt - 1))


async def wait_out(seconds: float, stop: asyncio.Event | None) -> None:
    """Sleep, cut short by ``stop``; raises ``Interrupted`` once it is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    if stop.is_set():
        raise Interrupted


@functools.lru_cache(maxsize=4096)
def stream_of(subject: str) -> str:
    """The event stream that stores ``subject`` (the subject itself when none does)."""
    if subject.startswith(f"{REPLAY_PREFIX}."):
        return f"REPLAY_{subject.split('.')[1]}"
    for spec in STREAMS:
        if any(subject_matches(p, subject) for p in spec.subjects):
            return spec.name
    return subject


class Outage:
    """One log line when the log stops answering and one when it answers again, however many
    calls retry in between (each retry is silent)."""

    def __init__(self, url: str) -> None:
        self.url = redact_url(url)
        self.since: float | None = None
        self.reconnected = False
        self.closing = False
        self.outages = 0

    async def disconnected(self) -> None:
        """A drop after a reconnect is a new outage, even when no call retried since (a
        connection that only reads, like a tap's, never clears the last one)."""
        if self.closing or (self.since is not None and not self.reconnected):
            return
        self._begin()
        log.warning("lost the connection to NATS at %s: reconnecting; work waits", self.url)

    async def reconnected_to(self, url: str) -> None:
        took = f" after {time.monotonic() - self.since:.1f}s" if self.since is not None else ""
        self.reconnected = True
        log.warning("reconnected to NATS at %s%s; carrying on", redact_url(url), took)

    def trouble(self, what: str, exc: BaseException) -> None:
        if self.since is not None:
            return
        self._begin()
        log.warning("%s: %s; retrying with backoff", what, describe(exc))

    def cleared(self) -> None:
        if self.since is None:
            return
        if not self.reconnected:
            log.warning(
                "NATS answers again after %.1fs; carrying on", time.monotonic() - self.since
            )
        self.since = None

    def _begin(self) -> None:
        self.since = time.monotonic()
        self.reconnected = False
        self.outages += 1
