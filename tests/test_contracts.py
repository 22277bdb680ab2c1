"""Contract tests: every event survives the wire byte-for-byte, bad bytes are refused with a
reason, events are immutable, and envelopes carry ids and traces deterministically."""

from __future__ import annotations

import gc
import json
import math
import re
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import UNSET

from contracts.codec import DecodeError, decode, encode
from contracts.envelope import (
    CAUSATION_ID,
    CORRELATION_ID,
    EVENT_TIME,
    MSG_ID,
    SCHEMA,
    TRACEPARENT,
    Envelope,
    content_id,
    derive_id,
    external_envelope,
    root_envelope,
    trace_id_of,
)
from contracts.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
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
from contracts.governance_events import (
    DisableStrategy,
    EnableStrategy,
    HaltEntries,
    PlaybookAction,
    ScaleBudgets,
)
from contracts.model_events import (
    AllocationDecided,
    ModelRoster,
    ModelVariant,
    PromotionDecided,
    ShadowResult,
    ShadowStep,
)
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
from tests.factories import bar, equity_snapshot
from tests.model_event_samples import ALLOCATION, NOTIFICATION, PROMOTION, ROSTER, SHADOW

PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TRACEPARENT_RE = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")

# --- strategies ---------------------------------------------------------------------------

times = st.integers(min_value=0, max_value=2**63 - 1)
counts = st.integers(min_value=0, max_value=2**63 - 1)
texts = st.text(max_size=20)
filled = st.text(min_size=1, max_size=20)
tokens = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
venue_ids = st.from_regex(r"[A-Za-z0-9-]{1,36}", fullmatch=True)
positive = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)
non_negative = st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
sides = st.sampled_from(["buy", "sell"])


@st.composite
def bars(draw: st.DrawFn) -> Bar:
    low = draw(positive)
    high = low + draw(non_negative)
    open_time = draw(st.integers(min_value=0, max_value=2**62))
    close_time = open_time + draw(st.integers(min_value=1, max_value=2**62 - 1))  # int64
    return Bar(
        ts=close_time,
        venue=draw(texts),
        symbol=draw(texts),
        interval=draw(texts),
        open_time=open_time,
        close_time=close_time,
        open=draw(st.floats(min_value=low, max_value=high)),
        high=high,
        low=low,
        close=draw(st.floats(min_value=low, max_value=high)),
        volume=draw(non_negative),
    )


@st.composite
def quotes(draw: st.DrawFn) -> Quote:
    bid = draw(positive)
    return Quote(
        ts=draw(times),
        venue=draw(texts),
        symbol=draw(texts),
        bid=bid,
        ask=bid + draw(non_negative),
        bid_size=draw(non_negative),
        ask_size=draw(non_negative),
    )


@st.composite
def signals(draw: st.DrawFn) -> Signal:
    common: dict[str, Any] = {
        "ts": draw(times),
        "strategy": draw(texts),
        "venue": draw(texts),
        "symbol": draw(texts),
        "model_tag": draw(texts),
        "confidence": draw(unit),
        "stop": draw(st.none() | finite),
        "target": draw(st.none() | finite),
        "atr": draw(st.none() | non_negative),
        "reason": draw(texts),
    }
    if draw(st.booleans()):
        return Signal(target_position=draw(finite), **common)
    return Signal(side=draw(sides), size=draw(positive), **common)


@st.composite
def order_commands(draw: st.DrawFn) -> OrderCommand:
    order_type = draw(st.sampled_from(["market", "limit", "stop"]))
    limit_price = draw(positive if order_type == "limit" else st.none() | positive)
    stop_price = draw(positive if order_type == "stop" else st.none() | positive)
    unset_or = lambda values: st.just(UNSET) | st.none() | values  # noqa: E731
    take_profit, stop_loss = draw(unset_or(positive)), draw(unset_or(positive))
    trail_pct = draw(unset_or(st.floats(min_value=1e-6, max_value=99.0)))
    trail_atr = draw(unset_or(positive)) if trail_pct in (UNSET, None) else UNSET
    return OrderCommand(
        ts=draw(times),
        action=draw(st.sampled_from(["new", "cancel", "amend"])),
        client_order_id=draw(filled),
        strategy=draw(tokens),
        venue=draw(texts),
        symbol=draw(texts),
        side=draw(sides),
        qty=draw(positive),
        order_type=order_type,
        limit_price=limit_price,
        stop_price=stop_price,
        time_in_force=draw(st.sampled_from(["GTC", "IOC", "FOK"])),
        model_tag=draw(texts),
        take_profit=take_profit,
        stop_loss=stop_loss,
        trail_pct=trail_pct,
        trail_atr=trail_atr,
        atr=draw(unset_or(positive)),
        oco_group=draw(unset_or(st.text(min_size=1, max_size=10))),
        expire_at=draw(unset_or(st.integers(min_value=1, max_value=2**63 - 1))),
    )


