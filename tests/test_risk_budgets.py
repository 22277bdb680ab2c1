"""Risk enforces governance's allocator budgets (``gov.alloc.<strategy>``): a budget caps the
strategy's exposure at budget x equity, equity-based sizing scales by it, a playbook's
ScaleBudgets multiplies it, and without a budget nothing changes. Pure, then the risk worker
on a real nats-server."""

from __future__ import annotations

import asyncio

from contracts.envelope import Envelope, content_id
from contracts.events import Event, OrderCommand, RiskDecision
from contracts.governance_events import PlaybookAction, ScaleBudgets
from contracts.model_events import AllocationDecided, ModelBudget, ModelKey
from eventstore.bus import Bus, Stored
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer
from services.risk.engine import RiskEngine
from services.risk.limits import RiskLimits, SizingConfig, SizingRule
from services.risk.role import risk_role
from services.runtime.worker import Worker, WorkerOptions
from tests.factories import report
from tests.risk_helpers import BTC, ETH, T0, bar, equity, order_of, rejection, sig


def budget(strategy: str, *weights: float, ts: int = T0) -> AllocationDecided:
    """``strategy``'s models m0, m1, ... at ``weights``."""
    budgets = tuple(
        ModelBudget(
            key=ModelKey(strategy, f"m{i}"),
            weight=w,
            target=w,
            previous=w,
            score=0.1,
            sharpe=0.1,
            psr=0.9,
            trades=40,
            is_canary=i > 0,
            bound="none",
            changed_at=None,
            reason="test",
        )
        for i, w in enumerate(weights)
    )
    return AllocationDecided(
        ts=ts,
        strategy=strategy,
        method="sharpe_psr",
        budgets=budgets,
        total=sum(weights),
        reason="test",
    )


def scale(factor: float, ts: int = T0) -> PlaybookAction:
    return PlaybookAction(
        ts=ts,
        action=ScaleBudgets(
            id=f"e{ts}:drawdown",
            rule="drawdown",
            cause_id=f"e{ts}",
            at=ts,
            factor=factor,
            drawdown=0.3,
            max_drawdown=0.2,
            reset_below=0.05,
            reason="test",
        ),
    )


def engine(sizing: SizingConfig | None = None, cash: float = 10_000.0) -> RiskEngine:
    """BTC at 100, ETH at 50, equity ``cash``."""
    e = RiskEngine(RiskLimits(), sizing=sizing)
    e.decide(bar(100.0), T0)
    e.decide(bar(50.0, symbol=ETH), T0)
    e.decide(equity(cash), T0)
    return e


def filled(e: RiskEngine, out: list[Event]) -> OrderCommand:
    order = order_of(out)
    e.decide(report(order, "filled", order.qty, 100.0 if order.symbol == BTC else 50.0), T0)
    return order


def test_no_budget_no_cap() -> None:
    e = engine()
    assert order_of(e.decide(sig(500.0), T0)).qty == 500.0  # 50,000 of exposure on 10,000
    e.decide(budget("other", 0.01), T0)  # another strategy's budget changes nothing for s1
    assert order_of(e.decide(sig(600.0), T0)).qty == 100.0


def test_a_budget_caps_the_strategys_exposure_across_markets() -> None:
    e = engine()
    e.decide(budget("s1", 0.15, 0.05), T0)  # the strategy's budget: the sum, 0.2 of equity
    filled(e, e.decide(sig(20.0, symbol=ETH), T0))  # 1,000 of ETH
    # 2,000 allowed, 1,000 used by ETH: BTC may hold 10 (1,000 at 100), not 50
    order = filled(e, e.decide(sig(50.0), T0))
    assert (order.side, order.qty) == ("buy", 10.0)
    no = rejection(e.decide(sig(11.0), T0), "budget")
    assert no.reason == (
        "s1 exposure 2100.00 (other markets 1000.00) would exceed its budget 0.2000 x "
        "equity 10000.00 = 2000.00"
    )
    assert order_of(e.decide(sig(4.0), T0)).side == "sell"  # a cut always passes
    assert order_of(e.decide(sig(5.0, strategy="s2"), T0)).qty == 5.0  # s2 has no budget


def test_without_equity_a_budget_refuses_entries_and_lets_exits_pass() -> None:
    e = RiskEngine(RiskLimits())
    e.decide(bar(100.0), T0)
    e.decide(budget("s1", 0.3), T0)
    no = rejection(e.decide(sig(1.0), T0), "budget")
    assert no.reason == "s1 has a budget of 0.3000 of equity but no equity snapshot yet"


