"""The playbooks end to end in a backtest: a hand-made market in which each rule fires, the
governance events carry their numbers, risk enforces them, and the run is deterministic.

The market (SMA 2/3, long only, 1,000 cash): ``ma`` buys 50 at 12, the price gaps to 7 (a
loss of 250: the drawdown rule scales budgets by 0.5 and the daily loss rule halts entries
until midnight UTC); ``big`` asks for 500, over ``max_position``, and is rejected each time it
tries, which after midnight disables it. Refusals caused by the playbooks are not counted.

Then promotion: a noisy sine on which a fast canary beats the slow current model; the gate
promotes it with its numbers, the strategy routes by the new roster, and a second run gives
the same gov.* events.
"""

from __future__ import annotations

import hashlib
import math
import random
import tomllib
from pathlib import Path

import msgspec
import polars as pl
import pytest

from contracts.codec import decode, encode
from contracts.events import Event, OrderCommand, RiskDecision, Signal
from contracts.governance_events import (
    GOVERNANCE_RULE,
    DisableStrategy,
    HaltEntries,
    PlaybookAction,
    ScaleBudgets,
)
from contracts.model_events import (
    AllocationDecided,
    ModelRoster,
    ModelVariant,
    PromotionDecided,
    ShadowStep,
)
from eventstore.errors import KeelError
from eventstore.server import EmbeddedServer
from replay.backtest import BacktestResult, BacktestSpec, load_run, run_backtest
from replay.bus_replay import bus_replay
from replay.engine import ReplayEngine
from replay.market import DataSource
from services.config import KeelConfig, load_config
from services.fleet import fleet_plan, fleet_roles
from tests.factories import MINUTE, bars_from_closes, write_bar_file

MIDNIGHT = 1_700_006_400 * 10**9  # 2023-11-15T00:00:00Z
START = MIDNIGHT - 12 * MINUTE
CLOSES = [12, 11, 10, 11, 12, 13, 14, 7, 6, 7, 8, 9, 8, 7, 6, 7, 8, 9, 8, 7, 6, 7, 8]
BASE = """
[[strategies]]
name = "ma_cross"
instance = "ma"
params = { kind = "sma", fast = 2, slow = 3, mode = "long_only", qty = 50 }

[[strategies]]
name = "ma_cross"
instance = "big"
params = { kind = "sma", fast = 2, slow = 3, mode = "long_only", qty = 500 }

[risk]
max_position = 100

[execution]
fill = "next_open"
fee_bps = 10
slippage_bps = 0

[portfolio]
starting_cash = 1000
"""
GOVERNANCE = """
[governance.playbooks]
[[governance.playbooks.drawdown]]
max_drawdown = 0.2
reset_below = 0.05
scale = 0.5
cooldown = "5m"

[[governance.playbooks.rejections]]
max_rejections = 1
window = "1h"

[[governance.playbooks.daily_loss]]
max_loss = 100
timezone = "UTC"
"""
CONFIG = BASE + GOVERNANCE


def config_of(text: str) -> KeelConfig:
    return msgspec.convert(tomllib.loads(text), KeelConfig)


def backtest(tmp_path: Path, text: str, name: str) -> tuple[BacktestResult, list[Event]]:
    bars = bars_from_closes(CLOSES, wick=0.5, start=START, symbol="BTC/USDT", venue="test")
    data = write_bar_file(tmp_path / "bars.parquet", bars)
    source = DataSource(location=str(data), symbol="BTC/USDT", venue="test")
    out = tmp_path / name
    result = run_backtest(BacktestSpec(config=config_of(text), data=(source,)), out)
    payloads = pl.read_parquet(out / "events.parquet")["payload"].to_list()
    return result, [decode(p.encode()) for p in payloads]


def actions(events: list[Event]) -> list:
    return [e.action for e in events if isinstance(e, PlaybookAction)]


