"""The stale-data guard: a feed that is not fresh blocks entries on its market (exits and
reductions pass), alerts, degrades the status, and a fresh status lifts it; the same through
the in-process replay engine with the fleet's real roles."""

from __future__ import annotations

from pathlib import Path

import msgspec

from contracts.events import Event, FeedState, FeedStatus, OrderCommand, RiskDecision
from replay.engine import ReplayEngine
from services.config import load_config
from services.fleet import fleet_roles
from services.marketdata.synthetic import SyntheticMarket
from services.risk.engine import RiskEngine
from services.risk.limits import RiskLimits
from tests.factories import MINUTE, VENUE, report
from tests.risk_helpers import (
    BTC,
    ETH,
    T0,
    alerts,
    bar,
    instrument,
    order_of,
    rejection,
    sig,
    statuses,
)

STALE_AT = T0 + 5 * MINUTE  # the missing close the marketdata worker reports


def status(state: FeedState, ts: int, symbol: str = BTC, reason: str = "") -> FeedStatus:
    return FeedStatus(ts=ts, venue=VENUE, symbol=symbol, state=state, reason=reason)


def holding(qty: float) -> RiskEngine:
    """A risk engine with prices for BTC and ETH and ``qty`` BTC held by strategy s1."""
    e = RiskEngine(RiskLimits())
    e.decide(bar(100.0), T0)
    e.decide(bar(50.0, symbol=ETH), T0)
    if qty:
        order = order_of(e.decide(sig(qty), T0))
        e.decide(report(order, "filled", qty, 100.0), T0 + 1)
    return e


def test_a_stale_feed_blocks_entries_until_the_stream_is_back() -> None:
    e = holding(2.0)
    now = STALE_AT + 10
    out = e.decide(status("stale", STALE_AT, reason="no closed bar by close + 30s"), now)
    [alert] = alerts(out)
    assert (alert.rule, alert.action, alert.venue, alert.symbol) == (
        "stale_data",
        "halt_entries",
        VENUE,
        BTC,
    )
    assert alert.detail == (
        "BTC/USDT on test: feed stale since 2023-11-15T00:05:00Z "
        "(no closed bar by close + 30s): entries blocked"
    )
    [degraded] = statuses(out)
    assert (degraded.status, degraded.rule) == ("DEGRADED", "stale_data")
    assert degraded.reason == (
        "no fresh data on test: BTC/USDT feed stale since 2023-11-15T00:05:00Z "
        "(no closed bar by close + 30s)"
    )
    assert e.status().status == "DEGRADED"

    decision = rejection(e.decide(sig(3.0, ts=now), now), "stale_data")
    assert decision.reason == (
        "entries in BTC/USDT on test blocked: feed stale since 2023-11-15T00:05:00Z "
        "(no closed bar by close + 30s)"
    )
    rejection(e.decide(sig(-5.0, strategy="s2", ts=now), now), "stale_data")  # net -3 grows
    reduce = order_of(e.decide(sig(1.0, ts=now), now))  # a reduction passes
    assert (reduce.side, reduce.qty) == ("sell", 1.0)
    e.decide(report(reduce, "filled", 1.0, 100.0), now + 1)
    exit_ = order_of(e.decide(sig(0.0, ts=now + 2), now + 2))  # and the exit
    assert (exit_.side, exit_.qty) == ("sell", 1.0)
    order_of(e.decide(sig(1.0, symbol=ETH, ts=now), now))  # other markets trade

    # bars backfilled while stale move prices but do not lift the block
    assert e.decide(bar(101.0, ts=STALE_AT), now + 3) == []
    rejection(e.decide(sig(3.0, ts=now + 4), now + 4), "stale_data")

    back = STALE_AT + 2 * MINUTE
    out = e.decide(status("streaming", back), back)
    [resumed] = alerts(out)
    assert resumed.action == "resume"
    assert resumed.detail == (
        "BTC/USDT on test: feed streaming at 2023-11-15T00:07:00Z, was feed stale since "
        "2023-11-15T00:05:00Z (no closed bar by close + 30s)"
    )
    [running] = statuses(out)
    assert running.status == "RUNNING"
    assert running.reason == "all clear (was DEGRADED: stale_data)"
    entry = order_of(e.decide(sig(3.0, ts=back), back))
    assert (entry.side, entry.qty) == ("buy", 3.0)


