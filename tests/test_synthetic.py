"""The synthetic market: reproducible, ordered, valid bars with known regimes."""

from __future__ import annotations

import itertools
import math
from statistics import mean, pstdev

import msgspec
import pytest

from contracts.events import Bar
from contracts.intervals import interval_ns
from services.marketdata.synthetic import REGIMES, SyntheticMarket


def encoded(market: SyntheticMarket) -> bytes:
    return msgspec.json.encode(list(market.generate()))


def by_symbol(bars: list[Bar], symbol: str) -> list[Bar]:
    return [bar for bar in bars if bar.symbol == symbol]


def test_same_parameters_same_bars() -> None:
    assert encoded(SyntheticMarket()) == encoded(SyntheticMarket())
    assert encoded(SyntheticMarket(seed=8)) != encoded(SyntheticMarket())


def test_symbol_path_does_not_depend_on_other_symbols() -> None:
    alone = list(SyntheticMarket(symbols=("ETH/USDT",), bars=200).generate())
    together = by_symbol(list(SyntheticMarket(bars=200).generate()), "ETH/USDT")
    assert msgspec.json.encode(alone) == msgspec.json.encode(together)


def test_bars_interleaved_in_event_time_order() -> None:
    market = SyntheticMarket(bars=50)
    bars = list(market.generate())
    step = interval_ns(market.interval)
    assert len(bars) == 50 * len(market.symbols)
    assert market.start_ns % step == 0
    for index, bar in enumerate(bars):
        position, symbol_index = divmod(index, len(market.symbols))
        assert bar.symbol == market.symbols[symbol_index]
        assert bar.open_time == market.start_ns + position * step
        assert bar.close_time == bar.open_time + step == bar.ts
        assert (bar.venue, bar.interval) == ("sim", "1m")
    assert [bar.ts for bar in bars] == sorted(bar.ts for bar in bars)


def test_start_snaps_to_interval() -> None:
    market = SyntheticMarket(interval="1h", bars=3)
    assert market.start_ns == 1_700_000_000_000_000_000 // 3_600_000_000_000 * 3_600_000_000_000
    assert SyntheticMarket(start_ns=120_000_000_001).start_ns == 120_000_000_000


def test_bars_are_valid_and_continuous() -> None:
    market = SyntheticMarket(bars=2_000, symbols=("BTC/USDT", "ETH/USDT", "SOL/USDT", "XYZ/EUR"))
    bars = list(market.generate())
    starts = {}
    for symbol in market.symbols:
        series = by_symbol(bars, symbol)
        starts[symbol] = series[0].open
        for previous, bar in itertools.pairwise(series):
            assert bar.open == previous.close
        for bar in series:
            assert bar.high >= max(bar.open, bar.close)
            assert bar.low <= min(bar.open, bar.close)
            assert bar.low > 0
            assert bar.volume > 0
            values = (bar.open, bar.high, bar.low, bar.close, bar.volume)
            assert all(type(value) is float for value in values)
    assert starts["BTC/USDT"] == 30_000.0
    assert starts["ETH/USDT"] == 2_000.0
    assert starts["SOL/USDT"] == 50.0
    assert 10.0 <= starts["XYZ/EUR"] <= 10_000.0
    assert (
        SyntheticMarket(symbols=("XYZ/EUR",), bars=1).generate().__next__().open
        == (starts["XYZ/EUR"])
    )


def test_regimes_drive_drift_volatility_and_volume() -> None:
    market = SyntheticMarket(bars=20_000, symbols=("BTC/USDT", "SOL/USDT"))
    bars = list(market.generate())
    labels = market.regimes()
    assert set(labels) == set(market.symbols)
    for symbol in market.symbols:
        series = by_symbol(bars, symbol)
        regime = labels[symbol]
        assert len(regime) == len(series)
        assert set(regime) == set(REGIMES)
        switches = sum(a != b for a, b in itertools.pairwise(regime))
        assert 100 < switches < 1_000, "regimes should be sticky but not frozen"
        returns = {name: [] for name in REGIMES}
        volumes = {name: [] for name in REGIMES}
        for bar, name in zip(series, regime, strict=True):
            returns[name].append(math.log(bar.close / bar.open))
            volumes[name].append(bar.volume)
        assert mean(returns["bull"]) > 0 > mean(returns["bear"])
        assert abs(mean(returns["range"])) < mean(returns["bull"])
        assert pstdev(returns["bear"]) > pstdev(returns["bull"])
        assert mean(volumes["bear"]) > mean(volumes["bull"])


def test_regimes_are_deterministic() -> None:
    assert SyntheticMarket(bars=300).regimes() == SyntheticMarket(bars=300).regimes()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"bars": 0}, "bars must be >= 1"),
        ({"symbols": ()}, "symbols must not be empty"),
        ({"symbols": ("BTC/USDT", "BTC/USDT")}, "symbols must be unique; repeated: BTC/USDT"),
        ({"symbols": ("",)}, "symbols must be non-empty strings"),
        ({"venue": ""}, "venue must not be empty"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"start_ns": -1}, "start_ns must be >= 0"),
        ({"interval": "1M"}, "interval '1M'"),
    ],
)
def test_invalid_parameters(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticMarket(**params)


def test_large_market_generates_every_bar() -> None:
    count = sum(1 for _ in SyntheticMarket(bars=100_000).generate())
    assert count == 300_000
