"""The promotion desk, pure: hand-made shadow steps in which a planted better canary is
promoted with the gate's numbers in the events, equal variants hold, auto off only
recommends; promote and rollback commands; redelivery and snapshots change nothing."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.events import Event
from contracts.model_events import (
    ModelRoster,
    ModelVariant,
    PromotionDecided,
    ShadowResult,
    ShadowStep,
)
from contracts.system_events import DeadLetter, GovernanceCommand
from services.config import StrategyConfig
from services.governance.decider import GovernanceConfig, GovernanceDecider
from services.governance.promotion import PromotionConfig
from services.governance.promotion_desk import PromotionDesk, input_id
from services.governance.role import INPUTS, fleet_rosters
from services.strategy.variant_config import VariantConfig

T0 = 1_700_000_000 * 10**9
STEP = 600 * 10**9  # ten minutes between opportunities
ROSTER = (ModelVariant("v3", 0.9), ModelVariant("v4", 0.1, canary=True))
GATE = PromotionConfig(min_trades=30, min_live_hours=2.0)


def steps(canary_edge: float, n: int, seed: int = 3, strategy: str = "hmm") -> list[ShadowStep]:
    """Every opportunity is one closed trade per variant: a shared market part (sd 1%), each
    variant's own part (sd 0.5%), and the canary's ``canary_edge`` on top."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        market = rng.normal(0.0005, 0.01)
        current = float(market + rng.normal(0.0, 0.005))
        canary = float(market + rng.normal(canary_edge, 0.005))
        out.append(
            ShadowStep(
                ts=T0 + i * STEP,
                strategy=strategy,
                venue="sim",
                symbol="BTC/USDT",
                cause_id=f"bar:{i}",
                routed="v3",
                u=0.5,
                results=(
                    ShadowResult("v3", 0.0, current, trade_return=current),
                    ShadowResult("v4", 0.0, canary, trade_return=canary),
                ),
            )
        )
    return out


def feed(desk: PromotionDesk | GovernanceDecider, events: list[ShadowStep]) -> list[Event]:
    out: list[Event] = []
    for event in events:
        out.extend(desk.decide(event, event.ts))
    return out


def desk(auto: bool = True) -> PromotionDesk:
    config = PromotionConfig(min_trades=30, min_live_hours=2.0, auto=auto)
    return PromotionDesk(config, {"hmm": ROSTER})


def command(action: str, ts: int, model: str = "", reason: str = "drill") -> GovernanceCommand:
    return GovernanceCommand(
        ts=ts,
        action=action,  # type: ignore[arg-type]
        reason=reason,
        issued_by="ops",
        strategy="hmm",
        **({"model": model} if model else {}),  # type: ignore[arg-type]
    )


def test_a_planted_better_canary_is_promoted_with_the_numbers_in_the_events() -> None:
    promotions = desk()
    out = feed(promotions, steps(0.005, 200))
    decided = [e for e in out if isinstance(e, PromotionDecided)]
    (roster,) = [e for e in out if isinstance(e, ModelRoster)]
    last = decided[-1]
    assert [d.evaluation.decision for d in decided[:-1]] == ["hold"] * (len(decided) - 1)
    assert last.evaluation.decision == "promote" and last.auto
    assert (last.strategy, last.current, last.canary) == ("hmm", "v3", "v4")
    n = len(decided)  # one evaluation per closed canary trade, each trade a step here
    ev = last.evaluation
    assert ev.canary.n == ev.current.n == ev.n_pairs == n >= GATE.min_trades
    assert ev.hours_live == pytest.approx((n - 1) * STEP / 3.6e12)
    assert ev.trials == 1 and ev.sharpe_threshold == 0.0
    assert ev.sequential.crossed and ev.sequential.log_ratio >= ev.sequential.log_threshold
    assert ev.canary.sharpe > ev.current.sharpe
    assert all(c.passed for c in ev.conditions)
    assert ev.reason.startswith("promote: every condition holds")
    # the canary takes the current model's weight; the old current stays, weight 0
    assert roster.variants == (ModelVariant("v3", 0.0, canary=True), ModelVariant("v4", 0.9))
    assert roster.cause_id == input_id("shadow", steps(0.005, 200)[n - 1])
    assert roster.reason == ev.reason and roster.ts == last.ts
    # the arms restarted and the demoted model is retired: not evaluated again
    after = feed(promotions, _later(steps(0.005, 60, seed=5)))
    assert not [e for e in after if isinstance(e, PromotionDecided)]