def test_an_outage_alerts_once_and_keeps_its_start_across_non_fresh_states() -> None:
    e = holding(0.0)
    out = e.decide(status("backfilling", T0 + MINUTE, reason="3 bars missing"), T0 + MINUTE)
    assert [a.action for a in alerts(out)] == ["halt_entries"]
    assert [s.status for s in statuses(out)] == ["DEGRADED"]
    out = e.decide(status("stale", T0 + 2 * MINUTE), T0 + 2 * MINUTE)
    assert alerts(out) == []  # still the same outage
    [moved] = statuses(out)  # the reason names the new state, since the outage began
    assert moved.reason == "no fresh data on test: BTC/USDT feed stale since 2023-11-15T00:01:00Z"
    decision = rejection(e.decide(sig(1.0), T0 + 2 * MINUTE), "stale_data")
    assert "feed stale since 2023-11-15T00:01:00Z" in decision.reason
    # a second market of the venue: one condition names the oldest outage and counts the rest
    out = e.decide(status("stale", T0 + 3 * MINUTE, symbol=ETH), T0 + 3 * MINUTE)
    [both] = statuses(out)
    assert both.reason.endswith("since 2023-11-15T00:01:00Z and 1 more")
    assert [a.symbol for a in alerts(out)] == [ETH]
    # polling is fresh: the REST fallback keeps the bars coming
    out = e.decide(status("polling", T0 + 4 * MINUTE), T0 + 4 * MINUTE)
    assert [a.action for a in alerts(out)] == ["resume"]
    [eth_only] = statuses(out)
    assert (eth_only.status, eth_only.reason) == (
        "DEGRADED",
        "no fresh data on test: ETH/USDT feed stale since 2023-11-15T00:03:00Z",
    )
    order_of(e.decide(sig(1.0, ts=T0 + 4 * MINUTE), T0 + 4 * MINUTE))
    # a fresh status of a market that was never blocked changes nothing
    assert e.decide(status("streaming", T0 + 5 * MINUTE, symbol="SOL/USDT"), T0 + 5 * MINUTE) == []


def test_a_delisted_market_stays_blocked_without_degrading_the_fleet() -> None:
    e = holding(1.0)
    out = e.decide(status("stale", T0 + MINUTE), T0 + MINUTE)
    assert [s.status for s in statuses(out)] == ["DEGRADED"]
    out = e.decide(status("delisted", T0 + 2 * MINUTE, reason="market removed"), T0 + 2 * MINUTE)
    [alert] = alerts(out)  # no longer a passing outage: said again
    assert (alert.action, alert.detail) == (
        "halt_entries",
        "BTC/USDT on test: feed delisted since 2023-11-15T00:01:00Z (market removed): "
        "entries blocked",
    )
    [status_] = statuses(out)
    assert status_.status == "RUNNING"
    for minute in range(3, 6):  # bars, non-fresh statuses and time do not lift it
        ts = T0 + minute * MINUTE
        e.decide(bar(100.0, ts=ts), ts)
        e.decide(status("stale", ts), ts)
        rejection(e.decide(sig(2.0, ts=ts), ts), "stale_data")
    assert order_of(e.decide(sig(0.0, ts=T0 + 6 * MINUTE), T0 + 6 * MINUTE)).side == "sell"

    # an inactive Instrument is a delisting too, even with no status before it
    gone = instrument(ETH, ts=T0 + 7 * MINUTE)
    out = e.decide(msgspec.structs.replace(gone, active=False), T0 + 7 * MINUTE)
    assert [(a.symbol, a.action) for a in alerts(out)] == [(ETH, "halt_entries")]
    assert statuses(out) == []
    rejection(e.decide(sig(1.0, symbol=ETH, ts=T0 + 7 * MINUTE), T0 + 7 * MINUTE), "stale_data")
    # the venue streams it again (relisted): entries resume
    out = e.decide(status("streaming", T0 + 8 * MINUTE, symbol=ETH), T0 + 8 * MINUTE)
    assert [a.action for a in alerts(out)] == ["resume"]
    order_of(e.decide(sig(1.0, symbol=ETH, ts=T0 + 8 * MINUTE), T0 + 8 * MINUTE))


