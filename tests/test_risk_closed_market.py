"""A closed market (a broker's feed between sessions, by its trading calendar) blocks
entries until the first bar of its next session makes it ``streaming``; exits pass; it is a
normal quiet, so the status stays RUNNING, unless the feed then fails (``stale``)."""

from __future__ import annotations

from contracts.events import FeedState, FeedStatus
from services.risk.engine import RiskEngine
from services.risk.limits import RiskLimits
from tests.factories import MINUTE, VENUE, report
from tests.risk_helpers import BTC, ETH, HOUR, T0, alerts, bar, order_of, rejection, sig, statuses

CLOSE = T0 + 10 * MINUTE  # 2023-11-15T00:10:00Z, the session's end
OPENS = CLOSE + 8 * HOUR
UNTIL = "market closed until 2023-11-15T08:10:00Z"


def status(state: FeedState, ts: int, symbol: str = BTC, reason: str = "") -> FeedStatus:
    return FeedStatus(ts=ts, venue=VENUE, symbol=symbol, state=state, reason=reason)


def holding(qty: float) -> RiskEngine:
    """A risk engine with prices for BTC and ETH and ``qty`` BTC held by strategy s1."""
    e = RiskEngine(RiskLimits())
    e.decide(bar(100.0), T0)
    e.decide(bar(50.0, symbol=ETH), T0)
    order = order_of(e.decide(sig(qty), T0))
    e.decide(report(order, "filled", qty, 100.0), T0 + 1)
    return e


def test_a_closed_market_takes_no_entries_until_its_next_session_streams() -> None:
    e = holding(2.0)
    out = e.decide(status("closed", CLOSE, reason=UNTIL), CLOSE + 5)
    [alert] = alerts(out)
    assert (alert.rule, alert.action, alert.symbol) == ("stale_data", "halt_entries", BTC)
    assert alert.detail == f"BTC/USDT on test: {UNTIL}: entries blocked"
    assert statuses(out) == []  # normal, not an outage: no DEGRADED
    assert e.status().status == "RUNNING"

    night = CLOSE + HOUR
    decision = rejection(e.decide(sig(3.0, ts=night), night), "stale_data")
    assert decision.reason == f"entries in BTC/USDT on test blocked: {UNTIL}"
    rejection(e.decide(sig(-5.0, strategy="s2", ts=night), night), "stale_data")  # net -3 grows
    reduce = order_of(e.decide(sig(1.0, ts=night), night))  # a reduction passes
    assert (reduce.side, reduce.qty) == ("sell", 1.0)
    e.decide(report(reduce, "filled", 1.0, 100.0), night + 1)
    exit_ = order_of(e.decide(sig(0.0, ts=night + 2), night + 2))  # and the exit
    assert (exit_.side, exit_.qty) == ("sell", 1.0)
    order_of(e.decide(sig(1.0, symbol=ETH, ts=night), night))  # other markets trade

    first = OPENS + MINUTE  # the close of the next session's first bar
    e.decide(bar(104.0, ts=OPENS), first)
    out = e.decide(status("streaming", first, reason="stream delivers"), first)
    [resumed] = alerts(out)
    assert (resumed.action, resumed.detail) == (
        "resume",
        f"BTC/USDT on test: feed streaming at 2023-11-15T08:11:00Z, was {UNTIL}",
    )
    assert statuses(out) == []
    entry = order_of(e.decide(sig(3.0, ts=first), first))
    assert (entry.side, entry.qty) == ("buy", 3.0)


def test_a_feed_that_fails_at_the_open_is_an_outage_from_then() -> None:
    e = holding(1.0)
    e.decide(status("closed", CLOSE, reason=UNTIL), CLOSE)
    missing = OPENS + MINUTE
    out = e.decide(status("stale", missing, reason="no closed bar 30s after its close"), missing)
    [alert] = alerts(out)
    assert alert.detail == (
        "BTC/USDT on test: feed stale since 2023-11-15T08:11:00Z "
        "(no closed bar 30s after its close): entries blocked"
    )
    [degraded] = statuses(out)
    assert (degraded.status, degraded.reason) == (
        "DEGRADED",
        "no fresh data on test: BTC/USDT feed stale since 2023-11-15T08:11:00Z "
        "(no closed bar 30s after its close)",
    )
    rejection(e.decide(sig(2.0, ts=missing), missing), "stale_data")
    # A closed market beside an outage of the same venue is not counted in it.
    out = e.decide(status("closed", CLOSE, symbol=ETH, reason=UNTIL), missing + 1)
    assert statuses(out) == []
    assert e.status().reason.endswith("(no closed bar 30s after its close)")


def test_a_closed_block_survives_a_snapshot() -> None:
    e = holding(1.0)
    e.decide(status("closed", CLOSE, reason=UNTIL), CLOSE)
    restored = RiskEngine(RiskLimits())
    restored.restore(e.snapshot())
    assert restored.snapshot() == e.snapshot()
    decision = rejection(restored.decide(sig(2.0, ts=CLOSE + HOUR), CLOSE + HOUR), "stale_data")
    assert decision.reason.endswith(UNTIL)
    assert restored.status().status == "RUNNING"
