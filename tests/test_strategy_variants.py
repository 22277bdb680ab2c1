"""Variants of a strategy instance: only the routed variant's signals are published (under
its tag), the shares follow the weights with the canary cap, a roster reroutes, every
variant's shadow book scores every bar by the paper venue's rules, a snapshot continues
exactly, a backtest is deterministic, and a bad variant config is one line."""

from __future__ import annotations

import math
import random
import tomllib
from collections import Counter
from pathlib import Path

import msgspec
import polars as pl
import pytest

from contracts.codec import decode
from contracts.envelope import Envelope, bar_envelope
from contracts.events import Bar, Event, ParamsTuned, Signal
from contracts.model_events import ModelRoster, ModelVariant, ShadowStep
from contracts.system_events import DeadLetter
from eventstore.errors import KeelError
from eventstore.lag import wait_drained
from eventstore.model_store import write_model_file
from eventstore.server import EmbeddedServer
from replay.backtest import BacktestSpec, run_backtest
from replay.market import DataSource
from services.config import KeelConfig, load_config
from services.fleet import fleet_roles, instance_role
from services.runtime.role import Input
from services.runtime.worker import Worker
from services.strategy.host import BarDecider
from services.strategy.shadow_book import Book, FillRules, step
from services.strategy.variant_host import VariantDecider
from strategies.params import StrategyError
from strategies.registry import build_strategy
from tests.factories import bars_from_closes, write_bar_file
from tests.test_ma_hmm import SYMBOL, hand_model
from tests.test_worker_runtime import QUIET, running, stored

T0 = 1_700_000_000 * 10**9
VARIANTS = """
[[strategies]]
name = "ma_cross"
instance = "ma"
params = { kind = "sma", fast = 2, slow = 3, mode = "long_short", qty = 1 }
max_canary = 0.1
variants = [
  { tag = "cur" },
  { tag = "can", canary = true, weight = 1.0, params = { fast = 3, slow = 5 } },
]

[execution]
fee_bps = 10
slippage_bps = 5
"""


def config_of(text: str) -> KeelConfig:
    return msgspec.convert(tomllib.loads(text), KeelConfig)


def walk(n: int, seed: int = 1) -> list[Bar]:
    rng = random.Random(seed)
    closes = [100.0]
    for _ in range(n - 1):
        closes.append(closes[-1] * (1 + rng.gauss(0, 0.01)))
    return bars_from_closes(closes, wick=0.5, start=T0, symbol="BTC/USDT", venue="test")


def decider_of(text: str = VARIANTS) -> VariantDecider:
    config = config_of(text)
    decider = instance_role(config, config.strategies[0]).decider
    assert isinstance(decider, VariantDecider)
    return decider


def split(outputs: list[Event]) -> tuple[list[Signal], ShadowStep]:
    *signals, shadow = outputs
    assert isinstance(shadow, ShadowStep)
    assert all(isinstance(s, Signal) for s in signals)
    return signals, shadow  # type: ignore[return-value]


def test_only_the_routed_variants_signals_are_published_under_its_tag() -> None:
    decider = decider_of(VARIANTS.replace("max_canary = 0.1", "max_canary = 0.5"))
    alone = {
        "cur": build_strategy("ma_cross", {"fast": 2, "slow": 3, "mode": "long_short"}, "ma"),
        "can": build_strategy("ma_cross", {"fast": 3, "slow": 5, "mode": "long_short"}, "ma"),
    }
    routed_with_signal = Counter()
    for bar in walk(400):
        signals, shadow = split(list(decider.decide(bar, bar.ts)))
        expected = {tag: s.on_bar(bar) for tag, s in alone.items()}
        assert shadow.cause_id == f"bar:test:BTC/USDT:1m:{bar.close_time}"
        assert [r.tag for r in shadow.results] == ["cur", "can"]
        want = [
            msgspec.structs.replace(s, model_tag=shadow.routed) for s in expected[shadow.routed]
        ]
        assert signals == want
        if want:
            routed_with_signal[shadow.routed] += 1
    assert routed_with_signal["cur"] > 5 and routed_with_signal["can"] > 5


