"""The governance role and risk's enforcement: the pure parts (no compounding of scales,
exits always pass, snapshots), then the live workers on a real nats-server fed the inputs a
backtest gave its governance role: the same playbook actions, and the enable command."""

from __future__ import annotations

import asyncio
from pathlib import Path

from contracts.envelope import Envelope, content_id
from contracts.events import EquitySnapshot, Event, OrderCommand, RiskDecision, Signal
from contracts.governance_events import (
    GOVERNANCE_RULE,
    DisableStrategy,
    EnableStrategy,
    HaltEntries,
    PlaybookAction,
    ScaleBudgets,
)
from contracts.model_events import ModelRoster, ModelVariant, PromotionDecided, ShadowStep
from contracts.system_events import DeadLetter, GovernanceCommand
from eventstore.bus import Bus, Stored
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer
from services.config import StrategyConfig
from services.governance.decider import GovernanceConfig, GovernanceDecider
from services.governance.promotion_desk import PromotionDesk, input_id
from services.governance.role import governance_role
from services.risk.engine import RiskEngine
from services.risk.limits import RiskLimits
from services.risk.role import risk_role
from services.runtime.worker import Worker, WorkerOptions
from services.strategy.variant_config import VariantConfig
from tests.conftest import keel
from tests.factories import report
from tests.test_gov_backtest import (
    CONFIG,
    MIDNIGHT,
    PROMOTION,
    backtest,
    config_of,
    gov_digest,
    governed_run,
)
from tests.test_gov_promotion_desk import GATE, ROSTER, feed, steps

QUIET = WorkerOptions(metrics_port=None, heartbeat_s=0.5)
VENUE, BTC = "test", "BTC/USDT"


def scale(factor: float, rule: str = "drawdown", at: int = 1) -> PlaybookAction:
    return PlaybookAction(
        ts=at,
        action=ScaleBudgets(
            id=f"e{at}:{rule}",
            rule=rule,
            cause_id=f"e{at}",
            at=at,
            factor=factor,
            drawdown=0.3,
            max_drawdown=0.2,
            reset_below=0.05,
            reason="test",
        ),
    )


def disable(strategy: str, at: int = 1) -> PlaybookAction:
    return PlaybookAction(
        ts=at,
        action=DisableStrategy(
            id=f"r{at}:rejections",
            rule="rejections",
            cause_id=f"r{at}",
            at=at,
            strategy=strategy,
            rejections=2,
            max_rejections=1,
            window_ns=60 * 10**9,
            reason="test",
        ),
    )


def halt(until: int, at: int = 1) -> PlaybookAction:
    return PlaybookAction(
        ts=at,
        action=HaltEntries(
            id=f"d{at}:daily_loss",
            rule="daily_loss",
            cause_id=f"d{at}",
            at=at,
            pnl=-200.0,
            max_loss=100.0,
            day="2023-11-14",
            timezone="UTC",
            until=until,
            reason="test",
        ),
    )


def signal(strategy: str, target: float, ts: int) -> Signal:
    return Signal(ts=ts, strategy=strategy, venue=VENUE, symbol=BTC, target_position=target)


def orders(out: list[Event]) -> list[OrderCommand]:
    return [e for e in out if isinstance(e, OrderCommand)]


def refused(out: list[Event]) -> list[RiskDecision]:
    return [e for e in out if isinstance(e, RiskDecision) and e.rule == GOVERNANCE_RULE]


def fill(engine: RiskEngine, out: list[Event]) -> None:
    (order,) = orders(out)
    engine.decide(report(order, "filled", order.qty, 10.0), order.ts + 1)


# --- risk's enforcement, pure --------------------------------------------------------------


def test_repeated_scales_do_not_compound_and_one_lifts_them() -> None:
    engine = RiskEngine(RiskLimits(max_position=100))
    engine.decide(scale(0.5, at=1), 1)
    engine.decide(scale(0.5, at=2), 2)  # the same rule again: still 0.5, not 0.25
    assert orders(engine.decide(signal("s", 10.0, 3), 3))[0].qty == 5.0
    engine.decide(scale(0.25, rule="deep", at=4), 4)  # a deeper rule: the smallest wins
    engine.decide(scale(1.0, at=5), 5)
    assert engine.snapshot_version == 5
    restored = RiskEngine(RiskLimits(max_position=100))
    restored.restore(engine.snapshot())
    assert restored.state.playbooks.factors == {"deep": 0.25}
    restored.decide(scale(1.0, rule="deep", at=6), 6)
    out = restored.decide(signal("t", 8.0, 7), 7)
    assert orders(out)[0].qty == 8.0  # every scale lifted