def test_blocks_survive_a_snapshot() -> None:
    e = holding(0.0)
    e.decide(status("stale", T0 + MINUTE), T0 + MINUTE)
    assert RiskEngine.snapshot_version == 5
    restored = RiskEngine(RiskLimits())
    restored.restore(e.snapshot())
    assert restored.snapshot() == e.snapshot()
    rejection(restored.decide(sig(1.0, ts=T0 + 2 * MINUTE), T0 + 2 * MINUTE), "stale_data")
    out = restored.decide(status("streaming", T0 + 3 * MINUTE), T0 + 3 * MINUTE)
    assert [a.action for a in alerts(out)] == ["resume"]
    assert [s.status for s in statuses(out)] == ["RUNNING"]


CONFIG = """
[[strategies]]
name = "ma_cross"
instance = "ma"
params = { kind = "ema", fast = 3, slow = 8, mode = "long_only", qty = 1 }

[execution]
fill = "next_open"
"""


def replay(roles_config: Path, market: list[Event]) -> list[tuple[str, Event]]:
    outputs: list[tuple[str, Event]] = []
    engine = ReplayEngine(
        fleet_roles(load_config(roles_config)),
        lambda subject, event, envelope, producer: outputs.append((producer, event)),
    )
    engine.run(market)
    return outputs


def test_the_fleet_takes_no_entries_while_the_replayed_feed_is_stale(tmp_path: Path) -> None:
    config = tmp_path / "keel.toml"
    config.write_text(CONFIG)
    bars = list(SyntheticMarket(symbols=("BTC/USDT",), bars=240, seed=3).generate())
    first, last = bars[80], bars[160]
    stale = FeedStatus(ts=first.close_time, venue=first.venue, symbol=first.symbol, state="stale")
    fresh = FeedStatus(ts=last.close_time, venue=last.venue, symbol=last.symbol, state="streaming")
    plain = replay(config, list(bars))
    guarded = replay(config, [*bars[:80], stale, *bars[80:160], fresh, *bars[160:]])

    def entries(outputs: list[tuple[str, Event]], lo: int, hi: int) -> list[OrderCommand]:
        return [
            e
            for _, e in outputs
            if isinstance(e, OrderCommand) and e.side == "buy" and lo <= e.ts < hi
        ]

    window = (stale.ts, fresh.ts)
    assert entries(plain, *window), "the window must hold entries for the guard to block"
    assert entries(guarded, *window) == []
    rejected = [e for p, e in guarded if isinstance(e, RiskDecision)]
    assert rejected and {d.rule for d in rejected} == {"stale_data"}
    assert all(window[0] <= d.ts < window[1] for d in rejected)
    risk = [
        e for p, e in guarded if p == "risk" and type(e).__name__ in ("RiskAlert", "SystemStatus")
    ]
    assert [(type(e).__name__, getattr(e, "action", getattr(e, "status", ""))) for e in risk] == [
        ("SystemStatus", "DEGRADED"),
        ("RiskAlert", "halt_entries"),
        ("SystemStatus", "RUNNING"),
        ("RiskAlert", "resume"),
    ]
    # before the outage the two runs are the same, event for event
    before = [(p, e) for p, e in plain if e.ts < stale.ts]
    assert [(p, e) for p, e in guarded if e.ts < stale.ts] == before
