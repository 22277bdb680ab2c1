"""Subject naming: reversible symbol tokens, the documented subject per event type, and
refusal of names that cannot be subject tokens."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from contracts.governance_events import DisableStrategy, PlaybookAction
from contracts.subjects import (
    BarSubject,
    SubjectError,
    bar_subject,
    bars_of_symbol,
    external_filters,
    name_token,
    parse_bar_subject,
    subject_for,
    subject_matches,
    symbol_token,
    token_symbol,
)
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
from tests.model_event_samples import SUBJECTS as MODEL_SUBJECTS

PROPERTY = settings(max_examples=200, deadline=None)
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")

symbols = st.text(min_size=1)
names = st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True)

# --- symbol tokens --------------------------------------------------------------------------


@PROPERTY
@given(symbols)
def test_symbol_token_round_trips(symbol: str) -> None:
    token = symbol_token(symbol)
    assert TOKEN_RE.match(token)
    assert "." not in token and "*" not in token and ">" not in token
    assert token_symbol(token) == symbol


@PROPERTY
@given(st.text(alphabet="/:_-. *>AZaz09\u00e9\u20ac\U0001f680", min_size=1, max_size=8))
def test_symbol_token_round_trips_on_escape_heavy_alphabet(symbol: str) -> None:
    token = symbol_token(symbol)
    assert TOKEN_RE.match(token)
    assert token_symbol(token) == symbol


@pytest.mark.parametrize(
    ("symbol", "token"),
    [
        ("BTC/USDT", "BTC-USDT"),
        ("BTC/USDT:USDT", "BTC-USDT_3AUSDT"),
        ("BRK B", "BRK_20B"),
        ("ES", "ES"),
        ("es1", "es1"),
        ("A_B", "A_5FB"),
        ("A-B", "A_2DB"),
        ("A.B", "A_2EB"),
        ("*", "_2A"),
        (">", "_3E"),
        ("\u00e9", "_C3_A9"),
        ("\u20ac", "_E2_82_AC"),
    ],
)
def test_known_symbol_tokens(symbol: str, token: str) -> None:
    assert symbol_token(symbol) == token
    assert token_symbol(token) == symbol


@PROPERTY
@given(symbols, symbols)
def test_distinct_symbols_give_distinct_tokens(a: str, b: str) -> None:
    assert (symbol_token(a) == symbol_token(b)) == (a == b)


@pytest.mark.parametrize(
    ("a", "b"),
    [("A/B", "A-B"), ("A-B", "A_2DB"), ("A_B", "A_5FB"), ("A B", "A_20B"), ("a", "A")],
)
def test_lookalike_symbols_give_distinct_tokens(a: str, b: str) -> None:
    assert symbol_token(a) != symbol_token(b)


def test_symbol_token_rejects_empty() -> None:
    with pytest.raises(SubjectError, match="empty"):
        symbol_token("")


@pytest.mark.parametrize(
    "token",
    ["BTC_ZZ", "a.b", "", "BTC_3", "BTC_", "_3a", "a b", "a*", "a>", "_FF", "_C3"],
)
def test_token_symbol_rejects_bad_tokens(token: str) -> None:
    with pytest.raises(SubjectError):
        token_symbol(token)


# --- names ------------------------------------------------------------------------------------


@PROPERTY
@given(names)
def test_name_token_accepts_valid_names(name: str) -> None:
    assert name_token(name) == name


@pytest.mark.parametrize("bad", ["bin.ance", "", "a b", "a*", "a>", "caf\u00e9", "a\n"])
def test_bad_names_raise(bad: str) -> None:
    with pytest.raises(SubjectError, match="venue"):
        name_token(bad, "venue")
    with pytest.raises(SubjectError, match="venue"):
        bar_subject(bad, "BTC/USDT", "1m")
    with pytest.raises(SubjectError, match=r"must match \[A-Za-z0-9_-\]\+"):
        bar_subject("binance", "BTC/USDT", bad)


@pytest.mark.parametrize("bad", ["bin.ance", "", "a b"])
def test_subject_for_rejects_bad_venue(bad: str) -> None:
    trade = Trade(ts=1, venue=bad, symbol="BTC/USDT", price=1.0, qty=1.0, side="buy")
    with pytest.raises(SubjectError, match="venue"):
        subject_for(trade)


# --- bar subjects -----------------------------------------------------------------------------


@PROPERTY
@given(names, symbols, names)
def test_bar_subject_parses_back(venue: str, symbol: str, interval: str) -> None:
    subject = bar_subject(venue, symbol, interval)
    assert subject.split(".")[:2] == ["md", "bar"]
    assert len(subject.split(".")) == 5
    assert parse_bar_subject(subject) == BarSubject(venue=venue, symbol=symbol, interval=interval)


def test_known_bar_subject() -> None:
    subject = bar_subject("binance", "BTC/USDT:USDT", "1m")
    assert subject == "md.bar.binance.BTC-USDT_3AUSDT.1m"
    parsed = parse_bar_subject(subject)
    assert (parsed.venue, parsed.symbol, parsed.interval) == ("binance", "BTC/USDT:USDT", "1m")


@pytest.mark.parametrize(
    "subject",
    [
        "md.trade.binance.BTC-USDT",
        "md.bar.binance.BTC-USDT",
        "md.bar.binance.BTC-USDT.1m.extra",
        "sig.bar.binance.BTC-USDT.1m",
        "md.bar.binance.BTC_ZZ.1m",
        "",
    ],
)
def test_parse_bar_subject_rejects(subject: str) -> None:
    with pytest.raises(SubjectError):
        parse_bar_subject(subject)


@PROPERTY
@given(symbols)
def test_bars_of_symbol_is_a_filter_over_bar_subjects(symbol: str) -> None:
    pattern = bars_of_symbol(symbol)
    assert pattern == f"md.bar.*.{symbol_token(symbol)}.*"
    concrete = bar_subject("venue", symbol, "1h").split(".")
    for want, got in zip(pattern.split("."), concrete, strict=True):
        assert want in ("*", got)


# --- subject per event type ---------------------------------------------------------------------

_SYM = "BTC/USDT:USDT"
_TOK = "BTC-USDT_3AUSDT"

_VCID = "6a072d40-d3ad-dfd4-399f-19d158e4345a"
EXAMPLES: list[tuple[Event, str]] = [
    (
        Instrument(ts=1, venue="binance", symbol=_SYM, base="BTC", quote="USDT"),
        f"md.instrument.binance.{_TOK}",
    ),
    (
        Bar(
            ts=2,
            venue="binance",
            symbol=_SYM,
            interval="1m",
            open_time=1,
            close_time=2,
            open=1.0,
            high=2.0,
            low=1.0,
            close=1.5,
            volume=0.0,
        ),
        f"md.bar.binance.{_TOK}.1m",
    ),
    (
        Trade(ts=1, venue="binance", symbol=_SYM, price=1.0, qty=1.0, side="buy"),
        f"md.trade.binance.{_TOK}",
    ),
    (
        Quote(ts=1, venue="binance", symbol=_SYM, bid=1.0, ask=1.1),
        f"md.quote.binance.{_TOK}",
    ),
    (
        FundingRate(ts=1, venue="binance", symbol=_SYM, rate=0.0001),
        f"md.funding.binance.{_TOK}",
    ),
    (
        FeedStatus(ts=1, venue="binance", symbol=_SYM, state="stale"),
        f"md.status.binance.{_TOK}",
    ),
    (
        Signal(ts=1, strategy="ma_cross", venue="binance", symbol=_SYM, target_position=1.0),
        f"sig.ma_cross.binance.{_TOK}",
    ),
    (
        OrderCommand(
            ts=1,
            action="new",
            client_order_id="c1",
            strategy="ma_cross",
            venue="binance",
            symbol=_SYM,
            side="buy",
            qty=1.0,
        ),
        f"ord.cmd.binance.{_TOK}",
    ),
    (
        RiskDecision(ts=1, approved=True, strategy="ma_cross", venue="binance", symbol=_SYM),
        f"ord.risk.ma_cross.{_TOK}",
    ),
    (
        ExecutionReport(
            ts=1,
            status="filled",
            client_order_id="c1",
            strategy="ma_cross",
            venue="binance",
            symbol=_SYM,
            side="buy",
            order_qty=1.0,
        ),
        f"exec.report.binance.{_TOK}",
    ),
    (
        PositionChanged(
            ts=1, venue="binance", symbol=_SYM, qty=1.0, avg_price=1.0, realized_pnl=0.0
        ),
        f"pf.position.binance.{_TOK}",
    ),
    (
        EquitySnapshot(
            ts=1,
            cash=1.0,
            equity=1.0,
            realized_pnl=0.0,
            unrealized_pnl=0.0,
            fees=0.0,
            gross_exposure=0.0,
        ),
        "pf.equity",
    ),
    (StrategyPnL(ts=1, strategy="ma_cross", model_tag="ema-8-21"), "pf.pnl.ma_cross"),
    (
        ParamsTuned(ts=1, strategy="trend", symbol="BTC/USDT", param="rsi_window", old=14, new=12),
        "gov.tune.trend.BTC-USDT",
    ),
    (GovernanceCommand(ts=1, action="kill"), "gov.cmd.kill"),
    (GovernanceCommand(ts=1, action="resume"), "gov.cmd.resume"),
    (
        Heartbeat(ts=1, worker="risk-1", instance="i", seq=1, processed=0),
        "sys.heartbeat.risk-1",
    ),
    (
        DeadLetter(ts=1, worker="risk-1", subject="x", reason="r", payload=b""),
        "sys.dlq.risk-1",
    ),
    (
        SystemStatus(
            ts=1, status="HALTED", reason="kill switch", source="risk", rule="kill_switch"
        ),
        "sys.status.risk",
    ),
    (
        RiskAlert(ts=1, rule="depeg_guard", action="halt_entries", detail="USDC 0.97 USD"),
        "ord.alert.depeg_guard",
    ),
    (
        ListingAnnouncement(ts=1, source="cex-news", venue="binance", symbol=_SYM),
        f"ext.listing.cex-news.{_TOK}",
    ),
    (
        SocialSentiment(ts=1, source="x_feed", symbol=_SYM, score=0.8, mentions=10),
        f"ext.sentiment.x_feed.{_TOK}",
    ),
    (
        PromoAnnouncement(ts=1, source="cex-news", venue="binance", symbol=_SYM, text="t"),
        "ext.promo.cex-news.binance",
    ),
    (
        VenueOrder(
            ts=1,
            action="new",
            client_order_id="o1",
            venue_client_id=_VCID,
            strategy="ma_cross",
            venue="binance",
            symbol=_SYM,
            side="buy",
            qty=1.0,
        ),
        "venue.order.binance.BTC-USDT_3AUSDT",
    ),
    (
        VenueAnswer(
            ts=1,
            kind="accepted",
            venue="binance",
            symbol=_SYM,
            client_order_id="o1",
            venue_client_id=_VCID,
            source="submit",
        ),
        "venue.answer.binance.BTC-USDT_3AUSDT",
    ),
    (
        Discrepancy(ts=1, venue="binance", kind="external_order", action="recorded"),
        "venue.recon.binance",
    ),
    (VenueStatus(ts=1, venue="binance", mode="sandbox", state="running"), "venue.status.binance"),
    (VenueAdoption(ts=1, venue="binance", reason="checked"), "venue.adopt.binance"),
    (KillSwitch(ts=1, reason="drill"), "venue.kill"),
    (
        PlaybookAction(
            ts=1,
            action=DisableStrategy(
                id="r:1:rejections",
                rule="rejections",
                cause_id="r:1",
                at=1,
                strategy="ma_fast",
                rejections=3,
                max_rejections=2,
                window_ns=3_600_000_000_000,
                reason="3 risk rejections within 1h",
            ),
        ),
        "gov.playbook.rejections",
    ),
    *zip(MODEL_SAMPLES, MODEL_SUBJECTS, strict=True),
]


def test_examples_cover_every_event_type() -> None:
    assert {type(event) for event, _ in EXAMPLES} == set(EVENT_TYPES)


@pytest.mark.parametrize(
    ("event", "subject"), EXAMPLES, ids=[f"{type(e).__name__}-{s}" for e, s in EXAMPLES]
)
def test_subject_for_gives_documented_subject(event: Event, subject: str) -> None:
    assert subject_for(event) == subject
    assert all(TOKEN_RE.match(token) for token in subject.split("."))


@PROPERTY
@given(names, symbols, names)
def test_subject_for_bar_matches_bar_subject(venue: str, symbol: str, interval: str) -> None:
    bar = Bar(
        ts=2,
        venue=venue,
        symbol=symbol,
        interval=interval,
        open_time=1,
        close_time=2,
        open=1.0,
        high=1.0,
        low=1.0,
        close=1.0,
        volume=1.0,
    )
    subject = subject_for(bar)
    assert subject == bar_subject(venue, symbol, interval)
    assert parse_bar_subject(subject) == BarSubject(venue=venue, symbol=symbol, interval=interval)


@PROPERTY
@given(names, names, symbols)
def test_subject_for_signal_tokens_are_valid(strategy: str, venue: str, symbol: str) -> None:
    signal = Signal(ts=1, strategy=strategy, venue=venue, symbol=symbol, side="sell", size=2.0)
    parts = subject_for(signal).split(".")
    assert parts == ["sig", strategy, venue, symbol_token(symbol)]
    assert token_symbol(parts[3]) == symbol


@pytest.mark.parametrize("bad", ["a.b", "", "a b"])
def test_subject_for_rejects_bad_strategy_and_worker(bad: str) -> None:
    signal = Signal(ts=1, strategy=bad, venue="binance", symbol="X", target_position=0.0)
    with pytest.raises(SubjectError, match="strategy"):
        subject_for(signal)
    heartbeat = Heartbeat(ts=1, worker=bad, instance="i", seq=0, processed=0)
    with pytest.raises(SubjectError, match="worker"):
        subject_for(heartbeat)


@pytest.mark.parametrize("token", ["BTC_2FUSDT", "_41", "BTC-USDT_3a"])
def test_non_canonical_tokens_are_rejected(token: str) -> None:
    with pytest.raises(SubjectError):
        token_symbol(token)


@pytest.mark.parametrize("subject", ["md.bar..BTC.", "md.bar.*.BTC.>", "md.bar.binance.BTC.1 m"])
def test_parse_bar_subject_rejects_wildcards_and_empty_tokens(subject: str) -> None:
    with pytest.raises(SubjectError):
        parse_bar_subject(subject)


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("md.bar.>", "md.bar.sim.BTC-USDT.1m", True),
        ("md.bar.>", "md.bar", False),
        ("md.bar.*.BTC-USDT.*", "md.bar.sim.BTC-USDT.1m", True),
        ("md.bar.*.BTC-USDT.*", "md.bar.sim.ETH-USDT.1m", False),
        ("md.bar.*.BTC-USDT.*", "md.bar.sim.BTC-USDT.1m.extra", False),
        ("sig.>", "sig.ma.sim.BTC-USDT", True),
        ("pf.equity", "pf.equity", True),
        ("pf.equity", "pf.equity.x", False),
        ("exec.>", "ord.cmd.sim.BTC-USDT", False),
    ],
)
def test_subject_matches_follows_nats_wildcards(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


# --- external event filters --------------------------------------------------------------------


def test_external_filters_split_symbol_keyed_kinds_by_symbol() -> None:
    assert external_filters(("listing", "promo")) == ("ext.listing.>", "ext.promo.>")
    assert external_filters(("sentiment", "promo"), ("BTC/USDT", "DOGE/USDT")) == (
        "ext.sentiment.*.BTC-USDT",
        "ext.sentiment.*.DOGE-USDT",
        "ext.promo.>",
    )
    for _event, subject in EXAMPLES:
        if subject.startswith("ext."):
            kind = subject.split(".")[1]
            assert any(subject_matches(p, subject) for p in external_filters((kind,)))
    with pytest.raises(SubjectError, match="unknown external kind"):
        external_filters(("rumour",))


@pytest.mark.parametrize("bad", ["a.b", "", "a b", "*"])
def test_external_subjects_reject_bad_sources(bad: str) -> None:
    with pytest.raises(SubjectError, match="source"):
        subject_for(ListingAnnouncement(ts=1, source=bad, venue="v", symbol="X"))
