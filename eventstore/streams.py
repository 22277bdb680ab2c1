"""The event log's streams, as code: created idempotently, updated when the spec changes."""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

DAY = 86_400.0


class StreamSpec(msgspec.Struct, frozen=True):
    name: str
    subjects: tuple[str, ...]
    description: str
    max_age_s: float = 0.0
    duplicate_window_s: float = 120.0

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            description=self.description,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age_s,
            duplicate_window=self.duplicate_window_s,
        )


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("MARKET", ("md.>",), "bars, trades, quotes, instruments"),
    StreamSpec("SIGNALS", ("sig.>",), "strategy signals"),
    StreamSpec("ORDERS", ("ord.>",), "approved order commands and risk decisions"),
    StreamSpec("EXECUTION", ("exec.>",), "execution reports from venues"),
    StreamSpec("PORTFOLIO", ("pf.>",), "positions and equity"),
    StreamSpec("GOVERNANCE", ("gov.>",), "kill switch and governance decisions"),
    StreamSpec("EXTERNAL", ("ext.>",), "external events: listings, sentiment, promotions"),
    StreamSpec("SYSTEM", ("sys.>",), "heartbeats and dead letters", max_age_s=7 * DAY),
)

STREAM_BY_NAME = {s.name: s for s in STREAMS}


async def ensure_streams(js: JetStreamContext, specs: tuple[StreamSpec, ...] = STREAMS) -> None:
    for spec in specs:
        config = spec.config()
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(config)
            continue
        current = info.config
        if (
            list(current.subjects or []) != list(config.subjects or [])
            or current.duplicate_window != config.duplicate_window
            or (current.max_age or 0) != (config.max_age or 0)
        ):
            await js.update_stream(config)


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