def test_a_halt_refuses_entries_until_its_end_and_lets_exits_pass() -> None:
    engine = RiskEngine(RiskLimits(max_position=100))
    fill(engine, engine.decide(signal("s", 4.0, 1), 1))
    engine.decide(halt(until=100, at=2), 2)
    (no,) = refused(engine.decide(signal("s", 6.0, 3), 3))
    assert no.reason.startswith("playbook daily_loss: entries halted until")
    assert [o.side for o in orders(engine.decide(signal("s", 1.0, 4), 4))] == ["sell"]
    assert orders(engine.decide(signal("t", 2.0, 100), 100))  # the halt is over


def test_a_disabled_strategy_can_exit_and_trades_again_once_enabled() -> None:
    engine = RiskEngine(RiskLimits(max_position=100))
    fill(engine, engine.decide(signal("s", 4.0, 1), 1))
    engine.decide(disable("s", at=2), 2)
    (no,) = refused(engine.decide(signal("s", 6.0, 3), 3))
    assert no.reason == "playbook rejections: s is disabled until `keel gov enable s`"
    assert orders(engine.decide(signal("other", 1.0, 4), 4))  # only s is disabled
    assert [o.side for o in orders(engine.decide(signal("s", 0.0, 5), 5))] == ["sell"]
    enable = EnableStrategy(
        id="c:rejections",
        rule="rejections",
        cause_id="c",
        at=6,
        strategy="s",
        by="ops",
        reason="ok",
    )
    engine.decide(PlaybookAction(ts=6, action=enable), 6)
    engine.decide(GovernanceCommand(ts=6, action="enable", strategy="s", issued_by="ops"), 6)
    assert not engine.state.killed  # an enable is not a resume of a kill
    assert orders(engine.decide(signal("s", 6.0, 7), 7))


# --- the decider, pure ---------------------------------------------------------------------


def test_the_decider_ignores_a_redelivered_input_and_restores_from_its_snapshot() -> None:
    config = config_of(CONFIG).governance
    assert config is not None
    decider = GovernanceDecider(config)
    start = EquitySnapshot(
        ts=MIDNIGHT - 60 * 10**9,
        cash=1000.0,
        equity=1000.0,
        realized_pnl=0.0,
        unrealized_pnl=0.0,
        fees=0.0,
        gross_exposure=0.0,
    )
    crash = EquitySnapshot(
        ts=MIDNIGHT - 30 * 10**9,
        cash=1000.0,
        equity=700.0,
        realized_pnl=0.0,
        unrealized_pnl=-300.0,
        fees=0.0,
        gross_exposure=0.0,
    )
    assert decider.decide(start, start.ts) == []
    out = decider.decide(crash, crash.ts)
    assert [type(e.action) for e in out if isinstance(e, PlaybookAction)] == [
        ScaleBudgets,
        HaltEntries,
    ]
    assert decider.decide(crash, crash.ts) == []  # the same fact again: no second action
    copy = GovernanceDecider(config)
    copy.restore(decider.snapshot())
    assert copy.playbooks.state == decider.playbooks.state
    assert copy.snapshot() == decider.snapshot()
    assert copy.decide(crash, crash.ts) == []
    approved = RiskDecision(ts=1, approved=True, strategy="s", venue=VENUE, symbol=BTC)
    assert decider.decide(approved, 1) == []


# --- live workers on a real nats-server ------------------------------------------------------


async def stored(bus: Bus, subject: str, stream: str) -> list[Event]:
    return [i.event async for i in bus.read(subject, stream) if isinstance(i, Stored)]