def _later(events: list[ShadowStep]) -> list[ShadowStep]:
    return [
        ShadowStep(
            ts=e.ts + 10**6 * STEP,
            strategy=e.strategy,
            venue=e.venue,
            symbol=e.symbol,
            cause_id=e.cause_id + ":later",
            routed=e.routed,
            u=e.u,
            results=e.results,
        )
        for e in events
    ]


def test_equal_variants_hold() -> None:
    out = feed(desk(), steps(0.0, 300, seed=11))
    decisions = {e.evaluation.decision for e in out if isinstance(e, PromotionDecided)}
    assert decisions == {"hold"}
    assert not [e for e in out if isinstance(e, ModelRoster)]


def test_with_auto_off_governance_only_recommends() -> None:
    out = feed(desk(auto=False), steps(0.005, 200))
    decided = [e for e in out if isinstance(e, PromotionDecided)]
    assert "recommend" in {d.evaluation.decision for d in decided}
    assert all(not d.auto for d in decided)
    assert "auto-promotion off" in next(
        d.evaluation.reason for d in decided if d.evaluation.decision == "recommend"
    )
    assert not [e for e in out if isinstance(e, ModelRoster)]


def test_steps_where_both_variants_are_flat_add_no_difference() -> None:
    promotions = desk()
    flat = ShadowStep(
        ts=T0,
        strategy="hmm",
        venue="sim",
        symbol="BTC/USDT",
        cause_id="bar:flat",
        routed="v3",
        u=0.5,
        results=(ShadowResult("v3", 0.0, 0.0), ShadowResult("v4", 0.0, 0.0)),
    )
    one_in = ShadowStep(
        ts=T0 + STEP,
        strategy="hmm",
        venue="sim",
        symbol="BTC/USDT",
        cause_id="bar:in",
        routed="v3",
        u=0.5,
        results=(ShadowResult("v3", 0.0, 0.0), ShadowResult("v4", 1.0, 0.002)),
    )
    assert promotions.decide(flat, flat.ts) == promotions.decide(one_in, one_in.ts) == []
    (arm,) = promotions.state.slots[0].canaries
    assert arm.differences == [0.002] and arm.first_step == T0
    other = ShadowStep(
        ts=T0,
        strategy="plain",
        venue="sim",
        symbol="BTC/USDT",
        cause_id="bar:x",
        routed="a",
        u=0.5,
        results=(ShadowResult("a", 1.0, 0.01, 0.01),),
    )
    assert promotions.decide(other, other.ts) == []  # no variants configured: not evaluated