def _binomial_ok(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize(
    ("weights", "max_canary", "share"),
    [("1.0, 1.0", 0.1, 0.1), ("0.95, 0.05", 0.1, 0.05), ("0.5, 0.5", 0.3, 0.3)],
)
def test_shares_follow_the_weights_with_the_canary_cap(
    weights: str, max_canary: float, share: float
) -> None:
    cur, can = weights.split(", ")
    text = (
        VARIANTS.replace("max_canary = 0.1", f"max_canary = {max_canary}")
        .replace('{ tag = "cur" }', f'{{ tag = "cur", weight = {cur} }}')
        .replace("weight = 1.0", f"weight = {can}")
    )
    decider = decider_of(text)
    bars = walk(6000)
    routed = Counter(split(list(decider.decide(b, b.ts)))[1].routed for b in bars)
    assert _binomial_ok(routed["can"], len(bars), share), routed


def roster(ts: int, *variants: ModelVariant, strategy: str = "ma") -> ModelRoster:
    return ModelRoster(ts=ts, strategy=strategy, variants=variants, cause_id="t", reason="test")


def test_a_roster_reroutes_and_one_naming_an_unknown_tag_is_a_dead_letter() -> None:
    decider = decider_of()
    bars = walk(600)
    before = Counter(split(list(decider.decide(b, b.ts)))[1].routed for b in bars[:300])
    assert before["cur"] > before["can"] > 0

    bad = roster(bars[299].ts, ModelVariant("cur", 1.0), ModelVariant("v9", 1.0, canary=True))
    (letter,) = decider.decide(bad, bad.ts)
    assert isinstance(letter, DeadLetter)
    assert (letter.worker, letter.subject) == ("strategy-ma", "gov.model.ma")
    assert "v9" in letter.reason and "routing unchanged" in letter.reason

    promoted = roster(bars[299].ts, ModelVariant("can", 1.0), ModelVariant("cur", 0.0, True))
    assert decider.decide(promoted, promoted.ts) == []
    after = [split(list(decider.decide(b, b.ts))) for b in bars[300:]]
    assert {shadow.routed for _, shadow in after} == {"can"}
    assert {s.model_tag for signals, _ in after for s in signals} == {"can"}


def test_shadow_returns_by_the_paper_venues_rules_on_a_hand_computed_example() -> None:
    """fee 10 bps, slippage 5 bps plus 0.1 of the bar's range, next open. A long of 2 is
    decided on bar A, flipped to a short of 1 on bar B, closed on bar C; fills at B, C and
    D's opens."""
    rules = FillRules(fee_bps=10, slippage_bps=5, slippage_range_frac=0.1)
    book = Book()
    a = step(book, (100, 101, 99, 100), 2.0, rules)
    assert (a.position, a.step_return, a.trade_return) == (0.0, 0.0, None)

    # B: buy 2 at 102 * 1.0005 + 0.1 * (106 - 101) = 102.551, fee 2 * 102.551 * 0.001.
    entry = 102 * 1.0005 + 0.5
    b = step(book, (102, 106, 101, 105), -1.0, rules)
    cash = -2 * entry - 2 * entry * 0.001
    assert b.position == 2.0 and b.trade_return is None  # the flip waits for C's open
    assert b.step_return == pytest.approx((cash + 2 * 105) / (2 * entry), rel=1e-12)
    assert entry == pytest.approx(102.551)

    # C: sell 3 at 104 * 0.9995 - 0.1 * (107 - 103) = 103.548, fee 3 * 103.548 * 0.001:
    # two close the long (their share of the fee), one opens the short.
    exit_ = 104 * 0.9995 - 0.4
    c = step(book, (104, 107, 103, 106), 0.0, rules)
    long_pnl = 2 * (exit_ - entry) - 2 * entry * 0.001 - 2 * exit_ * 0.001
    assert c.trade_return == pytest.approx(long_pnl / (2 * entry), rel=1e-12)
    assert c.trade_return == pytest.approx(1.581802 / 205.102, rel=1e-9)
    assert c.position == -1.0
    equity_b, equity_c = cash + 2 * 105, long_pnl + exit_ - exit_ * 0.001 - 106
    assert c.step_return == pytest.approx((equity_c - equity_b) / (2 * 105), rel=1e-12)

    # D: buy 1 at 106 * 1.0005 + 0.1 * 6.5 = 106.703, clamped to the bar's high 106.5.
    d = step(book, (106, 106.5, 100, 101), None, rules)
    short_pnl = exit_ - 106.5 - exit_ * 0.001 - 106.5 * 0.001
    assert d.trade_return == pytest.approx(short_pnl / exit_, rel=1e-12)
    assert d.trade_return == pytest.approx(-3.162048 / 103.548, rel=1e-9)
    assert d.position == 0.0
    assert d.step_return == pytest.approx((long_pnl + short_pnl - equity_c) / 106, rel=1e-12)

    e = step(book, (101, 102, 100, 101.5), None, rules)
    assert (e.position, e.step_return, e.trade_return) == (0.0, 0.0, None)


def test_at_close_a_shadow_order_fills_at_its_own_bars_close() -> None:
    rules = FillRules(at_close=True, fee_bps=10)
    book = Book()
    first = step(book, (100, 101, 99, 100.5), 1.0, rules)
    assert book.position == 1.0
    assert first.step_return == pytest.approx(-0.001)  # the fee only: filled at the mark
    second = step(book, (100.5, 102, 100, 101.5), 0.0, rules)
    assert second.trade_return == pytest.approx((101.5 - 100.5 - 0.1005 - 0.1015) / 100.5)


def test_a_snapshot_mid_run_continues_identically() -> None:
    bars = walk(400)
    whole = decider_of()
    promoted = roster(bars[99].ts, ModelVariant("can", 0.7), ModelVariant("cur", 0.3, True))
    first = [list(whole.decide(b, b.ts)) for b in bars[:100]]
    assert whole.decide(promoted, promoted.ts) == []
    first += [list(whole.decide(b, b.ts)) for b in bars[100:200]]
    data = whole.snapshot()
    rest = [list(whole.decide(b, b.ts)) for b in bars[200:]]

    restarted = decider_of()
    restarted.restore(data)
    assert [list(restarted.decide(b, b.ts)) for b in bars[200:]] == rest
    assert restarted.snapshot() == whole.snapshot()
    assert any(split(o)[1].routed == "can" for o in rest)

    other = decider_of(VARIANTS.replace('tag = "can"', 'tag = "v4"'))
    with pytest.raises(ValueError, match="the snapshot holds variants cur, can"):
        other.restore(data)


def test_only_an_instance_with_variants_changes_its_role() -> None:
    plain_text = VARIANTS.split("max_canary")[0]
    (plain,) = [r for r in fleet_roles(config_of(plain_text)) if r.name == "strategy-ma"]
    assert isinstance(plain.decider, BarDecider)
    assert plain.inputs == (Input("MARKET", ("md.bar.>",)),)
    (varied,) = [r for r in fleet_roles(config_of(VARIANTS)) if r.name == "strategy-ma"]
    assert isinstance(varied.decider, VariantDecider)
    assert varied.inputs == (Input("MARKET", ("md.bar.>",)), Input("GOVERNANCE", ("gov.model.ma",)))
    assert varied.decider.snapshot_version == plain.decider.snapshot_version + 1


def backtest(tmp_path: Path, name: str) -> tuple[str, list[Event]]:
    data = write_bar_file(tmp_path / "bars.parquet", walk(300, seed=3))
    source = DataSource(location=str(data), symbol="BTC/USDT", venue="test")
    out = tmp_path / name
    result = run_backtest(BacktestSpec(config=config_of(VARIANTS), data=(source,)), out)
    payloads = pl.read_parquet(out / "events.parquet")["payload"].to_list()
    return result.result_hash, [decode(p.encode()) for p in payloads]


def test_a_backtest_with_two_variants_is_deterministic(tmp_path: Path) -> None:
    first, a = backtest(tmp_path, "one")
    second, b = backtest(tmp_path, "two")
    assert first == second
    steps = [e for e in a if isinstance(e, ShadowStep)]
    signals = [e for e in a if isinstance(e, Signal)]
    assert len(steps) == 300 and signals
    assert steps == [e for e in b if isinstance(e, ShadowStep)]
    assert signals == [e for e in b if isinstance(e, Signal)]
    routed = {s.ts: s.routed for s in steps}
    assert all(s.model_tag == routed[s.ts] for s in signals)
    assert any(r.trade_return is not None for s in steps for r in s.results)


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ('{ tag = "a" }, { tag = "b" }', r"exactly one current model .*got 2: a, b"),
        ('{ tag = "a" }, { tag = "a", canary = true }', "variant tags must be unique"),
        (
            '{ tag = "a", weight = -1 }',
            r"Expected `float` >= 0.0 - at `\$.strategies\[0\].variants\[0\].weight`",
        ),
        ('{ tag = "a b" }', r"Expected `str` matching regex"),
    ],
)
def test_a_bad_variant_config_is_one_line_naming_the_key(
    tmp_path: Path, variants: str, message: str
) -> None:
    path = tmp_path / "keel.toml"
    path.write_text(f'[[strategies]]\nname = "ma_cross"\nvariants = [{variants}]\n')
    with pytest.raises(KeelError, match=message) as caught:
        load_config(path)
    assert "\n" not in str(caught.value) and "strategies" in str(caught.value)


