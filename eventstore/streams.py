"""The event log's streams, as code: created idempotently, updated when the spec changes.

How the streams are stored is a deployment fact, read from the environment
(``StoreSettings``): the replica count (1 on the embedded server, 3 on a production
cluster) and an optional byte limit per stream. The event streams refuse new messages at a
limit (``DiscardPolicy.NEW``) instead of dropping old ones: an event log that silently loses
its oldest facts cannot be replayed. Only ``SYSTEM`` (heartbeats, dead letters, status) ages
out after seven days.
"""

from __future__ import annotations

import os
import time

import msgspec
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from eventstore.errors import KeelError

DAY = 86_400.0
REPLICAS_ENV = "KEEL_STREAM_REPLICAS"
MAX_BYTES_ENV = "KEEL_STREAM_MAX_BYTES"
CREATE_WITHIN_S = 30.0
"""How long a stream's creation may take on a loaded cluster before it is an error."""


class StoreSettings(msgspec.Struct, frozen=True):
    replicas: int = 1
    max_bytes: int = -1
    """Per event stream; -1 is no limit but the server's own storage limit."""

    @classmethod
    def from_env(cls) -> StoreSettings:
        replicas = _env_int(REPLICAS_ENV, 1)
        if replicas not in (1, 3, 5):
            raise KeelError(f"{REPLICAS_ENV}={replicas}: the replica count must be 1, 3 or 5")
        max_bytes = _env_int(MAX_BYTES_ENV, -1)
        if max_bytes == 0 or max_bytes < -1:
            raise KeelError(f"{MAX_BYTES_ENV}={max_bytes}: give a byte count > 0, or -1")
        return cls(replicas=replicas, max_bytes=max_bytes)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise KeelError(f"{name}={raw!r} is not a whole number") from None


class StreamSpec(msgspec.Struct, frozen=True):
    name: str
    subjects: tuple[str, ...]
    description: str
    max_age_s: float = 0.0
    duplicate_window_s: float = 120.0

    @property
    def ages_out(self) -> bool:
        return self.max_age_s > 0

    def config(self, settings: StoreSettings | None = None) -> StreamConfig:
        settings = settings or StoreSettings()
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            description=self.description,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD if self.ages_out else DiscardPolicy.NEW,
            max_age=self.max_age_s,
            max_bytes=-1 if self.ages_out else settings.max_bytes,
            duplicate_window=self.duplicate_window_s,
            num_replicas=settings.replicas,
        )


DECISION_WINDOW_S = 3_600.0
"""De-duplication of the workers' outputs: a worker re-sends an unacknowledged output under
its id until stored, for as long as the server is away, so the window must outlast any
outage a fleet rides out. An hour of ids costs little at decision rates. Bulk market data
keeps the default two minutes: the feed checks the log itself after a long outage."""

STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("MARKET", ("md.>",), "bars, trades, quotes, instruments"),
    StreamSpec("SIGNALS", ("sig.>",), "strategy signals", duplicate_window_s=DECISION_WINDOW_S),
    StreamSpec(
        "ORDERS",
        ("ord.>",),
        "approved order commands and risk decisions",
        duplicate_window_s=DECISION_WINDOW_S,
    ),
    StreamSpec(
        "EXECUTION",
        ("exec.>",),
        "execution reports from venues",
        duplicate_window_s=DECISION_WINDOW_S,
    ),
    StreamSpec(
        "PORTFOLIO", ("pf.>",), "positions and equity", duplicate_window_s=DECISION_WINDOW_S
    ),
    StreamSpec(
        "GOVERNANCE",
        ("gov.>",),
        "kill switch and governance decisions",
        duplicate_window_s=DECISION_WINDOW_S,
    ),
    StreamSpec("EXTERNAL", ("ext.>",), "external events: listings, sentiment, promotions"),
    StreamSpec(
        "VENUE",
        ("venue.>",),
        "venue gateways: orders sent, the venues' answers, reconciliation, kill switch",
        duplicate_window_s=DECISION_WINDOW_S,
    ),
    StreamSpec("SYSTEM", ("sys.>",), "heartbeats and dead letters", max_age_s=7 * DAY),
)

STREAM_BY_NAME = {s.name: s for s in STREAMS}


def _differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    return (
        list(current.subjects or []) != list(wanted.subjects or [])
        or current.duplicate_window != wanted.duplicate_window
        or (current.max_age or 0) != (wanted.max_age or 0)
        or (current.max_bytes or -1) != (wanted.max_bytes or -1)
        or current.discard != wanted.discard
        or (current.num_replicas or 1) != (wanted.num_replicas or 1)
    )


async def ensure_streams(
    js: JetStreamContext,
    specs: tuple[StreamSpec, ...] = STREAMS,
    settings: StoreSettings | None = None,
) -> None:
    """Create missing streams and bring existing ones to the spec. A setting nobody gave
    (neither ``settings`` nor its environment variable) keeps what an existing stream has:
    a command run without ``KEEL_STREAM_REPLICAS`` never scales a cluster's R3 log down."""
    given = {REPLICAS_ENV, MAX_BYTES_ENV} if settings else set(os.environ)
    settings = settings or StoreSettings.from_env()
    for spec in specs:
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            await _create(js, spec.config(settings))
            continue
        current = info.config
        kept = StoreSettings(
            replicas=settings.replicas if REPLICAS_ENV in given else current.num_replicas or 1,
            max_bytes=settings.max_bytes if MAX_BYTES_ENV in given else current.max_bytes or -1,
        )
        config = spec.config(kept)
        if _differs(current, config):
            await js.update_stream(config)


async def _create(js: JetStreamContext, config: StreamConfig) -> None:
    """A replicated stream's Raft group is elected before the server answers, which on a
    loaded cluster can outlast one API call's wait; the creation goes on meanwhile, so the
    call is made again: it creates the stream or finds it made with the same config."""
    deadline = time.monotonic() + CREATE_WITHIN_S
    while True:
        try:
            await js.add_stream(config)
            return
        except NatsTimeout:
            if time.monotonic() > deadline:
                raise


def replay_stream(namespace: str) -> StreamSpec:
    """One stream per bus replay, ``rp.<namespace>.>``: its events never mix with live ones,
    and a worker reading it through one consumer sees them in the order they were stored."""
    return StreamSpec(
        f"REPLAY_{namespace}",
        (f"{REPLAY_PREFIX}.{namespace}.>",),
        f"bus replay {namespace}",
        max_age_s=7 * DAY,
    )


REPLAY_PREFIX = "rp"