@st.composite
def promos(draw: st.DrawFn) -> PromoAnnouncement:
    starts_at = draw(st.integers(min_value=0, max_value=2**62))
    ends_at = draw(st.just(0) | st.integers(min_value=starts_at, max_value=2**63 - 1))
    return PromoAnnouncement(
        ts=draw(times),
        source=draw(texts),
        venue=draw(texts),
        symbol=draw(texts),
        title=draw(st.text(min_size=1, max_size=20)),
        text=draw(texts),
        url=draw(texts),
        starts_at=starts_at,
        ends_at=ends_at,
        min_volume=draw(st.none() | positive),
        volume_currency=draw(texts),
        reward_pool=draw(st.none() | positive),
        reward_per_user=draw(st.none() | positive),
        reward_currency=draw(texts),
        winners=draw(st.none() | st.integers(min_value=1, max_value=2**31)),
    )


STRATEGIES: dict[type[Event], st.SearchStrategy[Any]] = {
    Instrument: st.builds(
        Instrument,
        ts=times,
        venue=texts,
        symbol=texts,
        base=filled,
        quote=filled,
        kind=st.sampled_from(["spot", "perpetual"]),
        tick_size=non_negative,
        lot_size=non_negative,
        min_notional=non_negative,
        contract_size=positive,
        max_leverage=non_negative,
        settle=texts,
        active=st.booleans(),
    ),
    Bar: bars(),
    Trade: st.builds(
        Trade,
        ts=times,
        venue=texts,
        symbol=texts,
        price=positive,
        qty=positive,
        side=sides,
        trade_id=texts,
    ),
    Quote: quotes(),
    FundingRate: st.builds(
        FundingRate,
        ts=times,
        venue=texts,
        symbol=texts,
        rate=finite,
        interval_h=positive,
        next_time=times,
    ),
    FeedStatus: st.builds(
        FeedStatus,
        ts=times,
        venue=texts,
        symbol=texts,
        state=st.sampled_from(["streaming", "backfilling", "stale", "polling", "delisted"]),
        reason=texts,
        last_close=times,
    ),
    Signal: signals(),
    OrderCommand: order_commands(),
    RiskDecision: st.builds(
        RiskDecision,
        ts=times,
        approved=st.booleans(),
        strategy=texts,
        venue=texts,
        symbol=texts,
        client_order_id=texts,
        rule=texts,
        reason=texts,
    ),
    ExecutionReport: st.builds(
        ExecutionReport,
        ts=times,
        status=st.sampled_from(
            ["accepted", "partially_filled", "filled", "canceled", "rejected", "expired"]
        ),
        client_order_id=texts,
        strategy=tokens,
        venue=texts,
        symbol=texts,
        side=sides,
        order_qty=non_negative,
        venue_order_id=texts,
        fill_price=positive,
        fill_qty=positive,
        cum_qty=non_negative,
        fee=finite,  # may be negative: a maker rebate
        fee_currency=texts,
        model_tag=texts,
        reason=texts,
        parent_id=st.just(UNSET) | texts,
        stop_price=st.just(UNSET) | positive,
        limit_price=st.just(UNSET) | positive,
    ),
    PositionChanged: st.builds(
        PositionChanged,
        ts=times,
        venue=texts,
        symbol=texts,
        qty=finite,
        avg_price=non_negative,
        realized_pnl=finite,
        strategy=texts,
        funding=finite,
        margin_used=non_negative,
    ),
    EquitySnapshot: st.builds(
        EquitySnapshot,
        ts=times,
        cash=finite,
        equity=finite,
        realized_pnl=finite,
        unrealized_pnl=finite,
        fees=finite,
        gross_exposure=non_negative,
        margin_used=non_negative,
        funding=finite,
        fx_pnl=finite,
        net_exposure=st.none() | finite,
    ),
    StrategyPnL: st.builds(
        StrategyPnL,
        ts=times,
        strategy=texts,
        model_tag=texts,
        realized_pnl=finite,
        unrealized_pnl=finite,
        fees=finite,
        funding=finite,
        gross_exposure=non_negative,
        net_exposure=finite,
        positions=st.integers(min_value=0, max_value=2**31),
    ),
    ParamsTuned: st.builds(
        ParamsTuned,
        ts=times,
        strategy=texts,
        symbol=texts,
        param=filled,
        old=finite,
        new=finite,
        reason=texts,
    ),
    GovernanceCommand: st.builds(
        GovernanceCommand,
        ts=times,
        action=st.sampled_from(["kill", "resume"]),
        reason=texts,
        issued_by=texts,
    )
    | st.builds(
        GovernanceCommand,
        ts=times,
        action=st.just("enable"),
        reason=texts,
        issued_by=texts,
        strategy=tokens,
    ),
    Heartbeat: st.builds(
        Heartbeat,
        ts=times,
        worker=texts,
        instance=filled,
        seq=counts,
        processed=counts,
        status=texts,
        metrics_port=st.integers(min_value=0, max_value=65535),
    ),
    DeadLetter: st.builds(
        DeadLetter,
        ts=times,
        worker=texts,
        subject=filled,
        reason=filled,
        payload=st.binary(max_size=64),
        stream=texts,
        stream_seq=counts,
    ),
    SystemStatus: st.builds(
        SystemStatus,
        ts=times,
        status=st.sampled_from(["RUNNING", "DEGRADED", "SAFE_MODE", "HALTED"]),
        reason=texts,
        source=texts,
        rule=texts,
    ),
    RiskAlert: st.builds(
        RiskAlert,
        ts=times,
        rule=texts,
        action=filled,
        detail=texts,
        venue=texts,
        symbol=texts,
    ),
    ListingAnnouncement: st.builds(
        ListingAnnouncement,
        ts=times,
        source=texts,
        venue=texts,
        symbol=st.text(min_size=1, max_size=20),
        base=texts,
        quote=texts,
        listing_time=times,
        title=texts,
        url=texts,
    ),
    SocialSentiment: st.builds(
        SocialSentiment,
        ts=times,
        source=texts,
        symbol=st.text(min_size=1, max_size=20),
        score=st.floats(min_value=-1.0, max_value=1.0),
        mentions=counts,
        velocity=finite,
    ),
    PromoAnnouncement: promos(),
    VenueOrder: st.builds(
        VenueOrder,
        ts=times,
        action=st.sampled_from(["new", "cancel", "amend"]),
        client_order_id=filled,
        venue_client_id=venue_ids,
        strategy=tokens,
        venue=texts,
        symbol=texts,
        side=st.sampled_from(["buy", "sell"]),
        qty=positive,
        order_type=st.just("market"),
        reduce_only=st.booleans(),
        protective=st.booleans(),
        replaces=st.just("") | venue_ids,
    ),
    VenueAnswer: st.builds(
        VenueAnswer,
        ts=times,
        kind=st.sampled_from(["accepted", "rejected", "canceled", "expired", "unknown"]),
        venue=texts,
        symbol=texts,
        client_order_id=texts,
        venue_client_id=texts,
        source=st.sampled_from(["submit", "stream", "poll", "query", "reconcile"]),
        venue_order_id=texts,
        order_qty=positive,
        cum_qty=positive,
        venue_ts=times,
        reason=texts,
    ),
    Discrepancy: st.builds(
        Discrepancy,
        ts=times,
        venue=texts,
        kind=st.sampled_from(["missed_fill", "external_order", "position_mismatch"]),
        action=texts,
        symbol=texts,
        venue_value=finite,
        keel_value=finite,
        detail=texts,
    ),
    VenueStatus: st.builds(
        VenueStatus,
        ts=times,
        venue=texts,
        mode=st.sampled_from(["paper", "sandbox", "demo", "live"]),
        state=st.sampled_from(["starting", "running", "degraded", "halted"]),
        reason=texts,
        discrepancies=counts,
        last_reconcile=times,
    ),
    VenueAdoption: st.builds(VenueAdoption, ts=times, venue=texts, reason=tokens),
    KillSwitch: st.builds(KillSwitch, ts=times, reason=texts, flatten=st.booleans()),
    Notification: st.builds(
        lambda ts, key, priority, outcome, title, count: msgspec.structs.replace(
            NOTIFICATION,
            ts=ts,
            key=key,
            priority=priority,
            outcome=outcome,
            title=title,
            count=count,
        ),
        times,
        filled,
        st.sampled_from(["CRITICAL", "ERROR", "WARNING", "INFO", "HEARTBEAT"]),
        st.sampled_from(["sent", "merged", "suppressed", "dropped", "failed"]),
        texts,
        st.integers(min_value=1, max_value=2**31),
    ),
    ShadowStep: st.builds(
        lambda ts, strategy, u, a, b, closed: msgspec.structs.replace(
            SHADOW,
            ts=ts,
            strategy=strategy,
            u=u,
            results=(
                ShadowResult(tag="v3", position=a, step_return=b),
                ShadowResult(tag="v4", position=-a, step_return=-b, trade_return=closed),
            ),
        ),
        times,
        tokens,
        st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
        finite,
        finite,
        st.none() | finite,
    ),
    ModelRoster: st.builds(
        lambda ts, strategy, w, reason: msgspec.structs.replace(
            ROSTER,
            ts=ts,
            strategy=strategy,
            variants=(ModelVariant("v3", w), ModelVariant("v4", w / 2, canary=True)),
            reason=reason,
        ),
        times,
        tokens,
        st.floats(min_value=0.0, max_value=1e9),
        texts,
    ),
    PromotionDecided: st.builds(
        lambda ts, strategy, auto: msgspec.structs.replace(
            PROMOTION, ts=ts, strategy=strategy, auto=auto
        ),
        times,
        tokens,
        st.booleans(),
    ),
    AllocationDecided: st.builds(
        lambda ts, total, reason: msgspec.structs.replace(
            ALLOCATION, ts=ts, total=total, reason=reason
        ),
        times,
        finite,
        texts,
    ),
    PlaybookAction: st.builds(
        PlaybookAction,
        ts=times,
        action=st.one_of(
            st.builds(
                ScaleBudgets,
                id=filled,
                rule=tokens,
                cause_id=texts,
                at=times,
                factor=st.floats(min_value=0.0, max_value=1.0),
                drawdown=finite,
                max_drawdown=finite,
                reset_below=finite,
                reason=texts,
            ),
            st.builds(
                DisableStrategy,
                id=filled,
                rule=tokens,
                cause_id=texts,
                at=times,
                strategy=filled,
                rejections=counts,
                max_rejections=counts,
                window_ns=counts,
                reason=texts,
            ),
            st.builds(
                EnableStrategy,
                id=filled,
                rule=tokens,
                cause_id=texts,
                at=times,
                strategy=filled,
                by=texts,
                reason=texts,
            ),
            st.builds(
                HaltEntries,
                id=filled,
                rule=tokens,
                cause_id=texts,
                at=st.just(0),
                pnl=finite,
                max_loss=finite,
                day=texts,
                timezone=texts,
                until=st.integers(min_value=1, max_value=2**62),
                reason=texts,
            ),
        ),
    ),
}