def test_promote_and_rollback_commands_answer_with_the_roster() -> None:
    promotions = desk()
    promote = command("promote", T0, model="v4", reason="canary beat v3 by hand")
    (roster,) = promotions.decide(promote, T0)
    assert isinstance(roster, ModelRoster)
    assert roster.variants == (ModelVariant("v3", 0.0, canary=True), ModelVariant("v4", 0.9))
    assert roster.cause_id == input_id("promote", promote)
    assert roster.reason == "promote v4 over v3 by ops: canary beat v3 by hand"
    assert promotions.decide(promote, T0) == []  # redelivered: nothing again

    back = command("rollback", T0 + 1, reason="drawdown after promotion")
    (restored,) = promotions.decide(back, T0 + 1)
    assert isinstance(restored, ModelRoster)
    assert restored.variants == (ModelVariant("v3", 0.9), ModelVariant("v4", 0.0, canary=True))
    assert restored.reason == "rollback to v3 from v4 by ops: drawdown after promotion"
    assert restored.cause_id == input_id("rollback", back)

    refusals = [
        (command("rollback", T0 + 2), "rollback: hmm has no promotion to roll back"),
        (command("promote", T0 + 3, model="v9"), "promote: hmm has no model 'v9' (models: v3, v4)"),
        (command("promote", T0 + 4, model="v3"), "promote: v3 is already hmm's current model"),
    ]
    for cmd, reason in refusals:
        (letter,) = promotions.decide(cmd, cmd.ts)
        assert isinstance(letter, DeadLetter)
        assert letter.reason == f"promotion desk: {reason}"
        assert letter.subject == f"gov.cmd.{cmd.action}" and letter.worker == "governance"
    stranger = GovernanceCommand(
        ts=T0 + 5, action="promote", issued_by="ops", strategy="nope", model="v4"
    )
    (letter,) = promotions.decide(stranger, stranger.ts)
    assert isinstance(letter, DeadLetter)
    assert (
        letter.reason
        == "promotion desk: promote: strategy 'nope' has no variants (with variants: hmm)"
    )


def test_a_manually_promoted_model_is_evaluated_again_after_a_rollback() -> None:
    promotions = desk()
    promotions.decide(command("promote", T0, model="v4"), T0)
    assert [a.tag for a in promotions.state.slots[0].canaries] == []  # v3 retired
    promotions.decide(command("rollback", T0 + 1), T0 + 1)
    slot = promotions.state.slots[0]
    assert [a.tag for a in slot.canaries] == []  # v4 retired now: it was rolled back
    assert slot.retired == ["v4"] and slot.rollback == []
    promotions.decide(command("promote", T0 + 2, model="v4"), T0 + 2)
    assert promotions.state.slots[0].retired == ["v3"]


def test_redelivered_steps_change_nothing_and_a_snapshot_continues_exactly() -> None:
    config = GovernanceConfig(promotion=GATE)
    decider = GovernanceDecider(config, {"hmm": ROSTER})
    events = steps(0.005, 200)
    first = feed(decider, events[:20])
    snapshot = decider.snapshot()
    assert feed(decider, events[:20]) == []  # every one of them again
    assert feed(decider, events[10:15]) == []
    assert decider.snapshot() == snapshot

    copy = GovernanceDecider(config, {"hmm": ROSTER})
    copy.restore(snapshot)
    assert copy.snapshot() == snapshot
    continued = feed(copy, events[20:])
    assert continued == feed(decider, events[20:])
    assert any(isinstance(e, ModelRoster) for e in continued)  # the promotion came after
    whole = GovernanceDecider(config, {"hmm": ROSTER})
    assert feed(whole, events) == first + continued

    grown = (*ROSTER, ModelVariant("v5", 0.05, canary=True))
    renamed = PromotionDesk(GATE, {"hmm": grown, "other": ROSTER})
    renamed.restore(copy.promotion.snapshot())  # the config gained v5 and an instance
    assert [(s.strategy, s.roster, s.current) for s in renamed.state.slots] == [
        ("hmm", grown, []),
        ("other", ROSTER, []),
    ]


def test_the_role_reads_shadow_steps_and_roster_commands_and_rosters_come_from_the_config() -> None:
    (governance,) = [i for i in INPUTS if i.stream == "GOVERNANCE"]
    assert set(governance.subjects) == {
        "gov.cmd.enable",
        "gov.cmd.promote",
        "gov.cmd.rollback",
        "gov.shadow.>",
    }
    strategies = (
        StrategyConfig(
            name="ma_cross",
            instance="ma",
            variants=(
                VariantConfig("fast", 0.8),
                VariantConfig("slow", 0.2, canary=True, params={"slow": 30}),
            ),
        ),
        StrategyConfig(name="ma_cross", instance="plain"),
    )
    assert fleet_rosters(strategies) == {
        "ma": (ModelVariant("fast", 0.8), ModelVariant("slow", 0.2, canary=True)),
        "plain": (),
    }
