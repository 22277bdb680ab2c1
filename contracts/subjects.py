"""Subject names: the one place that builds and parses them.

Tokens are limited to ``[A-Za-z0-9_-]``. Symbols map reversibly: ``/`` becomes ``-`` and
every other character outside ``[A-Za-z0-9]`` becomes ``_XX`` (its UTF-8 bytes in hex), so
``BTC/USDT`` -> ``BTC-USDT``, ``BTC/USDT:USDT`` -> ``BTC-USDT_3AUSDT``, ``BRK B`` ->
``BRK_20B``. The raw symbol always travels in the payload too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import msgspec

from contracts.event_base import NAME
from contracts.events import (
    Bar,
    EquitySnapshot,
    Event,
    ExecutionReport,
    FeedStatus,
    FundingRate,
    Instrument,
    ListingAnnouncement,
    OrderCommand,
    ParamsTuned,
    PositionChanged,
    PromoAnnouncement,
    Quote,
    RiskAlert,
    RiskDecision,
    Signal,
    SocialSentiment,
    StrategyPnL,
    Trade,
)
from contracts.governance_events import PlaybookAction
from contracts.model_events import AllocationDecided, ModelRoster, PromotionDecided, ShadowStep
from contracts.notify_events import Notification
from contracts.system_events import DeadLetter, GovernanceCommand, Heartbeat, SystemStatus
from contracts.venue_events import (
    Discrepancy,
    KillSwitch,
    VenueAdoption,
    VenueAnswer,
    VenueOrder,
    VenueStatus,
)

_NAME = NAME
_PLAIN = re.compile(r"[A-Za-z0-9]")
_ESCAPE = re.compile(r"_([0-9A-F]{2})")


class SubjectError(ValueError):
    """A name that cannot become a subject token, or a subject Keel did not build."""


@functools.lru_cache(maxsize=4096)
def name_token(name: str, what: str = "name") -> str:
    """Validate a name used verbatim as a token (venue, strategy, worker, interval)."""
    if not _NAME.fullmatch(name):
        raise SubjectError(f"{what} {name!r} must match [A-Za-z0-9_-]+")
    return name


@functools.lru_cache(maxsize=4096)
def symbol_token(symbol: str) -> str:
    if not symbol:
        raise SubjectError("empty symbol")
    out: list[str] = []
    for ch in symbol:
        if _PLAIN.fullmatch(ch):
            out.append(ch)
        elif ch == "/":
            out.append("-")
        else:
            out.extend(f"_{b:02X}" for b in ch.encode())
    return "".join(out)


def token_symbol(token: str) -> str:
    if not token or not _NAME.fullmatch(token):
        raise SubjectError(f"not a symbol token: {token!r}")
    raw = bytearray()
    i = 0
    while i < len(token):
        ch = token[i]
        if ch == "-":
            raw += b"/"
            i += 1
        elif ch == "_":
            m = _ESCAPE.match(token, i)
            if m is None:
                raise SubjectError(f"bad escape in symbol token {token!r}")
            raw.append(int(m.group(1), 16))
            i += 3
        else:
            raw += ch.encode()
            i += 1
    try:
        symbol = raw.decode()
    except UnicodeDecodeError as exc:
        raise SubjectError(f"bad escape in symbol token {token!r}") from exc
    if symbol_token(symbol) != token:
        raise SubjectError(f"symbol token {token!r} is not in canonical form")
    return symbol


_BAR_SUBJECTS: dict[str, dict[str, dict[str, str]]] = {}
"""Bar subjects by venue, symbol and interval: nested dicts, because a key tuple costs as much
to hash as building the subject's tokens again."""


def bar_subject(venue: str, symbol: str, interval: str) -> str:
    try:
        return _BAR_SUBJECTS[venue][symbol][interval]
    except KeyError:
        subject = (
            f"md.bar.{name_token(venue, 'venue')}.{symbol_token(symbol)}.{name_token(interval)}"
        )
        _BAR_SUBJECTS.setdefault(venue, {}).setdefault(symbol, {})[interval] = subject
        return subject


def bars_of_symbol(symbol: str) -> str:
    """Filter for every bar of one symbol (any venue, any interval)."""
    return f"md.bar.*.{symbol_token(symbol)}.*"


@functools.lru_cache(maxsize=65_536)
def _market(kind: str, venue: str, symbol: str) -> str:
    return f"md.{kind}.{name_token(venue, 'venue')}.{symbol_token(symbol)}"


@functools.lru_cache(maxsize=65_536)
def _venue_symbol(prefix: str, venue: str, symbol: str) -> str:
    return f"{prefix}.{name_token(venue, 'venue')}.{symbol_token(symbol)}"


@functools.lru_cache(maxsize=65_536)
def _named_symbol(prefix: str, name: str, venue: str | None, symbol: str) -> str:
    middle = f".{name_token(venue, 'venue')}" if venue is not None else ""
    return f"{prefix}.{name_token(name, 'strategy')}{middle}.{symbol_token(symbol)}"