def test_every_event_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(EVENT_TYPES)
    assert len(EVENT_TYPES) == len(set(EVENT_TYPES))


# --- round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_round_trip_is_exact_and_byte_stable(event_type: type[Event]) -> None:
    @PROPERTY
    @given(STRATEGIES[event_type])
    def check(event: Event) -> None:
        assert type(event) is event_type
        wire = encode(event)
        assert json.loads(wire)["type"] == event_type.__name__
        back = decode(wire)
        assert type(back) is event_type
        assert back == event
        assert encode(back) == wire

    check()


def test_round_trip_keeps_negative_zero_and_extreme_floats() -> None:
    snap = EquitySnapshot(
        ts=0,
        cash=-0.0,
        equity=5e-324,
        realized_pnl=1.7976931348623157e308,
        unrealized_pnl=-1.7976931348623157e308,
        fees=0.1 + 0.2,
        gross_exposure=123456789.123456789,
    )
    back = decode(encode(snap))
    assert back == snap
    assert isinstance(back, EquitySnapshot)
    assert math.copysign(1.0, back.cash) == -1.0
    assert back.fees == 0.1 + 0.2


def test_dead_letter_payload_survives_arbitrary_bytes() -> None:
    payload = bytes(range(256))
    dl = DeadLetter(ts=1, worker="w", subject="md.bar.x", reason="bad", payload=payload)
    back = decode(encode(dl))
    assert isinstance(back, DeadLetter)
    assert back.payload == payload