def test_an_unknown_param_in_a_variant_is_one_line_naming_the_variant(tmp_path: Path) -> None:
    path = tmp_path / "keel.toml"
    path.write_text(
        '[[strategies]]\nname = "ma_cross"\ninstance = "ma"\n'
        'variants = [{ tag = "a" }, { tag = "b", canary = true, params = { fastt = 2 } }]\n'
    )
    with pytest.raises(StrategyError) as caught:
        fleet_roles(load_config(path))
    assert str(caught.value) == (
        "strategy ma, variant b: strategy ma_cross: bad params: "
        "Object contains unknown field `fastt`"
    )


async def test_a_worker_routes_shadows_and_takes_rosters_from_the_log(
    nats_server: EmbeddedServer,
) -> None:
    config = config_of(VARIANTS)
    worker = Worker(instance_role(config, config.strategies[0]), QUIET)
    bars = walk(120)
    async with running(nats_server.url, [worker]) as bus:
        durables = {"strategy-ma-market", "strategy-ma-governance"}

        async def feed(chunk: list[Bar]) -> None:
            for bar in chunk:
                await bus.publish(bar, bar_envelope(bar))
            assert await wait_drained(bus, durables, timeout=30)

        async def publish_roster(r: ModelRoster, name: str) -> None:
            await bus.publish(r, Envelope.root(name, r.ts))
            assert await wait_drained(bus, durables, timeout=30)

        await feed(bars[:60])
        await publish_roster(
            roster(bars[59].ts, ModelVariant("cur", 1.0), ModelVariant("v9", 1.0, True)), "r1"
        )
        await publish_roster(
            roster(bars[59].ts, ModelVariant("can", 1.0), ModelVariant("cur", 0.0, True)), "r2"
        )
        await feed(bars[60:])

        steps = await stored(bus, "gov.shadow.ma.>", "GOVERNANCE")
        signals = await stored(bus, "sig.ma.>", "SIGNALS")
        letters = await stored(bus, "sys.dlq.strategy-ma", "SYSTEM")
    assert all(isinstance(s, ShadowStep) for s in steps) and len(steps) == 120
    routed = {s.ts: s.routed for s in steps if isinstance(s, ShadowStep)}
    assert {routed[b.ts] for b in bars[60:]} == {"can"}
    assert signals and all(isinstance(s, Signal) and s.model_tag == routed[s.ts] for s in signals)
    (letter,) = letters
    assert isinstance(letter, DeadLetter) and "v9" in letter.reason


