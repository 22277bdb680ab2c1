"""Moving-average crossover: hand-computed scenarios, state handling and the registry."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from contracts.events import Bar, Signal
from strategies.ma_cross import MaCross, MaCrossParams
from strategies.registry import StrategyError, build_strategy, parse_params
from tests.factories import bars_from_closes

SCENARIO = [10, 11, 12, 11, 10, 9, 10, 12, 13, 12]


def strategy(
    kind: str = "sma", fast: int = 2, slow: int = 3, mode: str = "long_short", qty: float = 1.0
) -> MaCross:
    return MaCross(
        "mac",
        MaCrossParams(kind=kind, fast=fast, slow=slow, mode=mode, qty=qty),  # type: ignore[arg-type]
    )


def run(strat: MaCross, bars: Sequence[Bar]) -> list[tuple[int, Signal]]:
    """(1-based bar number, signal) for every signal the bars produce."""
    out: list[tuple[int, Signal]] = []
    for n, bar in enumerate(bars, start=1):
        out.extend((n, s) for s in strat.on_bar(bar))
    return out


def targets(signals: list[tuple[int, Signal]]) -> list[tuple[int, float | None]]:
    return [(n, s.target_position) for n, s in signals]


# (1) -----------------------------------------------------------------------------------


def test_hand_computed_sma_scenario() -> None:
    # bar 3: fast (11+12)/2 = 11.5 > slow (10+11+12)/3 = 11   -> warm, side +1, no signal
    # bar 4: fast 11.5 > slow 11.333                           -> still +1
    # bar 5: fast 10.5 < slow 11                               -> target -1
    # bar 6: fast 9.5 < slow 10; bar 7: fast 9.5 < slow 9.667  -> still -1
    # bar 8: fast 11 > slow 10.333                             -> target +1
    # bar 9: 12.5 > 11.667; bar 10: 12.5 > 12.333              -> still +1
    bars = bars_from_closes(SCENARIO)
    signals = run(strategy(), bars)
    assert targets(signals) == [(5, -1.0), (8, 1.0)]
    (_, down), (_, up) = signals
    assert down.ts == bars[4].close_time
    assert up.ts == bars[7].close_time
    for s in (down, up):
        assert s.model_tag == "ma_cross-sma2x3"
        assert s.strategy == "mac"
        assert s.venue == "test"
        assert s.symbol == "BTC/USDT"
        assert s.side is None and s.size is None
    assert "below" in down.reason and "above" in up.reason


def test_no_signal_on_first_warm_bar() -> None:
    strat = strategy()
    bars = bars_from_closes(SCENARIO)
    assert [strat.on_bar(b) for b in bars[:4]] == [[], [], [], []]


def test_qty_scales_the_target() -> None:
    assert targets(run(strategy(qty=2.5), bars_from_closes(SCENARIO))) == [(5, -2.5), (8, 2.5)]


# (2) -----------------------------------------------------------------------------------


def test_long_only_maps_short_side_to_flat() -> None:
    signals = run(strategy(mode="long_only"), bars_from_closes(SCENARIO))
    assert targets(signals) == [(5, 0.0), (8, 1.0)]
    assert all(s.target_position is not None and s.target_position >= 0 for _, s in signals)


def test_default_mode_is_long_only() -> None:
    assert MaCrossParams().mode == "long_only"


# (3) -----------------------------------------------------------------------------------


def test_equal_averages_keep_previous_side() -> None:
    # bar 3: fast 2.5 > slow 2 -> +1; bar 4 (close 1): fast (3+1)/2 = 2 == slow (2+3+1)/3 = 2
    # -> keep +1, no signal.
    strat = strategy()
    bars = bars_from_closes([1, 2, 3, 1])
    assert run(strat, bars) == []
    assert strat.state.legs["test|BTC/USDT|1m"].side == 1


def test_equal_twice_is_no_signal_but_a_later_cross_is() -> None:
    # [1, 2, 3, 1] is +1 then equal (kept +1).
    # + close 5: fast (1+5)/2 = 3 == slow (3+1+5)/3 = 3 -> equal again, still no signal.
    # + close 3 instead: fast (1+3)/2 = 2 < slow (3+1+3)/3 = 2.333 -> crossing down at bar 5.
    assert run(strategy(), bars_from_closes([1, 2, 3, 1, 5])) == []
    assert targets(run(strategy(), bars_from_closes([1, 2, 3, 1, 3]))) == [(5, -1.0)]


def test_equal_averages_keep_short_side() -> None:
    # [3, 2, 1]: fast 1.5 < slow 2 -> -1; close 3: fast 2 == slow (2+1+3)/3 = 2 -> keep -1.
    strat = strategy()
    assert run(strat, bars_from_closes([3, 2, 1, 3])) == []
    assert strat.state.legs["test|BTC/USDT|1m"].side == -1


# (4) -----------------------------------------------------------------------------------


def test_started_mid_trend_waits_for_a_crossing() -> None:
    rising = list(range(10, 40))
    strat = strategy(fast=3, slow=8)
    assert run(strat, bars_from_closes(rising)) == []
    # Now a sharp fall: the first signal is the downward crossing, never a "catch-up" long.
    falling = [39, 30, 20, 15, 12]
    more = bars_from_closes(rising + falling)[len(rising) :]
    signals = run(strat, more)
    assert len(signals) == 1
    assert signals[0][1].target_position == -1.0


def test_started_mid_downtrend_long_only_emits_nothing_until_cross() -> None:
    strat = strategy(mode="long_only")
    assert run(strat, bars_from_closes(list(range(50, 20, -1)))) == []


# (5) -----------------------------------------------------------------------------------


def test_symbols_keep_separate_state() -> None:
    btc = bars_from_closes(SCENARIO, symbol="BTC/USDT")
    eth_closes = [20, 19, 18, 19, 21, 22, 20, 18, 17, 19]
    eth = bars_from_closes(eth_closes, symbol="ETH/USDT")

    alone_btc = targets(run(strategy(), btc))
    alone_eth = targets(run(strategy(), eth))
    assert alone_btc and alone_eth

    strat = strategy()
    mixed: dict[str, list[tuple[int, float | None]]] = {"BTC/USDT": [], "ETH/USDT": []}
    for n, (b, e) in enumerate(zip(btc, eth, strict=True), start=1):
        for bar in (e, b):
            for s in strat.on_bar(bar):
                assert s.symbol == bar.symbol
                mixed[bar.symbol].append((n, s.target_position))
    assert mixed["BTC/USDT"] == alone_btc
    assert mixed["ETH/USDT"] == alone_eth
    assert set(strat.state.legs) == {"test|BTC/USDT|1m", "test|ETH/USDT|1m"}


def test_intervals_and_venues_keep_separate_state() -> None:
    strat = strategy()
    a = bars_from_closes(SCENARIO, interval="1m")
    b = bars_from_closes(SCENARIO, interval="5m")
    c = bars_from_closes(SCENARIO, venue="other")
    got = []
    for bars in zip(a, b, c, strict=True):
        for bar in bars:
            got.extend((bar.venue, bar.interval, s.target_position) for s in strat.on_bar(bar))
    assert len(got) == 6
    assert len(strat.state.legs) == 3


# (6) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sma", "ema"])
@pytest.mark.parametrize("cut", [1, 3, 5, 7])
def test_snapshot_restore_mid_series_reproduces_signals(kind: str, cut: int) -> None:
    """Regression: ``_Leg.fast``/``_Leg.slow`` are ``SMA | EMA``; before the indicators were
    tagged, msgspec refused to decode that union and restore raised TypeError."""
    bars = bars_from_closes(SCENARIO)
    straight = targets(run(strategy(kind), bars))

    first = strategy(kind)
    head = targets(run(first, bars[:cut]))
    blob = first.snapshot()

    second = strategy(kind)
    try:
        second.restore(blob)
    except TypeError as exc:
        pytest.fail(f"MaCross.restore cannot decode its own snapshot: {exc}")
    tail = [(n + cut, t) for n, t in targets(run(second, bars[cut:]))]
    assert head + tail == straight


def test_snapshot_of_fresh_strategy_restores() -> None:
    strat = strategy()
    strat.restore(strategy().snapshot())
    assert targets(run(strat, bars_from_closes(SCENARIO))) == [(5, -1.0), (8, 1.0)]


# (7) -----------------------------------------------------------------------------------


def test_ema_kind_works_and_differs_from_sma() -> None:
    closes = [10, 10, 11, 10, 11, 11, 9]
    # SMA 2x3: bar 3 fast 10.5 > slow 10.333 (warm +1); bar 4 10.5 > 10.333;
    #   bar 5 fast 10.5 < slow 10.667 -> -1; bar 6 fast 11 > slow 10.667 -> +1;
    #   bar 7 fast 10 < slow 10.333 -> -1.
    # EMA 2x3 (alphas 2/3, 1/2; seeds 10 and 10.333):
    #   bar 3 fast 10.667 > slow 10.333 (warm +1); bar 4 10.222 > 10.167;
    #   bar 5 10.741 > 10.583; bar 6 10.914 > 10.792; bar 7 fast 9.638 < slow 9.896 -> -1.
    sma = run(strategy("sma"), bars_from_closes(closes))
    ema = run(strategy("ema"), bars_from_closes(closes))
    assert targets(sma) == [(5, -1.0), (6, 1.0), (7, -1.0)]
    assert targets(ema) == [(7, -1.0)]
    assert ema[0][1].model_tag == "ma_cross-ema2x3"
    assert ema[0][1].reason.startswith("ema")


def test_ema_hand_computed_on_main_scenario() -> None:
    # EMA 2x3: bar 5 fast 10.389 < slow 10.5 -> -1; bar 8 fast 11.274 > slow 10.9375 -> +1.
    assert targets(run(strategy("ema"), bars_from_closes(SCENARIO))) == [(5, -1.0), (8, 1.0)]


# (8) registry ---------------------------------------------------------------------------


def test_build_strategy_from_string_params() -> None:
    strat = build_strategy(
        "ma_cross", parse_params(["fast=2", " slow = 3", "mode=long_short"]), instance="i1"
    )
    assert strat.name == "i1"
    assert isinstance(strat, MaCross)
    assert strat.params == MaCrossParams(fast=2, slow=3, mode="long_short")
    assert build_strategy("ma_cross", {}).name == "ma_cross"


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("nope", {}, "unknown strategy 'nope'"),
        ("ma_cross", {"fast": "abc"}, "fast"),
        ("ma_cross", {"kind": "wma"}, "kind"),
        ("ma_cross", {"foo": "1"}, "foo"),
        ("ma_cross", {"fast": "5", "slow": "3"}, "fast (5) must be below slow (3)"),
        ("ma_cross", {"fast": "3", "slow": "3"}, "fast (3) must be below slow (3)"),
        ("ma_cross", {"fast": "0", "slow": "3"}, ">= 1 - at `$.fast`"),
        ("ma_cross", {"qty": "0"}, "> 0.0 - at `$.qty`"),
        ("ma_cross", {"qty": "-1"}, "> 0.0 - at `$.qty`"),
        ("ma_cross", {"qty": "inf"}, "qty must be a finite number"),
    ],
)
def test_build_strategy_errors_are_one_line(
    name: str, params: dict[str, object], needle: str
) -> None:
    with pytest.raises(StrategyError) as info:
        build_strategy(name, params)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_unknown_strategy_lists_known_ones() -> None:
    with pytest.raises(StrategyError, match=r"known: (\w+, )*ma_cross(, \w+)*$"):
        build_strategy("nope", {})


@pytest.mark.parametrize("bad", ["oops", "=3", " =3"])
def test_parse_params_rejects_malformed(bad: str) -> None:
    with pytest.raises(StrategyError, match="key=value"):
        parse_params(["fast=2", bad])


def test_parse_params_keeps_value_with_equals_sign() -> None:
    assert parse_params(["a=b=c", "empty="]) == {"a": "b=c", "empty": ""}


def test_no_signal_until_the_averages_first_differ() -> None:
    # bar 3: fast 2 == slow 2 -> no side yet; bar 4: fast 2.5 > slow 2.33 fixes +1 silently
    assert run(strategy(), bars_from_closes([2, 2, 2, 3])) == []
    # the next real crossing does signal: bar 6 fast 1.5 < slow 2.0
    assert targets(run(strategy(), bars_from_closes([2, 2, 2, 3, 2, 1]))) == [(6, -1.0)]