# --- rejection ------------------------------------------------------------------------------


def _bar_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "type": "Bar",
        "ts": 2_000,
        "venue": "binance",
        "symbol": "BTC/USDT",
        "interval": "1m",
        "open_time": 1_000,
        "close_time": 2_000,
        "open": 100.0,
        "high": 110.0,
        "low": 90.0,
        "close": 105.0,
        "volume": 12.5,
    }
    fields.update(overrides)
    return fields


def _wire(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields).encode()


def test_reference_bar_json_decodes() -> None:
    bar = decode(_wire(_bar_fields()))
    assert isinstance(bar, Bar)
    assert bar.symbol == "BTC/USDT"
    assert bar.high == 110.0


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        pytest.param(b"\xff\xfe\x00garbage", "malformed", id="garbage-bytes"),
        pytest.param(b"", "truncated", id="empty"),
        pytest.param(b"not json at all", "malformed", id="not-json"),
        pytest.param(b'{"type": "Bar", "ts": 1', "truncated", id="truncated"),
        pytest.param(b"[1, 2, 3]", "object", id="json-array"),
        pytest.param(b'{"ts": 1}', "type", id="no-type-tag"),
        pytest.param(_wire({"type": "Nope", "ts": 1}), "Nope", id="unknown-type"),
        pytest.param(_wire({"type": "Event", "ts": 1}), "Event", id="base-type"),
        pytest.param(
            _wire({k: v for k, v in _bar_fields().items() if k != "volume"}),
            "volume",
            id="missing-field",
        ),
        pytest.param(_wire(_bar_fields(ts="soon")), "$.ts", id="wrong-type-ts"),
        pytest.param(_wire(_bar_fields(open="100.0")), "$.open", id="string-price"),
        pytest.param(_wire(_bar_fields(high=80.0)), "high below low", id="high-below-low"),
        pytest.param(_wire(_bar_fields(volume=-1.0)), "volume must be >= 0", id="neg-volume"),
        pytest.param(_wire(_bar_fields(low=0.0)), "prices must be > 0", id="zero-price"),
        pytest.param(
            _wire(_bar_fields(close_time=1_000)), "close_time must be after", id="empty-span"
        ),
        pytest.param(_wire(_bar_fields(open=None)), "$.open", id="null-price"),
        pytest.param(
            _wire(_bar_fields()).replace(b"100.0", b"NaN"),
            "malformed",
            id="nan-literal",
        ),
        pytest.param(
            _wire(
                {
                    "type": "Trade",
                    "ts": 1,
                    "venue": "v",
                    "symbol": "s",
                    "price": 1.0,
                    "qty": 1.0,
                    "side": "hold",
                }
            ),
            "$.side",
            id="bad-literal",
        ),
        pytest.param(
            _wire({"type": "Signal", "ts": 1, "strategy": "s", "venue": "v", "symbol": "x"}),
            "target_position",
            id="signal-without-intent",
        ),
        pytest.param(
            _wire(
                {
                    "type": "OrderCommand",
                    "ts": 1,
                    "action": "new",
                    "client_order_id": "c",
                    "strategy": "s",
                    "venue": "v",
                    "symbol": "x",
                    "side": "buy",
                    "qty": 1.0,
                    "order_type": "limit",
                }
            ),
            "limit needs price",
            id="limit-without-price",
        ),
        pytest.param(
            _wire({"type": "Quote", "ts": 1, "venue": "v", "symbol": "x", "bid": 2.0, "ask": 1.0}),
            "bid <= ask",
            id="crossed-quote",
        ),
    ],
)
def test_decode_rejects_with_a_reason(data: bytes, fragment: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


@PROPERTY
@given(st.binary(max_size=64))
def test_decode_of_arbitrary_bytes_returns_an_event_or_raises_decode_error(data: bytes) -> None:
    try:
        event = decode(data)
    except DecodeError as exc:
        assert str(exc)
    else:
        assert isinstance(event, EVENT_TYPES)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"open": math.nan}, "must be finite"),
        ({"high": math.inf}, "must be finite"),
        ({"volume": math.nan}, "must be finite"),
        ({"low": -1.0}, "prices must be > 0"),
        ({"high": 80.0}, "high below low"),
        ({"volume": -0.5}, "volume must be >= 0"),
        ({"close_time": 999}, "close_time must be after open_time"),
    ],
)
def test_bar_constructor_validates(overrides: dict[str, Any], message: str) -> None:
    fields = _bar_fields(**overrides)
    del fields["type"]
    with pytest.raises(ValueError, match=re.escape(message)):
        Bar(**fields)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Trade(ts=1, venue="v", symbol="s", price=0.0, qty=1.0, side="buy"), "> 0"),
        (
            lambda: Trade(ts=1, venue="v", symbol="s", price=math.nan, qty=1.0, side="buy"),
            "must be finite",
        ),
        (lambda: Quote(ts=1, venue="v", symbol="s", bid=0.0, ask=1.0), "0 < bid <= ask"),
        (lambda: Quote(ts=1, venue="v", symbol="s", bid=2.0, ask=1.0), "0 < bid <= ask"),
        (lambda: Signal(ts=1, strategy="s", venue="v", symbol="x"), "either target_position"),
        (
            lambda: Signal(ts=1, strategy="s", venue="v", symbol="x", side="buy"),
            "either target_position",
        ),
        (
            lambda: Signal(
                ts=1, strategy="s", venue="v", symbol="x", target_position=1.0, side="buy", size=1.0
            ),
            "either target_position",
        ),
        (
            lambda: Signal(
                ts=1, strategy="s", venue="v", symbol="x", target_position=1.0, confidence=1.5
            ),
            "confidence",
        ),
        (
            lambda: Signal(
                ts=1, strategy="s", venue="v", symbol="x", target_position=1.0, confidence=math.nan
            ),
            "confidence",
        ),
        (
            lambda: Signal(ts=1, strategy="s", venue="v", symbol="x", side="buy", size=-1.0),
            "size must be > 0",
        ),
        (
            lambda: OrderCommand(
                ts=1,
                action="new",
                client_order_id="c",
                strategy="s",
                venue="v",
                symbol="x",
                side="buy",
                qty=0.0,
            ),
            "qty must be > 0",
        ),
        (
            lambda: OrderCommand(
                ts=1,
                action="new",
                client_order_id="c",
                strategy="s",
                venue="v",
                symbol="x",
                side="buy",
                qty=math.inf,
            ),
            "qty must be finite",
        ),
        (
            lambda: OrderCommand(
                ts=1,
                action="new",
                client_order_id="c",
                strategy="s",
                venue="v",
                symbol="x",
                side="buy",
                qty=1.0,
                order_type="stop",
            ),
            "stop needs stop_price",
        ),
        (lambda: _managed(trail_pct=100.0), "trail_pct must be within (0, 100)"),
        (lambda: _managed(trail_pct=1.0, trail_atr=2.0), "give trail_pct or trail_atr, not both"),
        (lambda: _managed(stop_loss=0.0), "stop_loss must be > 0"),
        (lambda: _managed(take_profit=-1.0), "take_profit must be > 0"),
        (lambda: _managed(atr=0.0), "atr must be > 0"),
        (lambda: _managed(oco_group=""), "oco_group must not be empty"),
        (lambda: _managed(expire_at=0), "expire_at must be > 0"),
        (lambda: _managed(trail_atr=math.nan), "trail_atr must be finite"),
        (
            lambda: Instrument(ts=1, venue="v", symbol="s", base="b", quote="q", lot_size=-1.0),
            ">= 0",
        ),
        (
            lambda: Instrument(ts=1, venue="v", symbol="s", base="b", quote="q", contract_size=0.0),
            "contract_size must be > 0",
        ),
        (
            lambda: Instrument(ts=1, venue="v", symbol="s", base="b", quote="q", max_leverage=-1),
            "max_leverage must be >= 0",
        ),
        (
            lambda: ListingAnnouncement(ts=1, source="f", venue="v", symbol=""),
            "symbol must not be empty",
        ),
        (
            lambda: ListingAnnouncement(ts=1, source="f", venue="v", symbol="X", listing_time=-1),
            "listing_time must be >= 0",
        ),
        (lambda: SocialSentiment(ts=1, source="f", symbol="X", score=1.5), "score must be within"),
        (
            lambda: SocialSentiment(ts=1, source="f", symbol="X", score=0.5, mentions=-1),
            "mentions must be >= 0",
        ),
        (
            lambda: SocialSentiment(ts=1, source="f", symbol="X", score=math.nan),
            "must be finite",
        ),
        (lambda: PromoAnnouncement(ts=1, source="f", venue="v"), "give a title or a text"),
        (
            lambda: PromoAnnouncement(ts=1, source="f", venue="v", text="t", min_volume=0.0),
            "min_volume must be > 0",
        ),
        (
            lambda: PromoAnnouncement(ts=1, source="f", venue="v", text="t", winners=0),
            "winners must be >= 1",
        ),
        (
            lambda: PromoAnnouncement(
                ts=1, source="f", venue="v", text="t", starts_at=5, ends_at=4
            ),
            "ends_at before starts_at",
        ),
        (
            lambda: PromoAnnouncement(ts=1, source="f", venue="v", text="t", reward_pool=math.inf),
            "must be finite",
        ),
    ],
)
def test_constructors_validate(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


def _managed(**fields: Any) -> OrderCommand:
    return OrderCommand(
        ts=1,
        action="new",
        client_order_id="c",
        strategy="s",
        venue="v",
        symbol="x",
        side="buy",
        qty=1.0,
        **fields,
    )


def test_plain_order_commands_and_reports_encode_as_before_order_management() -> None:
    """The order-management fields are UNSET by default and left out of the JSON: plain
    orders and reports keep their bytes (and stored runs their result hashes)."""
    assert encode(_managed()) == (
        b'{"type":"OrderCommand","action":"new","client_order_id":"c","strategy":"s",'
        b'"venue":"v","symbol":"x","side":"buy","qty":1.0,"order_type":"market",'
        b'"limit_price":null,"stop_price":null,"time_in_force":"GTC","model_tag":"","ts":1}'
    )
    report = ExecutionReport(
        ts=1,
        status="filled",
        client_order_id="c",
        strategy="s",
        venue="v",
        symbol="x",
        side="buy",
        order_qty=1.0,
    )
    assert b"parent_id" not in encode(report) and b"stop_price" not in encode(report)


def test_order_management_fields_round_trip_and_none_means_unset() -> None:
    order = _managed(take_profit=110.0, stop_loss=95.0, trail_pct=2.0, expire_at=5)
    data = encode(order)
    assert b'"take_profit":110.0' in data and b'"trail_pct":2.0' in data
    assert decode(data) == order
    assert _managed(stop_loss=None).stop_loss is UNSET
    assert _managed(stop_loss=None) == _managed()
    stored = data.replace(b'"stop_loss":95.0', b'"stop_loss":null')
    assert decode(stored).stop_loss is UNSET  # type: ignore[attr-defined]


# --- immutability ---------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_events_are_frozen(event_type: type[Event]) -> None:
    @settings(max_examples=5, deadline=None)
    @given(STRATEGIES[event_type])
    def check(event: Event) -> None:
        before = encode(event)
        with pytest.raises(AttributeError):
            event.ts = 0  # type: ignore[misc]
        for field in event.__struct_fields__:
            with pytest.raises(AttributeError):
                setattr(event, field, getattr(event, field))
        assert encode(event) == before

    check()


def test_events_are_hashable_and_equal_by_value() -> None:
    a = Heartbeat(ts=1, worker="w", instance="i", seq=1, processed=2)
    b = Heartbeat(ts=1, worker="w", instance="i", seq=1, processed=2)
    assert a == b
    assert hash(a) == hash(b)
    assert a != msgspec.structs.replace(a, seq=2)


# --- envelope -------------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=40)
envelopes = st.builds(
    Envelope,
    event_id=ids,
    causation_id=ids,
    correlation_id=ids,
    event_time=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    schema=st.integers(min_value=0, max_value=1000),
)
producers = st.text(min_size=1, max_size=20)
indices = st.integers(min_value=0, max_value=10_000)


@PROPERTY
@given(envelopes)
def test_envelope_survives_headers(env: Envelope) -> None:
    headers = env.headers()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    assert Envelope.from_headers(headers) == env


@PROPERTY
@given(envelopes)
def test_only_msg_id_uses_the_nats_header_namespace(env: Envelope) -> None:
    headers = env.headers()
    assert [k for k in headers if k.startswith("Nats-")] == [MSG_ID]
    assert set(headers) == {MSG_ID, CAUSATION_ID, CORRELATION_ID, EVENT_TIME, SCHEMA, TRACEPARENT}
    assert headers[MSG_ID] == env.event_id


def test_root_envelope_is_its_own_cause_and_correlation() -> None:
    root = Envelope.root("abc", 42)
    assert root == Envelope("abc", "abc", "abc", 42, SCHEMA_VERSION)
    assert Envelope.from_headers({MSG_ID: "abc", EVENT_TIME: "42"}) == root


@PROPERTY
@given(envelopes, producers, indices, st.integers(min_value=0, max_value=2**62))
def test_child_is_deterministic_and_linked(
    parent: Envelope, producer: str, index: int, event_time: int
) -> None:
    child = parent.child(producer, index, event_time)
    assert child == parent.child(producer, index, event_time)
    assert child.event_id == derive_id(producer, parent.event_id, index)
    assert child.causation_id == parent.event_id
    assert child.correlation_id == parent.correlation_id
    assert child.event_time == event_time
    assert child.schema == SCHEMA_VERSION
    assert re.fullmatch(r"[0-9a-f]{32}", child.event_id)
    # The id does not depend on when the child happened, so a re-run dedupes.
    assert parent.child(producer, index, event_time + 1).event_id == child.event_id


@PROPERTY
@given(envelopes, producers, producers, indices)
def test_child_id_depends_on_producer(parent: Envelope, p1: str, p2: str, index: int) -> None:
    a = parent.child(p1, index, 0).event_id
    b = parent.child(p2, index, 0).event_id
    assert (a == b) == (p1 == p2)


@PROPERTY
@given(envelopes, producers, indices, indices)
def test_child_id_depends_on_index(parent: Envelope, producer: str, i: int, j: int) -> None:
    a = parent.child(producer, i, 0).event_id
    b = parent.child(producer, j, 0).event_id
    assert (a == b) == (i == j)


@PROPERTY
@given(ids, ids, producers, indices)
def test_child_id_depends_on_cause(c1: str, c2: str, producer: str, index: int) -> None:
    a = Envelope.root(c1, 0).child(producer, index, 0).event_id
    b = Envelope.root(c2, 0).child(producer, index, 0).event_id
    assert (a == b) == (c1 == c2)


def test_child_ids_known_values_are_distinct() -> None:
    root = Envelope.root(content_id("binance", "BTC/USDT", "1m", 1_000), 1_000)
    children = {
        root.child(producer, index, 0).event_id
        for producer in ("strategy", "risk", "exec")
        for index in range(5)
    }
    assert len(children) == 15


@PROPERTY
@given(envelopes, producers, indices)
def test_traceparent_follows_the_correlation(parent: Envelope, producer: str, index: int) -> None:
    child = parent.child(producer, index, 1)
    grandchild = child.child(producer, index, 2)
    for env in (parent, child, grandchild):
        assert TRACEPARENT_RE.match(env.traceparent)
        assert env.traceparent.split("-")[1] == trace_id_of(parent.correlation_id)
        assert env.headers()[TRACEPARENT] == env.traceparent
    # Span ids come from event ids: parent and child are different spans.
    assert parent.traceparent.split("-")[2] != child.traceparent.split("-")[2]


def test_trace_id_differs_across_correlations() -> None:
    assert trace_id_of("a") != trace_id_of("b")
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id_of(""))