_SUBJECTS: dict[type, Callable[[Any], str]] = {  # bars and equity snapshots: subject_for
    Trade: lambda e: _market("trade", e.venue, e.symbol),
    Quote: lambda e: _market("quote", e.venue, e.symbol),
    Instrument: lambda e: _market("instrument", e.venue, e.symbol),
    FundingRate: lambda e: _market("funding", e.venue, e.symbol),
    FeedStatus: lambda e: _market("status", e.venue, e.symbol),
    Signal: lambda e: _named_symbol("sig", e.strategy, e.venue, e.symbol),
    OrderCommand: lambda e: _venue_symbol("ord.cmd", e.venue, e.symbol),
    RiskDecision: lambda e: _named_symbol("ord.risk", e.strategy, None, e.symbol),
    RiskAlert: lambda e: f"ord.alert.{name_token(e.rule, 'rule')}",
    ExecutionReport: lambda e: _venue_symbol("exec.report", e.venue, e.symbol),
    PositionChanged: lambda e: _venue_symbol("pf.position", e.venue, e.symbol),
    StrategyPnL: lambda e: f"pf.pnl.{name_token(e.strategy, 'strategy')}",
    ParamsTuned: lambda e: _named_symbol("gov.tune", e.strategy, None, e.symbol),
    GovernanceCommand: lambda e: f"gov.cmd.{e.action}",
    PlaybookAction: lambda e: f"gov.playbook.{name_token(e.action.rule, 'rule')}",
    ShadowStep: lambda e: _named_symbol("gov.shadow", e.strategy, e.venue, e.symbol),
    ModelRoster: lambda e: f"gov.model.{name_token(e.strategy, 'strategy')}",
    PromotionDecided: lambda e: f"gov.promotion.{name_token(e.strategy, 'strategy')}",
    AllocationDecided: lambda e: f"gov.alloc.{name_token(e.strategy, 'strategy')}",
    Notification: lambda e: f"sys.notify.{e.outcome}",
    Heartbeat: lambda e: f"sys.heartbeat.{name_token(e.worker, 'worker')}",
    DeadLetter: lambda e: f"sys.dlq.{name_token(e.worker, 'worker')}",
    SystemStatus: lambda e: f"sys.status.{name_token(e.source, 'source')}",
    ListingAnnouncement: lambda e: _external("listing", e.source, symbol_token(e.symbol)),
    SocialSentiment: lambda e: _external("sentiment", e.source, symbol_token(e.symbol)),
    PromoAnnouncement: lambda e: _external("promo", e.source, name_token(e.venue, "venue")),
    VenueOrder: lambda e: _venue_symbol("venue.order", e.venue, e.symbol),
    VenueAnswer: lambda e: _venue_symbol("venue.answer", e.venue, e.symbol),
    Discrepancy: lambda e: f"venue.recon.{name_token(e.venue, 'venue')}",
    VenueStatus: lambda e: f"venue.status.{name_token(e.venue, 'venue')}",
    VenueAdoption: lambda e: f"venue.adopt.{name_token(e.venue, 'venue')}",
    KillSwitch: lambda e: "venue.kill",
}

EXTERNAL_KINDS: dict[str, bool] = {"listing": True, "sentiment": True, "promo": False}
"""External event kinds (``ext.<kind>.<source>.<key>``) and whether the last token is a
symbol (listing, sentiment) or a venue (promo)."""


def _external(kind: str, source: str, key: str) -> str:
    return f"ext.{kind}.{name_token(source, 'source')}.{key}"


def external_filters(kinds: tuple[str, ...], symbols: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Filters for the external events of ``kinds``: for symbol-keyed kinds only those of
    ``symbols`` when given (so instances partitioned by symbol split them too)."""
    out: list[str] = []
    for kind in kinds:
        by_symbol = EXTERNAL_KINDS.get(kind)
        if by_symbol is None:
            raise SubjectError(
                f"unknown external kind {kind!r}; known: {', '.join(EXTERNAL_KINDS)}"
            )
        if by_symbol and symbols:
            out.extend(f"ext.{kind}.*.{symbol_token(s)}" for s in symbols)
        else:
            out.append(f"ext.{kind}.>")
    return tuple(out)


def subject_for(event: Event) -> str:
    """The subject an event is published on. Bars and equity snapshots, nearly every event of
    a replay, are answered before the table: no lambda call. The exact-type test is cheaper
    here than ``isinstance`` or ``match`` and narrows ``event`` for a type checker too."""
    if type(event) is Bar:
        try:
            return _BAR_SUBJECTS[event.venue][event.symbol][event.interval]
        except KeyError:
            return bar_subject(event.venue, event.symbol, event.interval)
    kind = type(event)
    if kind is EquitySnapshot:
        return "pf.equity"
    build = _SUBJECTS.get(kind)
    if build is None:
        raise SubjectError(f"no subject for {kind.__name__}")
    return build(event)


class BarSubject(msgspec.Struct, frozen=True):
    venue: str
    symbol: str
    interval: str


def parse_bar_subject(subject: str) -> BarSubject:
    parts = subject.split(".")
    if len(parts) != 5 or parts[:2] != ["md", "bar"]:
        raise SubjectError(f"not a bar subject: {subject!r}")
    return BarSubject(
        venue=name_token(parts[2], "venue"),
        symbol=token_symbol(parts[3]),
        interval=name_token(parts[4], "interval"),
    )


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard semantics: ``*`` matches one token, a final ``>`` one or more."""
    want = pattern.split(".")
    have = subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return i == len(want) - 1 and len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(have) == len(want)
