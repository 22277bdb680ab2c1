"""Meme sentiment: thresholds, the next-bar entry, size from the assumed equity, stop and
target exits, the cooldown, snapshot and restore."""

from __future__ import annotations

import pytest

from contracts.events import SocialSentiment
from services.strategy.host import strategy_role
from strategies.registry import StrategyError, build_strategy
from tests.external_scenario import T0, assert_restore_equals_uninterrupted, bar, run
from tests.factories import MINUTE

SYMBOL = "DOGE/USDT"
PARAMS = {
    "min_score": 0.6,
    "min_mentions": 100,
    "min_velocity": 2.0,
    "cooldown_s": 600,
    "equity": 10_000,
    "size_pct": 2,
    "stop_pct": 5,
    "target_pct": 10,
    "max_wait_s": 120,
}


def reading(minute: float, score: float = 0.8, mentions: int = 500, velocity: float = 3.0):
    return SocialSentiment(
        ts=T0 + round(minute * MINUTE),
        source="x",
        symbol=SYMBOL,
        score=score,
        mentions=mentions,
        velocity=velocity,
    )


def doge(i: int, close: float, high: float | None = None, low: float | None = None):
    return bar(close, index=i, high=high, low=low, symbol=SYMBOL)


def scenario() -> list:
    return [
        doge(0, 0.10),
        reading(1.5, score=0.5),  # score too low
        reading(1.6, mentions=50),  # too few mentions
        reading(1.7, velocity=1.0),  # too slow
        doge(1, 0.10),
        reading(2),  # qualifies; a bar closing at T0+2m came before it: not used
        doge(2, 0.20),  # closes at T0+3m: enters 200 notional / 0.2 = 1000 units
        reading(3.5),  # in position: ignored
        doge(3, 0.21, high=0.215, low=0.195),  # between stop 0.19 and target 0.22
        doge(4, 0.22, high=0.225, low=0.20),  # target hit: flat, cooldown until T0+15m
        reading(6),  # in the cooldown: ignored
        doge(6, 0.22),
        reading(15),  # cooldown over
        doge(15, 0.25, high=0.25, low=0.25),  # enters 200 / 0.25 = 800 units
        doge(16, 0.23, high=0.26, low=0.2375),  # low reaches the stop 0.2375: flat
    ]


def test_thresholds_entry_size_target_cooldown_and_stop() -> None:
    signals = run("meme_sentiment", PARAMS, scenario())
    assert [(s.ts, s.target_position, s.stop, s.target) for s in signals] == [
        (T0 + 3 * MINUTE, pytest.approx(1000.0), pytest.approx(0.19), pytest.approx(0.22)),
        (T0 + 5 * MINUTE, 0.0, None, None),
        (T0 + 16 * MINUTE, pytest.approx(800.0), pytest.approx(0.2375), pytest.approx(0.275)),
        (T0 + 17 * MINUTE, 0.0, None, None),
    ]
    assert signals[0].reason == (
        "x: score 0.8, 500 mentions, velocity 3; size 2% of assumed equity 10000 = 200 "
        "notional at 0.2"
    )
    assert signals[1].reason == "target hit: high 0.225 >= 0.22"
    assert signals[3].reason.startswith("stop hit: low 0.2375 <= 0.2375")
    tag = "meme_sentiment-s0.6-m100-v2-2pct-stop5-tgt10"
    assert {s.model_tag for s in signals} == {tag}


def test_a_reading_lapses_without_a_bar_in_time() -> None:
    items = [reading(0), doge(3, 1.0), doge(4, 1.0)]  # first bar closes 4 minutes later
    assert run("meme_sentiment", PARAMS, items) == []
    items = [reading(0), doge(1, 1.0)]  # closes 2 minutes later: in time
    assert [s.target_position for s in run("meme_sentiment", PARAMS, items)] == [200.0]


def test_snapshot_mid_run_and_restore_equals_the_uninterrupted_run() -> None:
    assert_restore_equals_uninterrupted("meme_sentiment", PARAMS, scenario())


def test_role_consumes_sentiment_of_its_symbols() -> None:
    role = strategy_role(build_strategy("meme_sentiment", {}), [SYMBOL])
    assert role.inputs[1].stream == "EXTERNAL"
    assert role.inputs[1].subjects == ("ext.sentiment.*.DOGE-USDT",)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"min_score": 2}, "min_score"),
        ({"size_pct": 0}, "size_pct"),
        ({"size_pct": 101}, "size_pct"),
        ({"equity": -1}, "equity"),
        ({"cooldown_s": -1}, "cooldown_s"),
        ({"target_pct": 0}, "target_pct"),
        ({"min_score": "nan"}, "min_score"),
        ({"min_velocity": "inf"}, "min_velocity must be a finite number"),
    ],
)
def test_bad_params_are_refused(params: dict, message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        build_strategy("meme_sentiment", params)