def test_every_playbook_fires_with_its_numbers_and_risk_enforces_it(tmp_path: Path) -> None:
    _, events = backtest(tmp_path, CONFIG, "run")
    scale, halt, disable = actions(events)

    assert isinstance(scale, ScaleBudgets) and scale.rule == "drawdown"
    assert scale.factor == 0.5 and scale.max_drawdown == 0.2
    assert scale.drawdown == pytest.approx((1099.4 - 749.4) / 1099.4)  # peak at 14, close 7
    assert "equity 749.4, peak 1099.4" in scale.reason

    assert isinstance(halt, HaltEntries) and halt.rule == "daily_loss"
    assert halt.pnl == pytest.approx(-250.6) and halt.max_loss == 100.0
    assert (halt.day, halt.timezone, halt.until) == ("2023-11-14", "UTC", MIDNIGHT)

    assert isinstance(disable, DisableStrategy) and disable.rule == "rejections"
    assert (disable.strategy, disable.rejections, disable.max_rejections) == ("big", 2, 1)
    assert disable.at > MIDNIGHT  # the halt's own refusals of big were not counted
    assert "max_position" in disable.reason

    refused = [e for e in events if isinstance(e, RiskDecision) and e.rule == GOVERNANCE_RULE]
    halted = [r for r in refused if r.ts < MIDNIGHT]
    assert {r.strategy for r in halted} == {"ma", "big"}
    assert all(r.reason.startswith("playbook daily_loss: entries halted until") for r in halted)
    assert all("2023-11-15T00:00:00+00:00" in r.reason for r in halted)
    after = [r for r in refused if r.ts > MIDNIGHT]
    assert after and all(r.strategy == "big" for r in after)
    assert all(r.reason.startswith("playbook rejections: big is disabled") for r in after)

    buys = [(e.ts, e.qty) for e in events if isinstance(e, OrderCommand) and e.side == "buy"]
    assert buys[0][1] == 50.0 and buys[0][0] < halt.at  # before the drawdown: full size
    assert [q for t, q in buys if t > MIDNIGHT] == [25.0, 25.0]  # scaled by 0.5, once


def test_a_backtest_twice_gives_the_same_hash_and_governance_events(tmp_path: Path) -> None:
    first, a = backtest(tmp_path, CONFIG, "one")
    second, b = backtest(tmp_path, CONFIG, "two")
    assert first.result_hash == second.result_hash
    assert [e for e in a if isinstance(e, PlaybookAction)] == [
        e for e in b if isinstance(e, PlaybookAction)
    ]
    assert len(actions(a)) == 3


def test_without_governance_the_fleet_and_its_results_are_unchanged(tmp_path: Path) -> None:
    plain = config_of(BASE)
    governed = config_of(CONFIG)
    assert plain.governance is None
    assert [r.name for r in fleet_roles(plain)] == [
        "strategy-ma",
        "strategy-big",
        "risk",
        "execution",
        "portfolio",
    ]
    risk = next(r for r in fleet_roles(plain) if r.name == "risk")
    assert ("gov.cmd.>",) in [i.subjects for i in risk.inputs]
    assert "governance" not in [w.name for w in fleet_plan(plain, None)]
    assert [r.name for r in fleet_roles(governed)][-1] == "governance"
    assert "governance" in [w.name for w in fleet_plan(governed, None)]
    governed_risk = next(r for r in fleet_roles(governed) if r.name == "risk")
    subjects = [i.subjects for i in governed_risk.inputs]
    assert ("gov.cmd.>", "gov.playbook.>", "gov.alloc.>") in subjects

    # a governance role with no playbooks decides nothing: the same events (the result hash
    # differs only as the fleet has one producer more, whose digest is empty)
    _, events = backtest(tmp_path, BASE, "plain")
    _, same = backtest(tmp_path, BASE + "\n[governance]\n", "empty")
    assert events == same
    assert not [e for e in events if isinstance(e, PlaybookAction)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[[governance.playbooks.drawdown]]\nmax_drawdown = 0.1\nbogus = 1\n", "bogus"),
        (
            "[[governance.playbooks.drawdown]]\nmax_drawdown = 0.1\nreset_below = 0.2\n",
            "reset_below (0.2) must be below max_drawdown (0.1)",
        ),
        ("[[governance.playbooks.daily_loss]]\nmax_loss = -5\n", "governance.playbooks"),
        (
            "[[governance.playbooks.daily_loss]]\nmax_loss = 5\ntimezone = 'Mars/Base'\n",
            "'Mars/Base' is not an IANA time zone",
        ),
        ("[[governance.playbooks.rejections]]\nwindow = 'soon'\n", "governance.playbooks"),
    ],
)
def test_a_bad_governance_section_is_one_clear_line(
    tmp_path: Path, extra: str, message: str
) -> None:
    path = tmp_path / "keel.toml"
    path.write_text(BASE + "[governance.playbooks]\n" + extra)
    with pytest.raises(KeelError) as refused:
        load_config(path)
    text = str(refused.value)
    assert message in text and "\n" not in text