@pytest.mark.parametrize("headers", [None, {}, {CAUSATION_ID: "x", EVENT_TIME: "1"}])
def test_from_headers_requires_msg_id(headers: dict[str, str] | None) -> None:
    with pytest.raises(ValueError, match=MSG_ID):
        Envelope.from_headers(headers)


@pytest.mark.parametrize(
    "bad", ["", "soon", "1.5", "1e9", "0x10", "12ns", str(2**63), str(-(2**63) - 1), "9" * 5000]
)
def test_from_headers_rejects_bad_event_time(bad: str) -> None:
    with pytest.raises(ValueError, match="bad envelope header"):
        Envelope.from_headers({MSG_ID: "abc", EVENT_TIME: bad})


@pytest.mark.parametrize("bad", ["v1", "-1", str(2**63)])
def test_from_headers_rejects_bad_schema(bad: str) -> None:
    with pytest.raises(ValueError, match="bad envelope header"):
        Envelope.from_headers({MSG_ID: "abc", SCHEMA: bad})


def test_content_id_is_deterministic_and_order_sensitive() -> None:
    a = content_id("binance", "BTC/USDT", 1)
    assert a == content_id("binance", "BTC/USDT", 1)
    assert a != content_id("BTC/USDT", "binance", 1)
    assert re.fullmatch(r"[0-9a-f]{32}", a)