def test_a_tunable_strategys_variants_read_tuning_and_rosters_and_all_take_a_tuning(
    tmp_path: Path,
) -> None:
    for tag in ("v1", "v2"):
        write_model_file(hand_model("hand", tag), tmp_path / f"{tag}.json")
    config = config_of(
        f"""
[[strategies]]
name = "ma_hmm"
instance = "hmm"
symbols = ["{SYMBOL}"]
params = {{ kind = "sma", fast = 3, slow = 6, model_file = "{tmp_path / "v1.json"}" }}
variants = [
  {{ tag = "v1" }},
  {{ tag = "v2", canary = true, params = {{ model_file = "{tmp_path / "v2.json"}" }} }},
]
"""
    )
    role = instance_role(config, config.strategies[0])
    assert role.inputs[-1] == Input("GOVERNANCE", ("gov.tune.hmm.>", "gov.model.hmm"))
    decider = role.decider
    assert isinstance(decider, VariantDecider)
    tuned = ParamsTuned(ts=T0, strategy="hmm", symbol="*", param="quote_multiplier", old=1, new=2)
    assert decider.decide(tuned, T0) == []
    multipliers = [s.state.calibrations.of(SYMBOL).quote_multiplier for s in decider.strategies]
    assert multipliers == [2.0, 2.0]