def test_sizing_by_equity_scales_by_the_budget_and_fixed_sizing_does_not() -> None:
    pct = SizingConfig(
        mode="pct_equity",
        pct=10.0,
        strategies={
            "turtle": SizingRule(mode="turtle", risk_pct=1.0, atr_multiple=2.0),
            "fixed": SizingRule(mode="fixed_qty", qty=2.0),
        },
    )
    e = engine(pct)
    for strategy in ("s1", "turtle", "fixed"):
        e.decide(budget(strategy, 0.5), T0)
    # one unit = 10,000 x 10% / 100 = 10 BTC, times the budget 0.5
    assert order_of(e.decide(sig(1.0), T0)).qty == 5.0
    # one N-unit = 10,000 x 1% / (2.5 x 2) = 20 BTC, times 0.5
    assert order_of(e.decide(sig(1.0, strategy="turtle", atr=2.5), T0)).qty == 10.0
    assert order_of(e.decide(sig(3.0, strategy="fixed"), T0)).qty == 6.0  # 3 x 2, not scaled


def test_a_playbook_scale_multiplies_the_budget_without_compounding() -> None:
    e = engine(SizingConfig(mode="pct_equity", pct=10.0))
    e.decide(budget("s1", 0.5), T0)
    e.decide(scale(0.5), T0)
    first = filled(e, e.decide(sig(1.0), T0))
    assert first.qty == 2.5  # 10 BTC x budget 0.5 x scale 0.5
    assert e.decide(sig(1.0), T0) == []  # the same target again: no second scaling
    # the cap composes too: 0.5 x 0.5 x 10,000 = 2,500 = 25 BTC
    e2 = engine()
    e2.decide(budget("s1", 0.5), T0)
    e2.decide(scale(0.5), T0)
    assert order_of(e2.decide(sig(50.0), T0)).qty == 25.0  # the scale: 50 -> 25, all of it
    no = rejection(e2.decide(sig(60.0, symbol=ETH), T0), "budget")
    assert no.reason == (
        "s1 exposure 4000.00 (other markets 2500.00) would exceed its budget 0.5000 x "
        "playbook scale 0.5 x equity 10000.00 = 2500.00"
    )
    e2.decide(scale(1.0), T0)  # the scale lifted: the budget alone, 5,000, of which 2,500 left
    assert order_of(e2.decide(sig(80.0, symbol=ETH), T0)).qty == 50.0


def test_the_latest_decision_holds_and_an_empty_one_lifts_the_cap() -> None:
    e = engine()
    e.decide(budget("s1", 0.1, ts=T0 + 2), T0 + 2)
    e.decide(budget("s1", 0.9, ts=T0 + 1), T0 + 2)  # older, delivered late: ignored
    assert order_of(e.decide(sig(50.0), T0)).qty == 10.0
    restored = RiskEngine(RiskLimits())
    restored.restore(e.snapshot())
    assert restored.state.budgets["s1"].weight == 0.1
    assert RiskEngine.snapshot_version == 5
    e.decide(budget("s1", ts=T0 + 3), T0 + 3)
    assert order_of(e.decide(sig(50.0), T0)).qty == 40.0


# --- the risk worker on a real nats-server ---------------------------------------------------

QUIET = WorkerOptions(metrics_port=None, heartbeat_s=0.5)


async def test_the_risk_worker_reads_budgets_from_the_log(nats_server: EmbeddedServer) -> None:
    worker = Worker(risk_role(RiskLimits(), governed=True), QUIET)
    names = {f"risk-{i.stream.lower()}" for i in worker.inputs}
    assert ("gov.cmd.>", "gov.playbook.>", "gov.alloc.>") in [i.subjects for i in worker.inputs]
    worker_bus = await Bus.connect(nats_server.url, name="risk")
    task = asyncio.create_task(worker.run(worker_bus))
    bus = await Bus.connect(nats_server.url, name="test-driver")
    try:
        for i, event in enumerate(
            [bar(100.0), equity(10_000.0), budget("s1", 0.2), sig(50.0, ts=T0 + 1)]
        ):
            await bus.publish(event, Envelope.root(content_id("budget-test", i), event.ts))
            assert await wait_drained(bus, names, timeout=20)
        out = [i.event async for i in bus.read("ord.>", "ORDERS") if isinstance(i, Stored)]
        (order,) = [e for e in out if isinstance(e, OrderCommand)]
        assert (order.strategy, order.qty) == ("s1", 20.0)  # 0.2 x 10,000 / 100
        assert not [e for e in out if isinstance(e, RiskDecision)]
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        await worker_bus.close()
        await bus.close()