# --- non-finite floats -------------------------------------------------------------------
# JSON has no NaN/Infinity (msgspec writes ``null``), so an event holding one could be stored
# but never read back: every constructor must refuse them.


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda: Signal(ts=1, strategy="s", venue="v", symbol="x", target_position=math.inf),
            id="signal-target-position-inf",
        ),
        pytest.param(
            lambda: Signal(ts=1, strategy="s", venue="v", symbol="x", side="buy", size=math.inf),
            id="signal-size-inf",
        ),
        pytest.param(
            lambda: OrderCommand(
                ts=1,
                action="new",
                client_order_id="c",
                strategy="s",
                venue="v",
                symbol="x",
                side="buy",
                qty=1.0,
                order_type="limit",
                limit_price=math.nan,
            ),
            id="order-limit-price-nan",
        ),
        pytest.param(
            lambda: Instrument(
                ts=1, venue="v", symbol="s", base="b", quote="q", tick_size=math.inf
            ),
            id="instrument-tick-size-inf",
        ),
        pytest.param(
            lambda: ExecutionReport(
                ts=1,
                status="filled",
                client_order_id="c",
                strategy="s",
                venue="v",
                symbol="x",
                side="buy",
                order_qty=1.0,
                fill_price=math.nan,
            ),
            id="execution-fill-price-nan",
        ),
        pytest.param(
            lambda: PositionChanged(
                ts=1, venue="v", symbol="x", qty=1.0, avg_price=math.inf, realized_pnl=0.0
            ),
            id="position-avg-price-inf",
        ),
        pytest.param(
            lambda: EquitySnapshot(
                ts=1,
                cash=0.0,
                equity=math.nan,
                realized_pnl=0.0,
                unrealized_pnl=0.0,
                fees=0.0,
                gross_exposure=0.0,
            ),
            id="equity-nan",
        ),
        pytest.param(
            lambda: EquitySnapshot(
                ts=1,
                cash=0.0,
                equity=0.0,
                realized_pnl=0.0,
                unrealized_pnl=0.0,
                fees=0.0,
                gross_exposure=0.0,
                net_exposure=math.inf,
            ),
            id="equity-net-exposure-inf",
        ),
        pytest.param(
            lambda: EquitySnapshot(
                ts=1,
                cash=0.0,
                equity=0.0,
                realized_pnl=0.0,
                unrealized_pnl=0.0,
                fees=0.0,
                gross_exposure=0.0,
                funding=-math.inf,
            ),
            id="equity-funding-inf",
        ),
        pytest.param(
            lambda: StrategyPnL(ts=1, strategy="s", unrealized_pnl=math.nan),
            id="strategy-pnl-nan",
        ),
    ],
)
def test_non_finite_floats_are_rejected(build: Any) -> None:
    with pytest.raises(ValueError, match="must be finite"):
        build()