async def test_live_governance_gives_the_backtests_actions_and_risk_enforces_them(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    _, events = backtest(tmp_path, CONFIG, "run")
    inputs = [
        e
        for e in events
        if isinstance(e, EquitySnapshot) or (isinstance(e, RiskDecision) and not e.approved)
    ]
    expected = [e for e in events if isinstance(e, PlaybookAction)]
    config = config_of(CONFIG)
    assert config.governance is not None
    workers = [
        Worker(governance_role(config.governance), QUIET),
        Worker(risk_role(RiskLimits(max_position=100), governed=True), QUIET),
    ]
    names = {f"{w.name}-{i.stream.lower()}" for w in workers for i in w.inputs}
    buses = [await Bus.connect(nats_server.url, name=w.name) for w in workers]
    tasks = [asyncio.create_task(w.run(b)) for w, b in zip(workers, buses, strict=True)]
    bus = await Bus.connect(nats_server.url, name="test-driver")

    async def publish(event: Event, *parts: str | int) -> None:
        await bus.publish(event, Envelope.root(content_id("test", *parts), event.ts))
        assert await wait_drained(bus, names, timeout=20)

    try:
        for i, event in enumerate(inputs):
            await bus.publish(event, Envelope.root(content_id("input", i), event.ts))
        assert await wait_drained(bus, names, timeout=20)
        live = await stored(bus, "gov.playbook.>", "GOVERNANCE")
        key = lambda e: e.action.id  # noqa: E731 - two streams: their interleaving may differ
        assert sorted(live, key=key) == sorted(expected, key=key)
        assert len(live) == 3

        later = MIDNIGHT + 3_600 * 10**9
        await publish(signal("big", 10.0, later), "sig", 1)
        await publish(
            GovernanceCommand(
                ts=later + 1, action="enable", reason="drill", issued_by="ops", strategy="big"
            ),
            "enable",
        )
        (enabled,) = [
            e.action
            for e in await stored(bus, "gov.playbook.>", "GOVERNANCE")
            if isinstance(e.action, EnableStrategy)
        ]
        assert (enabled.strategy, enabled.by, enabled.rule) == ("big", "ops", "rejections")
        await publish(signal("big", 10.0, later + 2), "sig", 2)

        decisions = await stored(bus, "ord.>", "ORDERS")
        mine = [e for e in decisions if e.ts >= later]
        (no,) = [e for e in mine if isinstance(e, RiskDecision)]
        assert no.rule == GOVERNANCE_RULE and "big is disabled" in no.reason
        (order,) = [e for e in mine if isinstance(e, OrderCommand)]
        assert (order.strategy, order.qty) == ("big", 5.0)  # the drawdown scale 0.5 holds
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        for b in [*buses, bus]:
            await b.close()


async def test_keel_gov_enable_publishes_who_enabled_what(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    done = keel(
        nats_server.url, "gov", "enable", "big", "--reason", "limits checked", "--by", "ops"
    )
    assert done.returncode == 0, done.stderr
    assert "enable big published" in done.stdout
    (command,) = await stored(bus, "gov.cmd.enable", "GOVERNANCE")
    assert isinstance(command, GovernanceCommand)
    assert (command.action, command.strategy, command.issued_by, command.reason) == (
        "enable",
        "big",
        "ops",
        "limits checked",
    )
    bad = keel(nats_server.url, "gov", "enable", "no such", "--reason", "x")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "must match [A-Za-z0-9_-]+" in bad.stderr


# --- promotions on the bus -------------------------------------------------------------------


async def test_live_governance_promotes_from_shadow_steps_and_answers_roster_commands(
    nats_server: EmbeddedServer,
) -> None:
    """ShadowSteps published on the bus give the pure desk's PromotionDecided and ModelRoster
    events; `keel gov promote`/`rollback` are answered with rosters, refusals are one line."""
    config = GovernanceConfig(promotion=GATE)
    strategies = (
        StrategyConfig(
            name="ma_cross",
            instance="hmm",
            variants=(VariantConfig("v3", 0.9), VariantConfig("v4", 0.1, canary=True)),
        ),
    )
    shadow = steps(0.005, 40)
    expected = feed(PromotionDesk(GATE, {"hmm": ROSTER}), shadow)
    worker = Worker(governance_role(config, strategies), QUIET)
    names = {f"{worker.name}-{i.stream.lower()}" for i in worker.inputs}
    worker_bus = await Bus.connect(nats_server.url, name=worker.name)
    task = asyncio.create_task(worker.run(worker_bus))
    bus = await Bus.connect(nats_server.url, name="test-driver")
    try:
        for i, step in enumerate(shadow):
            await bus.publish(step, Envelope.root(content_id("shadow", i), step.ts))
        assert await wait_drained(bus, names, timeout=20)
        decided = await stored(bus, "gov.promotion.hmm", "GOVERNANCE")
        rosters = await stored(bus, "gov.model.hmm", "GOVERNANCE")
        assert decided == [e for e in expected if isinstance(e, PromotionDecided)]
        assert rosters == [e for e in expected if isinstance(e, ModelRoster)]
        (promoted,) = rosters
        assert isinstance(promoted, ModelRoster)
        assert promoted.variants == (
            ModelVariant("v3", 0.0, canary=True),
            ModelVariant("v4", 0.9),
        )

        back = keel(nats_server.url, "gov", "rollback", "hmm", "--reason", "drill", "--by", "ops")
        assert back.returncode == 0, back.stderr
        assert "rollback hmm published" in back.stdout
        assert await wait_drained(bus, names, timeout=20)
        latest = await bus.last_event("GOVERNANCE", "gov.model.hmm")
        assert latest is not None and isinstance(latest.event, ModelRoster)
        assert latest.event.variants == (ModelVariant("v3", 0.9), ModelVariant("v4", 0.0, True))
        assert latest.event.reason == "rollback to v3 from v4 by ops: drill"
        (command,) = await stored(bus, "gov.cmd.rollback", "GOVERNANCE")
        assert isinstance(command, GovernanceCommand)
        assert latest.event.cause_id == input_id("rollback", command)

        again = keel(nats_server.url, "gov", "rollback", "hmm", "--reason", "twice")
        assert again.returncode == 0, again.stderr
        assert await wait_drained(bus, names, timeout=20)
        letter = await bus.last_event("SYSTEM", "sys.dlq.governance")
        assert letter is not None and isinstance(letter.event, DeadLetter)
        assert letter.event.reason == "promotion desk: rollback: hmm has no promotion to roll back"

        unknown_model = keel(nats_server.url, "gov", "promote", "hmm", "v9", "--reason", "x")
        assert unknown_model.returncode == 1
        assert unknown_model.stderr.strip() == "error: unknown model v9 of hmm (models: v3, v4)"
        unknown = keel(nats_server.url, "gov", "promote", "nope", "v4", "--reason", "x")
        assert unknown.returncode == 1 and unknown.stderr.strip().count("\n") == 0
        assert unknown.stderr.startswith("error: unknown strategy nope")
        assert len(await stored(bus, "gov.cmd.>", "GOVERNANCE")) == 2  # refused: not sent
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        for b in (worker_bus, bus):
            await b.close()


async def test_live_governance_gives_the_backtests_promotion_events(
    nats_server: EmbeddedServer,
) -> None:
    """The backtest's ShadowSteps published on the bus: the governance worker publishes the
    same PromotionDecided and ModelRoster events, byte for byte (the same digest)."""
    run = governed_run(PROMOTION)
    shadow = [e for _, e in run if isinstance(e, ShadowStep)]
    config = config_of(PROMOTION)
    assert config.governance is not None
    worker = Worker(governance_role(config.governance, config.strategies), QUIET)
    names = {f"{worker.name}-{i.stream.lower()}" for i in worker.inputs}
    worker_bus = await Bus.connect(nats_server.url, name=worker.name)
    task = asyncio.create_task(worker.run(worker_bus))
    bus = await Bus.connect(nats_server.url, name="test-driver")
    try:
        for i, step in enumerate(shadow):
            await bus.publish(step, Envelope.root(content_id("shadow", i), step.ts))
        assert await wait_drained(bus, names, timeout=30)
        live = [
            (item.subject, item.event)
            async for item in bus.read("gov.>", "GOVERNANCE")
            if isinstance(item, Stored) and not item.subject.startswith("gov.shadow.")
        ]
        assert [e for _, e in live if isinstance(e, ModelRoster)]
        assert gov_digest(live) == gov_digest(run)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        for b in (worker_bus, bus):
            await b.close()
