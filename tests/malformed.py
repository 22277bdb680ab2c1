"""Invalid values for every field of every event type, and the malformed messages built
from them: what ``tests/test_invalid_fields.py``, ``tests/test_fuzz_inputs.py`` and
``bench/fuzz.py`` send.

A field's wrong-type values come from its type as ``msgspec.inspect`` describes it (a
number for a string, a string or an out-of-range integer for an integer, infinity for a
float, a name outside a literal's choices...); ``IMPOSSIBLE`` adds the values of the right
type that the event's own invariants refuse (a negative size, an empty id). Both must be
refused when the message is decoded. ``UNFIT_NAMES`` are legal for the type but cannot form
the subject the event travels on: the subject's admission refuses them in a worker.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import msgspec.inspect as mi

from contracts.admission import ADMITS, admission_error
from contracts.codec import DecodeError, decode
from contracts.envelope import Envelope
from contracts.events import (
    EVENT_TYPES,
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
from contracts.governance_events import HaltEntries, PlaybookAction
from contracts.subjects import subject_for
from contracts.system_events import DeadLetter, GovernanceCommand, Heartbeat, SystemStatus
from contracts.venue_events import (
    Discrepancy,
    KillSwitch,
    VenueAdoption,
    VenueAnswer,
    VenueOrder,
    VenueStatus,
)
from tests.model_event_samples import SAMPLES as MODEL_SAMPLES

T = 1_700_000_000_000_000_000
MINUTE = 60_000_000_000
V, S, STRAT = "test", "BTC/USDT", "ma_cross"
VCID = "0a1b2c3d-0000-4000-8000-00000000abcd"

SAMPLES: dict[type[Event], Event] = {
    e.__class__: e
    for e in (
        Instrument(ts=T, venue=V, symbol=S, base="BTC", quote="USDT", tick_size=0.01),
        Bar(
            ts=T,
            venue=V,
            symbol=S,
            interval="1m",
            open_time=T - MINUTE,
            close_time=T,
            open=10.0,
            high=11.0,
            low=9.0,
            close=10.5,
            volume=3.0,
        ),
        Trade(ts=T, venue=V, symbol=S, price=10.0, qty=1.0, side="buy", trade_id="t1"),
        Quote(ts=T, venue=V, symbol=S, bid=10.0, ask=10.5, bid_size=1.0, ask_size=2.0),
        FundingRate(ts=T, venue=V, symbol=S, rate=0.0001, next_time=T + MINUTE),
        FeedStatus(ts=T, venue=V, symbol=S, state="stale", reason="no bar", last_close=T),
        Signal(
            ts=T,
            strategy=STRAT,
            venue=V,
            symbol=S,
            target_position=1.0,
            stop=9.0,
            target=12.0,
            atr=0.5,
        ),
        OrderCommand(
            ts=T,
            action="new",
            client_order_id="c1",
            strategy=STRAT,
            venue=V,
            symbol=S,
            side="buy",
            qty=1.0,
            order_type="limit",
            limit_price=10.0,
            take_profit=12.0,
            stop_loss=9.0,
            trail_pct=1.0,
            atr=0.5,
            oco_group="g1",
            expire_at=T + MINUTE,
        ),
        RiskDecision(ts=T, approved=False, strategy=STRAT, venue=V, symbol=S, rule="max_position"),
        ExecutionReport(
            ts=T,
            status="filled",
            client_order_id="c1",
            strategy=STRAT,
            venue=V,
            symbol=S,
            side="buy",
            order_qty=1.0,
            fill_price=10.0,
            fill_qty=1.0,
            cum_qty=1.0,
            fee=0.01,
            parent_id="p1",
            stop_price=9.0,
            limit_price=10.0,
        ),
        PositionChanged(ts=T, venue=V, symbol=S, qty=1.0, avg_price=10.0, realized_pnl=0.0),
        EquitySnapshot(
            ts=T,
            cash=90.0,
            equity=100.0,
            realized_pnl=0.0,
            unrealized_pnl=0.5,
            fees=0.01,
            gross_exposure=10.0,
            net_exposure=10.0,
        ),
        StrategyPnL(ts=T, strategy=STRAT, gross_exposure=10.0, positions=1),
        ParamsTuned(ts=T, strategy=STRAT, symbol=S, param="fast", old=8.0, new=9.0),
        GovernanceCommand(ts=T, action="kill", reason="test"),
        Heartbeat(ts=T, worker="risk", instance="h-1", seq=1, processed=0),
        DeadLetter(ts=T, worker="risk", subject="md.bar.x", reason="bad", payload=b"\x00"),
        SystemStatus(ts=T, status="RUNNING", reason="ok", source="risk"),
        RiskAlert(ts=T, rule="max_drawdown", action="halt_entries", venue=V, symbol=S),
        ListingAnnouncement(ts=T, source="feed", venue=V, symbol=S, title="listing"),
        SocialSentiment(ts=T, source="feed", symbol=S, score=0.5, mentions=3),
        PromoAnnouncement(
            ts=T,
            source="feed",
            venue=V,
            title="competition",
            starts_at=T,
            ends_at=T + MINUTE,
            winners=10,
        ),
        VenueOrder(
            ts=T,
            action="new",
            client_order_id="o1",
            venue_client_id=VCID,
            strategy=STRAT,
            venue=V,
            symbol=S,
            side="buy",
            qty=1.0,
        ),
        VenueAnswer(
            ts=T,
            kind="fill",
            venue=V,
            symbol=S,
            client_order_id="o1",
            venue_client_id=VCID,
            source="stream",
            trade_id="t1",
            fill_qty=1.0,
            fill_price=10.0,
        ),
        Discrepancy(ts=T, venue=V, kind="external_order", action="recorded", symbol=S),
        VenueStatus(ts=T, venue=V, mode="sandbox", state="running"),
        VenueAdoption(ts=T, venue=V, reason="checked by hand"),
        KillSwitch(ts=T, reason="test"),
        *MODEL_SAMPLES,
        PlaybookAction(
            ts=T,
            action=HaltEntries(
                id="e:1:daily_loss",
                rule="daily_loss",
                cause_id="e:1",
                at=T,
                pnl=-600.0,
                max_loss=500.0,
                day="2023-11-14",
                timezone="UTC",
                until=T + MINUTE,
                reason="test",
            ),
        ),
    )
}
"""One valid event of every type, named so that it can form its subject."""

INF = msgspec.Raw(b"1e999")
"""Infinity as a publisher can write it: JSON has no NaN, but an overflowing literal is inf."""
TOO_BIG = msgspec.Raw(b"18446744073709551616")
"""2**64: beyond any integer a field holds."""

IMPOSSIBLE: dict[type[Event], dict[str, list[Any]]] = {
    Instrument: {
        "base": [""],
        "quote": [""],
        "tick_size": [-0.01],
        "lot_size": [-1.0],
        "min_notional": [-5.0],
        "contract_size": [0.0, -1.0],
        "max_leverage": [-2.0],
    },
    Bar: {
        "ts": [T + 1],
        "open_time": [T, T + MINUTE],
        "close_time": [T - MINUTE],
        "open": [0.0, -1.0],
        "high": [8.0],
        "low": [-9.0, 12.0],
        "close": [0.0],
        "volume": [-1.0],
    },
    Trade: {"price": [0.0, -10.0], "qty": [0.0, -1.0]},
    Quote: {"bid": [0.0, 11.0], "ask": [9.0], "bid_size": [-1.0], "ask_size": [-1.0]},
    FundingRate: {"interval_h": [0.0, -8.0], "next_time": [-1]},
    FeedStatus: {"last_close": [-1]},
    Signal: {
        "target_position": [None],
        "side": ["buy"],
        "size": [-1.0, 0.0],
        "confidence": [1.5, -0.1],
        "atr": [-0.5],
    },
    OrderCommand: {
        "client_order_id": [""],
        "strategy": ["evil strat", "", "ma.cross", "a>"],
        "qty": [0.0, -1.0],
        "order_type": ["stop"],
        "limit_price": [0.0, -10.0, None],
        "stop_price": [-1.0],
        "take_profit": [0.0],
        "stop_loss": [-9.0],
        "trail_pct": [100.0, 0.0],
        "trail_atr": [2.0],
        "atr": [0.0],
        "oco_group": [""],
        "expire_at": [0, -1],
    },
    ExecutionReport: {
        "strategy": ["evil strat", ""],
        "order_qty": [-1.0],
        "fill_price": [0.0, -10.0],
        "fill_qty": [-1.0],
        "cum_qty": [-1.0],
        "stop_price": [0.0],
        "limit_price": [-10.0],
    },
    PositionChanged: {"avg_price": [-10.0], "margin_used": [-1.0]},
    EquitySnapshot: {"gross_exposure": [-10.0], "margin_used": [-1.0]},
    StrategyPnL: {"gross_exposure": [-1.0], "positions": [-1]},
    ParamsTuned: {"param": [""]},
    Heartbeat: {
        "instance": [""],
        "seq": [-1],
        "processed": [-1],
        "metrics_port": [-1, 70_000],
    },
    DeadLetter: {"subject": [""], "stream_seq": [-1]},
    RiskAlert: {"action": [""]},
    ListingAnnouncement: {"symbol": [""], "listing_time": [-1]},
    SocialSentiment: {"symbol": [""], "score": [1.5, -2.0], "mentions": [-1]},
    PromoAnnouncement: {
        "title": [""],
        "starts_at": [-1, T + 2 * MINUTE],
        "ends_at": [-1, T - 1],
        "min_volume": [0.0],
        "reward_pool": [-100.0],
        "reward_per_user": [0.0],
        "winners": [0],
    },
    VenueOrder: {
        "client_order_id": [""],
        "venue_client_id": ["", "x" * 37, "bad id"],
        "strategy": ["evil strat"],
        "qty": [0.0, -1.0],
        "limit_price": [0.0],
        "stop_price": [-1.0],
        "replaces": ["not an id!"],
    },
    VenueAnswer: {
        "trade_id": [""],
        "fill_qty": [0.0, -1.0],
        "fill_price": [0.0],
        "order_qty": [-1.0],
        "cum_qty": [-1.0],
        "strategy": ["evil strat"],
    },
    VenueAdoption: {"reason": ["", "  "]},
}
"""Values of the right type that the event's own invariants refuse (given the rest of its
sample): each one a fact that cannot be true."""

UNFIT = "evil name"
"""A name with a space: no subject token can carry it."""


class FieldCase(msgspec.Struct, frozen=True):
    """One invalid value of one field, as the JSON a publisher would send."""

    event_type: str
    field: str
    value: str
    why: str
    data: bytes


def _candidates(info: mi.Type) -> list[tuple[Any, str]]:
    """Values no member of a field's type accepts, by the member's kind."""
    match info:
        case mi.StrType():
            return [(123, "wrong type"), (["x"], "wrong type")]
        case mi.IntType():
            return [("1", "wrong type"), (1.5, "wrong type"), (TOO_BIG, "out of range")]
        case mi.FloatType():
            return [("1.0", "wrong type"), (INF, "infinite"), (True, "wrong type")]
        case mi.BoolType():
            return [("true", "wrong type"), (1, "wrong type")]
        case mi.BytesType():
            return [(1, "wrong type"), ("@@ not base64 @@", "not base64")]
        case mi.LiteralType():
            return [("__bogus__", "not a choice"), (7, "wrong type")]
        case mi.UnionType():
            return [c for member in info.types for c in _candidates(member)]
        case mi.StructType():
            return [(1, "wrong type"), ({"type": "__bogus__"}, "not a choice")]
        case mi.VarTupleType():
            return [(1, "wrong type"), ([[]], "wrong member")]
        case mi.NoneType() | mi.UnsetType():
            return []
    raise TypeError(f"no invalid values for {info!r}")


def _wire(event: Event, field: str, value: Any) -> bytes:
    raw = msgspec.to_builtins(event)
    raw[field] = value
    return msgspec.json.encode(raw)


def _shown(value: Any) -> str:
    return bytes(value).decode() if isinstance(value, msgspec.Raw) else repr(value)


def field_cases(event_type: type[Event]) -> list[FieldCase]:
    """Every invalid value of every field of ``event_type``: its type's wrong values, then
    the impossible ones, each as the sample's JSON with that one field replaced."""
    sample = SAMPLES[event_type]
    name = event_type.__name__
    out: list[FieldCase] = []
    info = mi.type_info(event_type)
    assert isinstance(info, mi.StructType)
    for field in info.fields:
        optional = isinstance(field.type, mi.UnionType)
        wrong = [c for c in _candidates(field.type) if c[0] is not None]
        if not optional:
            wrong.append((None, "null"))
        impossible = [(v, "impossible") for v in IMPOSSIBLE.get(event_type, {}).get(field.name, [])]
        for value, why in [*wrong, *impossible]:
            data = _wire(sample, field.name, value)
            out.append(FieldCase(name, field.name, _shown(value), why, data))
    return out


