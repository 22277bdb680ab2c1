"""The venue circuit breaker: CLOSED -> OPEN -> HALF_OPEN -> CLOSED / OPEN, alone and in
the engine (statuses, alerts, the probe order)."""

from __future__ import annotations

from services.risk.breaker import BreakerState, VenueBreaker
from services.risk.engine import RiskEngine
from services.risk.limits import BreakerConfig, RiskLimits
from tests.factories import MINUTE, report
from tests.risk_helpers import T0, VENUE, alerts, order_of, rejection, sig, statuses

SECOND = 1_000_000_000
CONFIG = BreakerConfig(window="1m", min_reports=4, max_error_pct=50.0, cooldown="5m")


def breaker() -> VenueBreaker:
    return VenueBreaker(CONFIG, {})


def test_opens_only_above_the_rate_with_enough_reports() -> None:
    b = breaker()
    assert b.report("v", "o1", "rejected", T0) is None  # 1 of 1, but below min_reports
    assert b.report("v", "o2", "filled", T0 + SECOND) is None
    assert b.report("v", "o3", "rejected", T0 + 2 * SECOND) is None  # 2 of 3
    assert b.report("v", "o4", "accepted", T0 + 3 * SECOND) is None  # 2 of 4 = 50%: not above
    t = b.report("v", "o5", "rejected", T0 + 4 * SECOND)  # 3 of 5 = 60%
    assert t is not None and (t.before, t.after) == ("CLOSED", "OPEN")
    assert t.reason == "3 of 5 reports rejected in 1m (60.0% > 50%)"
    assert b.allows("v") == (False, f"venue v breaker OPEN: {t.reason}")
    assert b.allows("w") == (True, "")


def test_cancels_are_neutral_and_old_reports_leave_the_window() -> None:
    b = breaker()
    for i in range(3):
        b.report("v", f"r{i}", "rejected", T0 + i)
    assert b.report("v", "c", "canceled", T0 + 10) is None
    # a minute later the three rejections are gone: 1 failure of 4 is fine
    for i in range(3):
        assert b.report("v", f"f{i}", "filled", T0 + MINUTE + i) is None
    assert b.report("v", "r", "rejected", T0 + MINUTE + 5) is None
    assert b.state["v"].status == "CLOSED"
    assert b.state["v"].failures == 1 and len(b.state["v"].times) == 4


def open_breaker(b: VenueBreaker, at: int = T0) -> None:
    for i in range(4):
        b.report("v", f"r{i}", "rejected", at + i)
    assert b.state["v"].status == "OPEN"


def test_half_open_after_the_cooldown_lets_one_probe_through_then_closes() -> None:
    b = breaker()
    open_breaker(b)
    assert b.tick(T0 + 5 * MINUTE) == []  # opened at T0 + 3 ns
    [t] = b.tick(T0 + 5 * MINUTE + 3)
    assert (t.before, t.after) == ("OPEN", "HALF_OPEN")
    assert b.allows("v") == (True, "")
    b.sent("v", "probe")
    assert b.allows("v") == (False, "venue v breaker HALF_OPEN: probe probe outstanding")
    assert b.report("v", "late", "rejected", T0 + 6 * MINUTE) is None  # not the probe
    t = b.report("v", "probe", "accepted", T0 + 6 * MINUTE)
    assert t is not None and (t.before, t.after) == ("HALF_OPEN", "CLOSED")
    assert b.state["v"].times == []


def test_a_rejected_probe_opens_again_with_a_new_cooldown() -> None:
    b = breaker()
    open_breaker(b)
    b.tick(T0 + 10 * MINUTE)
    b.sent("v", "probe")
    t = b.report("v", "probe", "rejected", T0 + 11 * MINUTE)
    assert t is not None and (t.before, t.after, t.reason) == (
        "HALF_OPEN",
        "OPEN",
        "probe order rejected",
    )
    assert b.tick(T0 + 15 * MINUTE) == []
    assert [x.after for x in b.tick(T0 + 16 * MINUTE)] == ["HALF_OPEN"]


def test_state_is_plain_data() -> None:
    state = {"v": BreakerState(status="OPEN", opened_at=T0, reason="x")}
    b = VenueBreaker(CONFIG, state)
    assert b.next_deadline == T0 + 5 * MINUTE
    assert [t.after for t in b.tick(T0 + 5 * MINUTE)] == ["HALF_OPEN"]
    assert state["v"].status == "HALF_OPEN"


def test_the_engine_rejects_orders_to_an_open_venue_and_probes_after_the_cooldown() -> None:
    e = RiskEngine(RiskLimits(breaker=CONFIG))
    rejected = []
    for i in range(4):
        order = order_of(e.decide(sig(side="buy", size=1.0, ts=T0 + i), T0 + i))
        rejected.append(order)
    for i, order in enumerate(rejected[:3]):
        assert e.decide(report(order, "rejected", ts=T0 + 10 + i), T0 + 10 + i) == []
    out = e.decide(report(rejected[3], "rejected", ts=T0 + 20), T0 + 20)
    [status] = statuses(out)
    assert (status.status, status.rule) == ("DEGRADED", "venue_breaker")
    assert status.reason == (
        "venue test breaker OPEN: 4 of 4 reports rejected in 1m (100.0% > 50%)"
    )
    [alert] = alerts(out)
    assert (alert.rule, alert.action, alert.venue) == ("venue_breaker", "open", VENUE)
    decision = rejection(e.decide(sig(side="buy", size=1.0, ts=T0 + MINUTE), T0 + MINUTE))
    assert decision.rule == "venue_breaker"
    order_of(e.decide(sig(1.0, venue="other", ts=T0 + MINUTE), T0 + MINUTE))  # other venues trade
    # the cool-down passes: the next event half-opens it, the signal is the probe
    now = T0 + 20 + 5 * MINUTE
    out = e.decide(sig(side="buy", size=1.0, ts=now), now)
    status, alert, probe = out
    assert status.status == "DEGRADED" and "HALF_OPEN" in status.reason
    assert alert.action == "half_open"
    assert probe.client_order_id.startswith("s1-")
    assert rejection(e.decide(sig(side="buy", size=1.0, ts=now + 1), now + 1)).reason == (
        f"venue test breaker HALF_OPEN: probe {probe.client_order_id} outstanding"
    )
    out = e.decide(report(probe, "filled", 1.0, 10.0, ts=now + MINUTE), now + MINUTE)
    [status] = statuses(out)
    assert status.status == "RUNNING"
    assert [a.action for a in alerts(out)] == ["closed"]
    order_of(e.decide(sig(side="buy", size=1.0, ts=now + MINUTE), now + MINUTE))


def test_a_rejected_cancel_is_not_a_venue_error() -> None:
    e = RiskEngine(RiskLimits(breaker=BreakerConfig(min_reports=1, max_error_pct=0.0)))
    order = order_of(e.decide(sig(1.0), T0))
    e.state.cancels[order.client_order_id] = True
    assert e.decide(report(order, "rejected"), T0 + 1) == []
    assert e.state.working  # the order still stands: our cancel was too late
    assert e.decide(report(order, "rejected"), T0 + 2) != []  # now it is the order itself
