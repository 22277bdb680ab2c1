"""Envelope metadata carried in NATS headers, and deterministic event ids.

An output's id derives from its producer, its cause and its index among that cause's
outputs, so re-publishing after a crash repeats the same ``Nats-Msg-Id`` and JetStream drops
the copy. The W3C traceparent derives from the correlation id, so one trace follows a bar
through signal, order and fill with no shared state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import msgspec

from contracts.events import (
    SCHEMA_VERSION,
    Bar,
    Event,
    External,
    FeedStatus,
    FundingRate,
    Instrument,
    ParamsTuned,
    Quote,
    Trade,
)

MSG_ID = "Nats-Msg-Id"
CAUSATION_ID = "Keel-Causation-Id"
CORRELATION_ID = "Keel-Correlation-Id"
EVENT_TIME = "Keel-Event-Time"
SCHEMA = "Keel-Schema"
TRACEPARENT = "traceparent"
PRODUCER = "Keel-Producer"
ORIGIN_TIME = "Keel-Origin-Time"
"""Wall-clock ns at which the root cause (a bar, a command) was stored in the log, copied by
live workers onto its descendants for latency metrics; never part of an id or hash."""


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _digest(text: str, size: int) -> str:
    return hashlib.blake2b(text.encode(), digest_size=size).hexdigest()


def derive_id(producer: str, cause_id: str, index: int) -> str:
    """Length-prefixing the producer and ending with the index keeps the framing
    unambiguous without JSON (this runs for every output event)."""
    text = f"{len(producer)}:{producer}{cause_id}:{index}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def content_id(*parts: str | int) -> str:
    """Id of a fact from what identifies it; JSON framing keeps distinct parts distinct."""
    return hashlib.blake2b(msgspec.json.encode(parts), digest_size=16).hexdigest()


class Envelope(msgspec.Struct, frozen=True):
    event_id: str
    causation_id: str
    correlation_id: str
    event_time: int
    schema: int = SCHEMA_VERSION

    @classmethod
    def root(cls, event_id: str, event_time: int) -> Envelope:
        """Envelope of a fact with no cause inside Keel (market data, an operator's command)."""
        return cls(event_id, event_id, event_id, event_time)

    def child(self, producer: str, index: int, event_time: int) -> Envelope:
        return Envelope(
            derive_id(producer, self.event_id, index),
            self.event_id,
            self.correlation_id,
            event_time,
        )

    @property
    def traceparent(self) -> str:
        return f"00-{_digest(self.correlation_id, 16)}-{_digest(self.event_id, 8)}-01"

    def headers(self) -> dict[str, str]:
        return {
            MSG_ID: self.event_id,
            CAUSATION_ID: self.causation_id,
            CORRELATION_ID: self.correlation_id,
            EVENT_TIME: str(self.event_time),
            SCHEMA: str(self.schema),
            TRACEPARENT: self.traceparent,
        }

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> Envelope:
        h = headers or {}
        if MSG_ID not in h:
            raise ValueError(f"missing {MSG_ID} header")
        event_id = h[MSG_ID]
        try:
            event_time = int(h.get(EVENT_TIME, "0"))
            schema = int(h.get(SCHEMA, str(SCHEMA_VERSION)))
        except ValueError as exc:
            raise ValueError(f"bad envelope header: {exc}") from exc
        if not (_INT64_MIN <= event_time <= _INT64_MAX and 0 <= schema <= _INT64_MAX):
            # a worker decides at the event time: its outputs' times must fit the contracts
            raise ValueError(f"bad envelope header: {EVENT_TIME} or {SCHEMA} out of range")
        return cls(
            event_id,
            h.get(CAUSATION_ID, event_id),
            h.get(CORRELATION_ID, event_id),
            event_time,
            schema,
        )


def trace_id_of(correlation_id: str) -> str:
    """The trace id a correlation id maps to (what ``keel tap --trace`` matches)."""
    return _digest(correlation_id, 16)


def bar_envelope(bar: Bar) -> Envelope:
    """A bar's envelope: its id is (venue, symbol, interval, open time), so the live feed,
    an ingest and a replay all give the same bar the same id."""
    return Envelope.root(
        content_id("bar", bar.venue, bar.symbol, bar.interval, bar.open_time), bar.ts
    )


def external_envelope(event: External) -> Envelope:
    """An external event's envelope: its id derives from what identifies the fact
    (``External.identity``), so ``keel publish ext`` and a replay of an events file give
    the same announcement the same id, and publishing it twice is de-duplicated."""
    return Envelope.root(content_id(*event.identity()), event.ts)


def tuning_envelope(event: ParamsTuned) -> Envelope:
    """A parameter change fed from outside (the calibration worker, a replay's events file):
    its id derives from what it sets and when, so publishing it again is de-duplicated and
    a replay gives it the id the log has."""
    parts = ("tune", event.strategy, event.symbol, event.param, event.ts, event.new.hex())
    return Envelope.root(content_id(*parts), event.ts)


MarketFact = Quote | Trade | FundingRate | Instrument | FeedStatus
"""The market events besides bars that a venue's feed publishes on ``md.*``."""


def market_envelope(event: MarketFact) -> Envelope:
    """A venue fact's envelope: its id derives from its whole content, so the same quote,
    trade, funding rate, instrument or status received twice (a reconnect replays the last
    frames) is stored once."""
    digest = hashlib.blake2b(msgspec.json.encode(event), digest_size=16).hexdigest()
    return Envelope.root(
        content_id(type(event).__name__, event.venue, event.symbol, event.ts, digest), event.ts
    )


def root_envelope(event: Event) -> Envelope:
    """The envelope of a replay's input: a market event, an external event or a parameter
    change."""
    if isinstance(event, Bar):
        return bar_envelope(event)
    if isinstance(event, MarketFact):
        return market_envelope(event)
    if isinstance(event, External):
        return external_envelope(event)
    if isinstance(event, ParamsTuned):
        return tuning_envelope(event)
    raise TypeError(f"{type(event).__name__} is not a replay input")