def test_a_bus_replay_through_the_worker_processes_gives_the_same_run(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    in_process, events = backtest(tmp_path, CONFIG, "run")
    work = tmp_path / "bus"
    work.mkdir()
    on_bus = bus_replay(load_run(tmp_path / "run"), nats_server.url, work)
    assert on_bus.result_hash == in_process.result_hash  # the governance producer's included
    assert (on_bus.orders, on_bus.rejections) == (in_process.orders, in_process.rejections)
    assert len(actions(events)) == 3


# --- promotion in a backtest -----------------------------------------------------------------

PROMOTION = """
[[strategies]]
name = "ma_cross"
instance = "ma"
params = { kind = "sma", fast = 10, slow = 25, mode = "long_short", qty = 1 }
variants = [
  { tag = "cur" },
  { tag = "can", canary = true, weight = 0.1, params = { fast = 2, slow = 5 } },
]

[execution]
fee_bps = 1
slippage_bps = 0

[governance.promotion]
min_trades = 10
min_live_hours = 1
"""


def cycles(n: int = 600, seed: int = 1) -> list[Event]:
    """A noisy sine (period 40 bars, amplitude 5, noise sd 0.3): the slow current model
    trades late on every swing, the fast canary catches them."""
    rng = random.Random(seed)
    closes = [100 + 5 * math.sin(2 * math.pi * i / 40) + rng.gauss(0, 0.3) for i in range(n)]
    return list(bars_from_closes(closes, wick=0.5, start=START, symbol="BTC/USDT", venue="test"))


def governed_run(text: str) -> list[tuple[str, Event]]:
    """The fleet's roles in the replay engine (governance takes the configured variants as
    its first rosters, as ``keel run governance`` does), every output with its subject."""
    config = config_of(text)
    assert config.governance is not None
    out: list[tuple[str, Event]] = []
    engine = ReplayEngine(
        fleet_roles(config), lambda subject, event, _envelope, _name: out.append((subject, event))
    )
    for bar in cycles():
        engine.feed(bar)
    return out


def gov_digest(run: list[tuple[str, Event]]) -> str:
    digest = hashlib.sha256()
    for subject, event in run:
        if subject.startswith("gov.") and not subject.startswith("gov.shadow."):
            digest.update(subject.encode() + b"\0" + encode(event) + b"\n")
    return digest.hexdigest()


def test_a_backtest_with_a_canary_promotes_it_with_the_numbers_and_replays_identically() -> None:
    run = governed_run(PROMOTION)
    events = [e for _, e in run]
    decided = [e for e in events if isinstance(e, PromotionDecided)]
    (roster,) = [e for e in events if isinstance(e, ModelRoster)]
    *held, promoted = decided
    assert held and all(d.evaluation.decision == "hold" for d in held)
    assert (promoted.current, promoted.canary, promoted.auto) == ("cur", "can", True)
    ev = promoted.evaluation
    assert ev.decision == "promote" and all(c.passed for c in ev.conditions)
    assert ev.canary.n == 10 == len(decided)  # one evaluation per closed canary trade
    assert ev.current.n > 0 and ev.n_pairs > ev.canary.n  # steps, not only trades, are paired
    assert ev.canary.sharpe > ev.current.sharpe and ev.sequential.mean > 0
    assert ev.sequential.log_ratio >= ev.sequential.log_threshold == pytest.approx(math.log(20))
    assert ev.hours_live >= 1.0 and ev.trials == 1
    assert "canary trades 10 >= min_trades 10" in ev.reason
    assert roster.variants == (ModelVariant("cur", 0.0, canary=True), ModelVariant("can", 1.0))
    assert roster.reason == ev.reason and roster.ts == promoted.ts

    # the strategy host routes by the new roster from the next opportunity on
    later = [e for e in events if isinstance(e, ShadowStep) and e.ts > roster.ts]
    assert later and {s.routed for s in later} == {"can"}
    signals = [e for e in events if isinstance(e, Signal) and e.ts > roster.ts]
    assert signals and {s.model_tag for s in signals} == {"can"}

    again = governed_run(PROMOTION)
    assert gov_digest(again) == gov_digest(run)
    decisions = [e for e in events if isinstance(e, PromotionDecided | ModelRoster)]
    assert [e for _, e in again if isinstance(e, PromotionDecided | ModelRoster)] == decisions


def test_with_auto_off_the_backtest_only_recommends() -> None:
    text = PROMOTION.replace("min_live_hours = 1", "min_live_hours = 1\nauto = false")
    events = [e for _, e in governed_run(text)]
    decisions = [e.evaluation.decision for e in events if isinstance(e, PromotionDecided)]
    assert "recommend" in decisions and "promote" not in decisions
    assert not [e for e in events if isinstance(e, ModelRoster)]
    assert {e.routed for e in events if isinstance(e, ShadowStep)} == {"cur", "can"}


ALLOCATED = (
    PROMOTION
    + """
[governance.allocator]
every = "1h"
floor = 0.05
min_trades = 5

[portfolio]
starting_cash = 500
"""
)


def test_a_backtest_with_the_allocator_publishes_budgets_and_risk_caps_by_them() -> None:
    run = governed_run(ALLOCATED)
    events = [e for _, e in run]
    allocations = [e for e in events if isinstance(e, AllocationDecided)]
    assert len(allocations) == 10  # one an hour of event time, for the one strategy
    for decided in allocations:
        assert {b.key.model for b in decided.budgets} == {"cur", "can"}
        assert all(0.05 <= b.weight <= 0.5 and b.reason for b in decided.budgets)
        assert decided.total == pytest.approx(sum(b.weight for b in decided.budgets))
    first = allocations[0]
    assert all(b.bound == "track_record" for b in first.budgets)  # no trades yet: floors
    (roster,) = [e for e in events if isinstance(e, ModelRoster)]  # the canary promoted
    before = [a for a in allocations if a.ts < roster.ts]
    after = [a for a in allocations if a.ts > roster.ts]
    assert any(b.bound == "canary_cap" for a in before for b in a.budgets)
    assert after and all(not b.is_canary for a in after for b in a.budgets if b.key.model == "can")

    # without budgets the strategy holds one unit (about 100 of a 500 account); with them,
    # until the promotion, its exposure stays within the budget x equity (0.1 to 0.15 x 500)
    position, largest = 0.0, 0.0
    for order in (e for e in events if isinstance(e, OrderCommand) and e.ts < roster.ts):
        assert order.ts >= first.ts  # the first rebalance comes with the first equity
        position += order.qty if order.side == "buy" else -order.qty
        largest = max(largest, abs(position))
    assert 0.4 < largest < 0.8
    refused = [e for e in events if isinstance(e, RiskDecision) and e.rule == "budget"]
    assert refused and "would exceed its budget" in refused[0].reason
    assert gov_digest(governed_run(ALLOCATED)) == gov_digest(run)