# --- external events ---------------------------------------------------------------------------


def test_external_event_decodes_from_the_stored_json() -> None:
    data = (
        b'{"type":"ListingAnnouncement","ts":5,"source":"feed","venue":"binance",'
        b'"symbol":"NEW/USDT","listing_time":7}'
    )
    event = decode(data)
    assert event == ListingAnnouncement(
        ts=5, source="feed", venue="binance", symbol="NEW/USDT", listing_time=7
    )
    with pytest.raises(DecodeError, match="score must be within"):
        decode(b'{"type":"SocialSentiment","ts":1,"source":"x","symbol":"A","score":2.0}')


def test_external_ids_derive_from_the_fact_not_from_when_it_was_seen() -> None:
    listing = ListingAnnouncement(ts=1, source="feed", venue="binance", symbol="NEW/USDT")
    later = msgspec.structs.replace(listing, ts=99, url="https://example.com/x")
    other = msgspec.structs.replace(listing, symbol="OLD/USDT")
    assert external_envelope(listing).event_id == external_envelope(later).event_id
    assert external_envelope(listing).event_id != external_envelope(other).event_id
    assert external_envelope(later).event_time == 99
    reading = SocialSentiment(ts=1, source="feed", symbol="DOGE/USDT", score=0.9)
    next_reading = msgspec.structs.replace(reading, ts=2)
    assert external_envelope(reading).event_id != external_envelope(next_reading).event_id
    promo = PromoAnnouncement(ts=1, source="feed", venue="binance", title="t", text="x")
    assert (
        external_envelope(promo).event_id
        == external_envelope(msgspec.structs.replace(promo, ts=50)).event_id
    )
    assert (
        external_envelope(promo).event_id
        != external_envelope(msgspec.structs.replace(promo, text="y")).event_id
    )
    assert root_envelope(promo) == external_envelope(promo)
    with pytest.raises(TypeError):
        root_envelope(GovernanceCommand(ts=1, action="kill"))


@pytest.mark.parametrize("cls", [Bar, EquitySnapshot])
def test_untracked_events_hold_only_scalars(cls: type) -> None:
    """``gc=False`` is safe only while no field can hold a container (a cycle would leak)."""
    for field in msgspec.structs.fields(cls):
        kinds = get_args(field.type) or (field.type,)  # Annotated: the type and its Meta
        kinds = tuple(k for k in kinds if not isinstance(k, msgspec.Meta))
        assert set(kinds) <= {str, int, float, type(None)}, field.name
    instance = bar(1.0) if cls is Bar else equity_snapshot(1.0, ts=1)
    assert not gc.is_tracked(instance)
