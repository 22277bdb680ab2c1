"""Promo watcher: the text parser, reward against cost, the holding period, snapshot and
restore."""

from __future__ import annotations

import pytest

from contracts.events import PromoAnnouncement
from strategies.promo_watcher import PromoTerms, parse_promo
from strategies.registry import StrategyError, build_strategy
from tests.external_scenario import T0, assert_restore_equals_uninterrupted, bar, run
from tests.factories import MINUTE

PARAMS = {
    "notional": 500,
    "fee_bps": 10,
    "slippage_bps": 5,
    "win_prob": 0.5,
    "expected_participants": 1000,
    "hold_s": 300,
    "max_wait_s": 600,
}
GOOD = (
    "Trade at least 10,000 USDT of NEW to share a prize pool of 50,000 USDT among the top "
    "100 traders"
)
# reward 50,000 / 100 * 0.5 = 250 vs cost 10,000 * 15 bps = 15: edge +235
POOR = "Trade at least 1M USDT and share $20K in rewards"
# reward 20,000 / 1000 participants = 20 vs cost 1,000,000 * 15 bps = 1,500: skipped


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        (GOOD, PromoTerms(10_000.0, "USDT", 50_000.0, None, "USDT", 100)),
        (POOR, PromoTerms(1e6, "USDT", 20_000.0, None, "USD", None)),
        (
            "The first 1,000 eligible users who trade a minimum of 100 USDT each receive 5 USDT",
            PromoTerms(100.0, "USDT", None, 5.0, "USDT", 1000),
        ),
        (
            "Minimum trading volume of 1M USDT. Share 2,000,000 NEW among 500 lucky winners",
            PromoTerms(1e6, "USDT", 2e6, None, "NEW", 500),
        ),
        (
            "Each eligible user will receive 10 USDT. Trade over 50.5 USDT.",
            PromoTerms(50.5, "USDT", None, 10.0, "USDT", None),
        ),
        ("Trading competition with a prize pool of 5K BNB", PromoTerms(None, "", 5e3, None, "BNB")),
        ("Deposit NEW and get rewards", PromoTerms()),
    ],
)
def test_parse_promo(text: str, terms: PromoTerms) -> None:
    assert parse_promo(text) == terms


def promo(minute: float, text: str = GOOD, symbol: str = "NEW/USDT", **kw) -> PromoAnnouncement:
    return PromoAnnouncement(
        ts=T0 + round(minute * MINUTE),
        source="news",
        venue="binance",
        symbol=symbol,
        title=kw.pop("title", "NEW trading competition"),
        text=text,
        **kw,
    )


def scenario() -> list:
    return [
        bar(2.0, index=0),
        promo(0.5),
        promo(0.6, text=POOR, title="other"),  # one pending promo per symbol: ignored
        bar(2.0, index=1),  # evaluates: edge +235 > 0 -> 250 units; exit at T0+7m
        bar(2.1, index=2),
        promo(3, text=POOR, title="other"),  # holding: ignored
        bar(2.2, index=5),
        bar(2.3, index=6),  # closes at T0+7m: flat
        promo(8),  # the same announcement again: ignored
        bar(2.3, index=8),
        promo(9, text=POOR, title="poor"),
        bar(2.3, index=9),  # evaluates: edge -1480, nothing
        bar(2.3, index=10),
    ]


def test_acts_only_when_expected_reward_exceeds_cost_and_exits_after_holding() -> None:
    signals = run("promo_watcher", PARAMS, scenario())
    assert [(s.ts, s.target_position) for s in signals] == [
        (T0 + 2 * MINUTE, 250.0),
        (T0 + 7 * MINUTE, 0.0),
    ]
    assert signals[0].reason == (
        "promo 'NEW trading competition': expected reward 250.00 (pool 50000 / 100 winners "
        "x p 0.5) vs cost 15.00 (volume 10000 at 10+5 bps): edge +235.00"
    )
    assert signals[1].reason == "promo holding period over"
    assert {s.model_tag for s in signals} == {"promo_watcher-fee10-slip5-p0.5-hold300"}
    strategy = build_strategy("promo_watcher", PARAMS)
    for item in scenario():
        if isinstance(item, PromoAnnouncement):
            strategy.on_event(item)
        else:
            strategy.on_bar(item)
    assert strategy.state.symbols["NEW/USDT"].note.endswith("edge -1480.00")


def test_rewards_in_the_coin_are_valued_at_the_close_and_fields_beat_the_text() -> None:
    text = "Trade at least 1,000 USDT. Share 100,000 NEW among 2,000 lucky winners"
    # 100,000 / 2,000 * 0.5 = 25 NEW at 0.5 = 12.5 USDT vs cost 1.5: edge 11
    signals = run("promo_watcher", PARAMS, [promo(0, text=text), bar(0.5, index=0)])
    assert [s.target_position for s in signals] == [1000.0]
    assert "expected reward 12.50" in signals[0].reason
    # the feeder says the volume needed is 100,000 USDT: cost 150 > 12.5
    items = [promo(0, text=text, min_volume=100_000.0), bar(0.5, index=0)]
    assert run("promo_watcher", PARAMS, items) == []


@pytest.mark.parametrize(
    "item",
    [
        promo(0, symbol=""),  # nothing to trade
        promo(0, text="Share a prize pool of 50,000 USDT"),  # no volume requirement
        promo(0, text="Trade at least 100 USDT to win"),  # no reward
        promo(0, text="Trade at least 100 EUR, share 5,000 USDT"),  # EUR vs USD
        promo(0, ends_at=T0 + MINUTE),  # over by the first bar's close
    ],
)
def test_promos_that_cannot_be_valued_are_skipped(item: PromoAnnouncement) -> None:
    assert run("promo_watcher", PARAMS, [item, bar(2.0, index=0), bar(2.0, index=1)]) == []


def test_exit_at_the_promo_end_when_earlier_than_the_holding_period() -> None:
    items = [
        promo(0, ends_at=T0 + 3 * MINUTE),
        bar(2.0, index=0),
        bar(2.0, index=1),
        bar(2.0, index=2),
    ]
    signals = run("promo_watcher", PARAMS, items)
    assert [(s.ts, s.target_position) for s in signals] == [
        (T0 + MINUTE, 250.0),
        (T0 + 3 * MINUTE, 0.0),
    ]


def test_snapshot_mid_run_and_restore_equals_the_uninterrupted_run() -> None:
    assert_restore_equals_uninterrupted("promo_watcher", PARAMS, scenario())


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"win_prob": 0}, "win_prob"),
        ({"fee_bps": -1}, "fee_bps"),
        ({"expected_participants": 0}, "expected_participants"),
        ({"hold_s": 0}, "hold_s"),
        ({"hold": 1}, "unknown field"),
    ],
)
def test_bad_params_are_refused(params: dict, message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        build_strategy("promo_watcher", params)