def all_field_cases() -> list[FieldCase]:
    return [case for t in EVENT_TYPES for case in field_cases(t)]


def unfit_names() -> list[tuple[Event, str, str]]:
    """(event, its sample's subject, the field) for every name a subject carries, set to
    a name that cannot form a token (an empty symbol, for symbols)."""
    out: list[tuple[Event, str, str]] = []
    for event_type, fields in ADMITS.values():
        sample = SAMPLES[event_type]
        info = mi.type_info(event_type)
        assert isinstance(info, mi.StructType)
        literal = {f.name for f in info.fields if isinstance(f.type, mi.LiteralType)}
        for field in fields:
            if field in literal:
                continue  # its wrong values are field cases
            value = "" if field == "symbol" else UNFIT
            try:
                event = msgspec.structs.replace(sample, **{field: value})
            except (ValueError, TypeError):
                continue  # the type itself refuses it (or holds it nested): a field case
            out.append((event, subject_for(sample), field))
    return out


# --- the reason a worker must give, and the messages the fuzzer sends ---------------------


def refusal(subject: str, headers: dict[str, str] | None, data: bytes) -> str | None:
    """Why a worker consuming ``subject`` must dead-letter this message; None when it is a
    message a worker acts on. The same steps as a worker: envelope, decode, admission."""
    try:
        Envelope.from_headers(headers)
        event = decode(data)
    except (DecodeError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return admission_error(subject, event)


class Malformed(msgspec.Struct, frozen=True):
    """One generated message: where it goes, its bytes and headers, how it was made, and
    the reason a worker must give for refusing it."""

    subject: str
    data: bytes
    headers: dict[str, str]
    kind: str
    reason: str


TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def _token(rng: random.Random) -> str:
    return "".join(rng.choice(TOKEN) for _ in range(rng.randint(1, 10)))


def mutate(rng: random.Random, valid: bytes, edits: int = 4) -> bytes:
    """``valid`` with 1 to ``edits`` random edits: a bit flipped, a byte replaced, a JSON
    character inserted, a byte deleted, a slice repeated."""
    data = bytearray(valid)
    for _ in range(rng.randint(1, edits)):
        at = rng.randrange(len(data)) if data else 0
        match rng.randrange(5) if data else 2:
            case 0:
                data[at] ^= 1 << rng.randrange(8)
            case 1:
                data[at] = rng.randrange(256)
            case 2:
                data.insert(at, rng.choice(b'{}[]",:0123456789-.eE \\nulltrue'))
            case 3:
                del data[at]
            case _:
                data[at:at] = data[at : at + rng.randint(1, 16)]
    return bytes(data)


def home_type(pattern: str) -> type[Event]:
    """The event type a worker's input pattern (``sig.>``) admits."""
    literal = pattern.removesuffix(".>")
    for prefix, (event_type, _) in ADMITS.items():
        if prefix == literal or prefix.startswith(literal + "."):
            return event_type
    raise KeyError(pattern)


class Generator:
    """Malformed messages for one input pattern of a worker, reproducible from a seed.

    Kinds: random bytes; a valid encoding truncated or mutated byte by byte; valid JSON of
    the wrong shape; one field invalid (``field_cases``); another type on this subject
    (defect 1); an identity field that the subject contradicts (a Signal claiming another
    strategy); a name that cannot form a subject; a valid event with a broken envelope.
    Anything a worker would act on is drawn again (``skipped`` counts those).
    """

    KINDS = (
        "random_bytes",
        "truncated",
        "mutated",
        "json_shape",
        "field",
        "other_type",
        "identity",
        "unfit_name",
        "envelope",
    )

    def __init__(self, pattern: str, seed: int) -> None:
        self.pattern = pattern
        self.rng = random.Random(f"{pattern}:{seed}")
        self.home = home_type(pattern)
        self.sample = SAMPLES[self.home]
        self.subject = subject_for(self.sample)
        self.fields = field_cases(self.home)
        self.others = [e for t, e in SAMPLES.items() if t is not self.home]
        self.unfit = [e for e, _, _ in unfit_names() if type(e) is self.home]
        self.identity_fields = ADMITS[self.subject_prefix()][1]
        self.skipped = 0

    def subject_prefix(self) -> str:
        for prefix in ADMITS:
            if self.subject == prefix or self.subject.startswith(prefix + "."):
                return prefix
        raise KeyError(self.subject)

    def messages(self, count: int, run: str) -> list[Malformed]:
        out: list[Malformed] = []
        while len(out) < count:
            kind = self.KINDS[len(out) % len(self.KINDS)]
            subject, data, headers = getattr(self, kind)()
            headers = {"Nats-Msg-Id": f"{run}-{self.pattern}-{len(out)}", **headers}
            if kind == "envelope" and "drop-id" in headers:
                headers = {k: v for k, v in headers.items() if k not in ("drop-id", "Nats-Msg-Id")}
            reason = refusal(subject, headers, data)
            if reason is None:
                self.skipped += 1
                continue
            out.append(Malformed(subject, data, headers, kind, reason))
        return out

    # each kind: (subject, data, extra headers)

    def _valid_bytes(self) -> bytes:
        event = self.rng.choice([self.sample, self.sample, *self.others])
        return msgspec.json.encode(event)

    def _subject(self) -> str:
        """Mostly the home subject; sometimes other tokens under the same pattern (a pattern
        without a wildcard, ``venue.kill``, has only its own subject)."""
        if self.rng.random() < 0.8 or not self.pattern.endswith(">"):
            return self.subject
        literal = self.pattern.removesuffix(".>")
        tokens = [_token(self.rng) for _ in range(self.rng.randint(1, 5))]
        return ".".join([literal, *tokens])

    def random_bytes(self) -> tuple[str, bytes, dict[str, str]]:
        return self._subject(), self.rng.randbytes(self.rng.randint(0, 300)), {}

    def truncated(self) -> tuple[str, bytes, dict[str, str]]:
        data = self._valid_bytes()
        return self.subject, data[: self.rng.randrange(len(data))], {}

    def mutated(self) -> tuple[str, bytes, dict[str, str]]:
        return self.subject, mutate(self.rng, self._valid_bytes()), {}

    def json_shape(self) -> tuple[str, bytes, dict[str, str]]:
        raw = msgspec.to_builtins(self.sample)
        shapes: list[Any] = [
            [raw],
            list(raw.values()),
            raw.get("ts", 0),
            "Bar",
            None,
            {k: v for k, v in raw.items() if k != "type"},
            {**raw, "type": self.rng.choice(["Nope", "bar", "", "Event", "External"])},
            {**raw, "type": None},
            {},
            {"type": self.home.__name__},
            {**raw, "ts": {"$date": 1}},
            {**raw, **{_token(self.rng): None}, "type": 5},
        ]
        return self._subject(), msgspec.json.encode(self.rng.choice(shapes)), {}

    def field(self) -> tuple[str, bytes, dict[str, str]]:
        return self.subject, self.rng.choice(self.fields).data, {}

    def other_type(self) -> tuple[str, bytes, dict[str, str]]:
        return self._subject(), msgspec.json.encode(self.rng.choice(self.others)), {}

    def identity(self) -> tuple[str, bytes, dict[str, str]]:
        """The home type, valid, claiming another name than its subject carries."""
        if not self.identity_fields:
            return self.other_type()
        field = self.rng.choice(self.identity_fields)
        if field == "action":
            other = "resume" if getattr(self.sample, field) == "kill" else "kill"
        elif field == "symbol":
            other = self.rng.choice(["ETH/USDT", "BTC/USD", "X", "BTC-USDT"])
        else:
            other = self.rng.choice(["turtle", "other", "ma_cross2", _token(self.rng)])
        forged = msgspec.structs.replace(self.sample, **{field: other})
        return self.subject, msgspec.json.encode(forged), {}

    def unfit_name(self) -> tuple[str, bytes, dict[str, str]]:
        if not self.unfit:
            return self.other_type()
        return self.subject, msgspec.json.encode(self.rng.choice(self.unfit)), {}

    def envelope(self) -> tuple[str, bytes, dict[str, str]]:
        """The valid home event under headers no envelope can be read from."""
        junk = "".join(chr(self.rng.randint(33, 126)) for _ in range(self.rng.randint(1, 12)))
        bad = self.rng.choice(
            [
                {"Keel-Event-Time": junk + "x"},
                {"Keel-Schema": junk + "x"},
                {"Keel-Event-Time": "1.5"},
                {"Keel-Schema": ""},
                {"drop-id": "1"},
            ]
        )
        return self.subject, msgspec.json.encode(self.sample), bad
