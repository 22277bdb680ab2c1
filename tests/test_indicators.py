"""Incremental indicators against vectorised numpy references, published tables, warm-up,
snapshots and parameter validation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.indicators import (
    ADX,
    ATR,
    EMA,
    RSI,
    SMA,
    WMA,
    ADXValue,
    BollingerBands,
    BollingerValue,
    Donchian,
    DonchianValue,
    RollingVolatility,
    Slotted,
    SlottedADX,
    SlottedATR,
    SlottedBollingerBands,
    SlottedEMA,
    SlottedRSI,
    SlottedStochastic,
    Stochastic,
    StochasticValue,
    ZScore,
)

N = 5_000
PERIODS = [1, 2, 3, 7, 20, 200]


def _values(seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # A random walk around 100 plus noise: realistic magnitudes, plenty of sign changes.
    return 100.0 + np.cumsum(rng.normal(0.0, 1.0, N)) + rng.uniform(-5.0, 5.0, N)


def sma_reference(values: np.ndarray, period: int) -> np.ndarray:
    """NaN for the first period-1 positions, then the mean of the trailing window."""
    out = np.full(len(values), np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(values, period)
    out[period - 1 :] = windows.mean(axis=1)
    return out


def ema_reference(values: np.ndarray, period: int) -> np.ndarray:
    """Seeded with the SMA of the first ``period`` values, then alpha = 2 / (period + 1).

    Vectorised per chunk with the closed form
    e_{s+i} = b^i e_s + b^i * cumsum_j(a x_{s+j} / b^j), b = 1 - a,
    chunks kept short so b^-j stays well scaled.
    """
    out = np.full(len(values), np.nan)
    alpha = 2.0 / (period + 1)
    beta = 1.0 - alpha
    out[period - 1] = values[:period].mean()
    rest = values[period:]
    if beta == 0.0:  # period 1: the average is the value itself
        out[period:] = rest
        return out
    chunk = 16
    prev = out[period - 1]
    for start in range(0, len(rest), chunk):
        part = rest[start : start + chunk]
        scale = beta ** np.arange(1, len(part) + 1)
        block = scale * prev + scale * np.cumsum(alpha * part / scale)
        out[period + start : period + start + len(part)] = block
        prev = block[-1]
    return out


def _run(indicator: SMA | EMA, values: np.ndarray) -> list[float | None]:
    return [indicator.update(float(v)) for v in values]


@pytest.mark.parametrize("period", PERIODS)
def test_sma_matches_numpy_reference(period: int) -> None:
    values = _values()
    got = _run(SMA(period), values)
    ref = sma_reference(values, period)
    assert all(v is None for v in got[: period - 1])
    assert all(v is not None for v in got[period - 1 :])
    np.testing.assert_allclose(
        np.array(got[period - 1 :], dtype=float), ref[period - 1 :], rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("period", PERIODS)
def test_ema_matches_numpy_reference(period: int) -> None:
    values = _values(11)
    got = _run(EMA(period), values)
    ref = ema_reference(values, period)
    assert all(v is None for v in got[: period - 1])
    assert all(v is not None for v in got[period - 1 :])
    np.testing.assert_allclose(
        np.array(got[period - 1 :], dtype=float), ref[period - 1 :], rtol=1e-9, atol=1e-9
    )


def test_ema_reference_agrees_with_plain_recursion() -> None:
    """Guard the closed-form reference itself against a naive loop."""
    values = _values(3)[:300]
    period = 9
    alpha = 2.0 / (period + 1)
    e = values[:period].mean()
    expected = [e]
    for v in values[period:]:
        e = e + alpha * (v - e)
        expected.append(e)
    np.testing.assert_allclose(ema_reference(values, period)[period - 1 :], expected, rtol=1e-12)


@pytest.mark.parametrize("cls", [SMA, EMA])
@pytest.mark.parametrize("period", [1, 2, 5, 30])
def test_warm_up_is_exactly_period_minus_one(cls: type[SMA] | type[EMA], period: int) -> None:
    indicator = cls(period)
    outputs = [indicator.update(float(i + 1)) for i in range(period + 3)]
    assert outputs[: period - 1] == [None] * (period - 1)
    assert outputs[period - 1] == pytest.approx((period + 1) / 2)  # mean of 1..period
    assert all(v is not None for v in outputs[period - 1 :])


@pytest.mark.parametrize("cls", [SMA, EMA])
@pytest.mark.parametrize("period", [1, 4, 25])
@pytest.mark.parametrize("cut", [0, 2, 24, 25, 26, 400])
def test_snapshot_round_trip_mid_stream(cls: type[SMA] | type[EMA], period: int, cut: int) -> None:
    values = _values(5)[:600]
    straight = _run(cls(period), values)

    first = cls(period)
    head = _run(first, values[:cut])
    blob = msgspec.msgpack.encode(first)
    second = msgspec.msgpack.decode(blob, type=cls)
    assert second == first
    tail = _run(second, values[cut:])
    assert head + tail == straight  # bit-identical, not merely close


@pytest.mark.parametrize("cls", [SMA, EMA])
@pytest.mark.parametrize("period", [0, -1, -100])
def test_period_below_one_raises(cls: type[SMA] | type[EMA], period: int) -> None:
    with pytest.raises(ValueError, match="period"):
        cls(period)


@pytest.mark.parametrize("cls", [SMA, EMA])
def test_decoding_a_bad_period_is_rejected(cls: type[SMA] | type[EMA]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode({"period": 0}), type=cls)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    values=st.lists(
        st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=120,
    ),
    period=st.integers(min_value=1, max_value=12),
)
def test_sma_property_matches_window_mean(values: list[float], period: int) -> None:
    sma = SMA(period)
    for i, v in enumerate(values):
        out = sma.update(v)
        if i < period - 1:
            assert out is None
        else:
            window = values[i - period + 1 : i + 1]
            assert out == pytest.approx(sum(window) / period, rel=1e-9, abs=1e-6)


# --- The rest of the library: WMA, RSI, ATR, Bollinger, Stochastic, ADX, Donchian, volatility,
# z-score. Each incremental indicator is checked against an independent numpy batch version on
# long random series, against published or hand-computed tables, across snapshots, and for
# parameter validation.

LONG = 20_000
Output = float | tuple[float, ...] | None


def _bars(n: int = LONG, seed: int = 1, coarse: bool = False) -> tuple[np.ndarray, ...]:
    """(high, low, close) around a geometric random walk.

    ``coarse`` snaps prices to a 0.5 grid (ties in highs and lows, zero changes) and inserts a
    perfectly flat stretch (zero ranges, zero returns, constant windows).
    """
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    spread = close * rng.uniform(0.0, 0.02, n)
    high = close + spread * rng.uniform(0.0, 1.0, n)
    low = close - spread * rng.uniform(0.0, 1.0, n)
    if coarse:
        close = np.round(close * 2.0) / 2.0
        high = np.maximum(np.round(high * 2.0) / 2.0, close)
        low = np.minimum(np.round(low * 2.0) / 2.0, close)
        flat = slice(n // 3, n // 3 + 300)
        high[flat] = low[flat] = close[flat] = close[n // 3]
    return high, low, close


def _recurrence(x: np.ndarray, b: float, a: float, start: float) -> np.ndarray:
    """y_t = b * y_{t-1} + a * x_t from y_{-1} = start, vectorised in short chunks with the
    closed form y_{s+i} = b^i y_s + b^i * cumsum_j(a x_{s+j} / b^j)."""
    if b == 0.0:
        return a * x
    out = np.empty(len(x))
    prev = start
    chunk = 16
    for s in range(0, len(x), chunk):
        part = x[s : s + chunk]
        scale = b ** np.arange(1, len(part) + 1)
        block = scale * prev + scale * np.cumsum(a * part / scale)
        out[s : s + len(part)] = block
        prev = block[-1]
    return out


def _wilder_average(x: np.ndarray, n: int) -> np.ndarray:
    """NaN before index n-1, the mean of x[:n] at n-1, then avg = (avg (n-1) + x) / n."""
    out = np.full(len(x), np.nan)
    if len(x) < n:
        return out
    out[n - 1] = x[:n].mean()
    out[n:] = _recurrence(x[n:], (n - 1) / n, 1.0 / n, out[n - 1])
    return out


def _wilder_sum(x: np.ndarray, n: int) -> np.ndarray:
    """NaN before index n-1, the sum of x[:n] at n-1, then S = S - S/n + x."""
    out = np.full(len(x), np.nan)
    out[n - 1] = x[:n].sum()
    out[n:] = _recurrence(x[n:], (n - 1) / n, 1.0, out[n - 1])
    return out


def _windows(x: np.ndarray, n: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(x, n)


def _pad(values: np.ndarray, total: int) -> np.ndarray:
    """Right-align ``values`` in a NaN array of length ``total`` (leading NaN = warm-up)."""
    out = np.full((total, *values.shape[1:]), np.nan)
    out[total - len(values) :] = values
    return out


def wma_reference(x: np.ndarray, n: int) -> np.ndarray:
    weights = np.arange(1, n + 1, dtype=float)
    return _pad(_windows(x, n) @ weights / weights.sum(), len(x))


def rsi_reference(close: np.ndarray, n: int) -> np.ndarray:
    change = np.diff(close)
    avg_gain = _wilder_average(np.maximum(change, 0.0), n)
    avg_loss = _wilder_average(np.maximum(-change, 0.0), n)
    with np.errstate(divide="ignore", invalid="ignore"):
        rsi = np.where(
            avg_loss == 0.0,
            np.where(avg_gain > 0.0, 100.0, 50.0),
            100.0 - 100.0 / (1.0 + avg_gain / avg_loss),
        )
    rsi[np.isnan(avg_gain)] = np.nan
    return _pad(rsi, len(close))


def _true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """True range of bars 1.. (each needs the previous close)."""
    prev = close[:-1]
    return np.maximum.reduce([high[1:] - low[1:], np.abs(high[1:] - prev), np.abs(low[1:] - prev)])


def atr_reference(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int) -> np.ndarray:
    tr = np.concatenate([[high[0] - low[0]], _true_range(high, low, close)])
    return _wilder_average(tr, n)


def bollinger_reference(x: np.ndarray, n: int, k: float) -> np.ndarray:
    w = _windows(x, n)
    mid = w.mean(axis=1)
    sd = w.std(axis=1)  # population (ddof=0)
    return _pad(np.column_stack([mid, mid + k * sd, mid - k * sd]), len(x))


def stochastic_reference(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, kn: int, dn: int
) -> np.ndarray:
    hh = _windows(high, kn).max(axis=1)
    ll = _windows(low, kn).min(axis=1)
    c = close[kn - 1 :]
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(hh == ll, 50.0, 100.0 * (c - ll) / (hh - ll))
    d = _windows(k, dn).mean(axis=1)
    return _pad(np.column_stack([k[dn - 1 :], d]), len(close))


def adx_reference(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int) -> np.ndarray:
    up = high[1:] - high[:-1]
    down = low[:-1] - low[1:]
    plus_dm = np.where((up > down) & (up > 0.0), up, 0.0)
    minus_dm = np.where((down > up) & (down > 0.0), down, 0.0)
    tr = _wilder_sum(_true_range(high, low, close), n)[n - 1 :]
    plus = _wilder_sum(plus_dm, n)[n - 1 :]
    minus = _wilder_sum(minus_dm, n)[n - 1 :]
    with np.errstate(divide="ignore", invalid="ignore"):
        plus_di = np.where(tr > 0.0, 100.0 * plus / tr, 0.0)
        minus_di = np.where(tr > 0.0, 100.0 * minus / tr, 0.0)
        total = plus_di + minus_di
        dx = np.where(total > 0.0, 100.0 * np.abs(plus_di - minus_di) / total, 0.0)
    adx = _wilder_average(dx, n)
    return _pad(np.column_stack([adx, plus_di, minus_di])[n - 1 :], len(close))


def donchian_reference(high: np.ndarray, low: np.ndarray, n: int) -> np.ndarray:
    upper = _windows(high, n).max(axis=1)
    lower = _windows(low, n).min(axis=1)
    return _pad(np.column_stack([upper, lower]), len(high))


def volatility_reference(close: np.ndarray, n: int) -> np.ndarray:
    returns = np.diff(np.log(close))
    return _pad(_windows(returns, n).std(axis=1, ddof=1), len(close))


def zscore_reference(x: np.ndarray, n: int) -> np.ndarray:
    w = _windows(x, n)
    mean = w.mean(axis=1)
    sd = w.std(axis=1)
    flat = w.max(axis=1) == w.min(axis=1)  # a constant window has std exactly 0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(flat, 0.0, (x[n - 1 :] - mean) / sd)
    return _pad(z, len(x))


def _feed(indicator: Any, *series: np.ndarray) -> list[Output]:
    columns = [s.tolist() for s in series]
    return [indicator.update(*row) for row in zip(*columns, strict=True)]


def _assert_matches(got: list[Output], ref: np.ndarray, warmup: int) -> None:
    """Exactly ``warmup`` leading Nones (and the reference agrees), then values within 1e-9."""
    assert all(v is None for v in got[:warmup])
    assert all(v is not None for v in got[warmup:])
    assert np.isnan(ref[:warmup]).all()
    assert not np.isnan(ref[warmup:]).any()
    values = np.array(got[warmup:], dtype=float)
    np.testing.assert_allclose(values, ref[warmup:], rtol=1e-9, atol=1e-9)


COARSE = [False, True]


@pytest.mark.parametrize("coarse", COARSE)
@pytest.mark.parametrize("period", [1, 2, 10, 200])
def test_wma_matches_numpy_reference(period: int, coarse: bool) -> None:
    _, _, close = _bars(coarse=coarse)
    got = _feed(WMA(period), close)
    _assert_matches(got, wma_reference(close, period), period - 1)


@pytest.mark.parametrize("coarse", COARSE)
@pytest.mark.parametrize("period", [1, 2, 14, 50])
def test_rsi_matches_numpy_reference(period: int, coarse: bool) -> None:
    _, _, close = _bars(seed=2, coarse=coarse)
    got = _feed(RSI(period), close)
    _assert_matches(got, rsi_reference(close, period), period)


@pytest.mark.parametrize("coarse", COARSE)
@pytest.mark.parametrize("period", [1, 2, 14, 50])
def test_atr_matches_numpy_reference(period: int, coarse: bool) -> None:
    high, low, close = _bars(seed=3, coarse=coarse)
    got = _feed(ATR(period), high, low, close)
    _assert_matches(got, atr_reference(high, low, close, period), period - 1)


@pytest.mark.parametrize("coarse", COARSE)
@pytest.mark.parametrize(("period", "k"), [(1, 2.0), (2, 1.0), (20, 2.0), (100, 2.5)])
def test_bollinger_matches_numpy_reference(period: int, k: float, coarse: bool) -> None:
    _, _, close = _bars(seed=4, coarse=coarse)
    got = _feed(BollingerBands(period, k), close)
    _assert_matches(got, bollinger_reference(close, period, k), period - 1)


def test_bollinger_has_no_drift_over_100k_updates_at_a_high_price_level() -> None:
    """Running sums of squares lose precision far from zero and drift over long runs; the
    shifted sums and periodic refresh keep the bands on the batch values."""
    rng = np.random.default_rng(9)
    values = 50_000.0 + np.cumsum(rng.normal(0.0, 3.0, 100_000))
    for period in (5, 20):
        got = _feed(BollingerBands(period, 2.0), values)
        _assert_matches(got, bollinger_reference(values, period, 2.0), period - 1)


@pytest.mark.parametrize("coarse", COARSE)
@pytest.mark.parametrize(("kn", "dn"), [(1, 1), (5, 3), (14, 3), (14, 1), (30, 7)])
def test_stochastic_matches_numpy_reference(kn: int, dn: int, coarse: bool) -> None:
    high, low, close = _bars(seed=5, coarse=coarse)
    got = _feed(Stochastic(kn, dn), high, low, close)
    _assert_matches(got, stochastic_reference(high, low, close, kn, dn), kn + dn - 2)


@pytest.mark.parametrize("coarse", COARSE)
@pytest.mark.parametrize("period", [1, 2, 14, 30])
def test_adx_matches_numpy_reference(period: int, coarse: bool) -> None:
    high, low, close = _bars(seed=6, coarse=coarse)
    got = _feed(ADX(period), high, low, close)
    _assert_matches(got, adx_reference(high, low, close, period), 2 * period - 1)


@pytest.mark.parametrize("coarse", COARSE)
@pytest.mark.parametrize("period", [1, 2, 20, 55])
def test_donchian_matches_numpy_reference(period: int, coarse: bool) -> None:
    high, low, close = _bars(seed=7, coarse=coarse)
    got = _feed(Donchian(period), high, low, close)
    _assert_matches(got, donchian_reference(high, low, period), period - 1)


@pytest.mark.parametrize("coarse", COARSE)
@pytest.mark.parametrize("period", [2, 20, 60])
def test_rolling_volatility_matches_numpy_reference(period: int, coarse: bool) -> None:
    _, _, close = _bars(seed=8, coarse=coarse)
    got = _feed(RollingVolatility(period), close)
    _assert_matches(got, volatility_reference(close, period), period)


@pytest.mark.parametrize("coarse", COARSE)
@pytest.mark.parametrize("period", [2, 20, 100])
def test_zscore_matches_numpy_reference(period: int, coarse: bool) -> None:
    _, _, close = _bars(seed=10, coarse=coarse)
    got = _feed(ZScore(period), close)
    _assert_matches(got, zscore_reference(close, period), period - 1)


def test_recurrence_reference_agrees_with_plain_loop() -> None:
    """Guard the vectorised Wilder reference itself."""
    _, _, close = _bars(400, seed=11)
    for n in (1, 2, 14):
        expected = [close[:n].mean()]
        for v in close[n:]:
            expected.append((expected[-1] * (n - 1) + v) / n)
        np.testing.assert_allclose(_wilder_average(close, n)[n - 1 :], expected, rtol=1e-12)


# --- Published tables and hand-computed examples --------------------------------------------

# StockCharts ChartSchool "Relative Strength Index (RSI)" worked example (cs-rsi.xls). The
# table prints closes to 2 decimals but computes from these 4-decimal prices.
STOCKCHARTS_RSI_CLOSES = [
    44.3389, 44.0902, 44.1497, 43.6124, 44.3278, 44.8264, 45.0955, 45.4245, 45.8433,
    46.0826, 45.8931, 46.0328, 45.6140, 46.2820, 46.2820, 46.0028, 46.0328, 46.4116,
    46.2222, 45.6439, 46.2122, 46.2521, 45.7137, 46.4515, 45.7835, 45.3548, 44.0288,
    44.1783, 44.2181, 44.5672, 43.4205, 42.6628, 43.1314,
]  # fmt: skip
STOCKCHARTS_RSI_14 = [
    70.53, 66.32, 66.55, 69.41, 66.36, 57.97, 62.93, 63.26, 56.06, 62.38, 54.71,
    50.42, 39.99, 41.46, 41.87, 45.46, 37.30, 33.08, 37.77,
]  # fmt: skip


def test_rsi_reproduces_the_stockcharts_table() -> None:
    got = _feed(RSI(14), np.array(STOCKCHARTS_RSI_CLOSES))
    assert got[:14] == [None] * 14
    # The table rounds to 2 decimals: every value within half a cent of the rounding.
    assert got[14:] == pytest.approx(STOCKCHARTS_RSI_14, abs=0.005)


def test_rsi_first_value_by_hand_from_the_two_decimal_closes() -> None:
    closes = [round(c, 2) for c in STOCKCHARTS_RSI_CLOSES[:15]]
    # Changes: -0.25 +0.06 -0.54 +0.72 +0.50 +0.27 +0.32 +0.42 +0.24 -0.19 +0.14 -0.42 +0.67
    # +0.00 -> gains sum 3.34, losses sum 1.40; RS = (3.34/14) / (1.40/14) = 2.385714...
    # RSI = 100 - 100 / 3.385714... = 70.4641 (the table's 70.53 uses the 4-decimal prices).
    rsi = RSI(14)
    *warmup, first = [rsi.update(c) for c in closes]
    assert warmup == [None] * 14
    assert first == pytest.approx(100.0 - 100.0 / (1.0 + 3.34 / 1.40), rel=1e-12)
    assert first == pytest.approx(70.4641, abs=1e-4)


def test_rsi_edge_cases() -> None:
    assert _feed(RSI(3), np.arange(1.0, 8.0))[3:] == [100.0] * 4  # no losses
    assert _feed(RSI(3), np.arange(8.0, 1.0, -1.0))[3:] == [0.0] * 4  # no gains
    assert _feed(RSI(3), np.full(7, 5.0))[3:] == [50.0] * 4  # flat: documented 50


# StockCharts ChartSchool "Average True Range (ATR)" worked example (QQQ, cs-atr.xls).
STOCKCHARTS_ATR_HIGH = [
    48.70, 48.72, 48.90, 48.87, 48.82, 49.05, 49.20, 49.35, 49.92, 50.19, 50.12, 49.66, 49.88,
    50.19, 50.36, 50.57, 50.65, 50.43, 49.63, 50.33, 50.29, 50.17, 49.32, 48.50, 48.32, 46.80,
    47.80, 48.39, 48.66, 48.79,
]  # fmt: skip
STOCKCHARTS_ATR_LOW = [
    47.79, 48.14, 48.39, 48.37, 48.24, 48.64, 48.94, 48.86, 49.50, 49.87, 49.20, 48.90, 49.43,
    49.73, 49.26, 50.09, 50.30, 49.21, 48.98, 49.61, 49.20, 49.43, 48.08, 47.64, 41.55, 44.28,
    47.31, 47.20, 47.90, 47.73,
]  # fmt: skip
STOCKCHARTS_ATR_CLOSE = [
    48.16, 48.61, 48.75, 48.63, 48.74, 49.03, 49.07, 49.32, 49.91, 50.13, 49.53, 49.50, 49.75,
    50.03, 50.31, 50.52, 50.41, 49.34, 49.37, 50.23, 49.24, 49.93, 48.43, 48.18, 46.57, 45.41,
    47.77, 47.72, 48.62, 47.85,
]  # fmt: skip
STOCKCHARTS_ATR_14 = [
    0.56, 0.59, 0.59, 0.57, 0.62, 0.62, 0.64, 0.67, 0.69, 0.78, 0.78, 1.21, 1.30, 1.38, 1.37,
    1.34, 1.32,
]  # fmt: skip


def test_atr_reproduces_the_stockcharts_table() -> None:
    bars = [np.array(s) for s in (STOCKCHARTS_ATR_HIGH, STOCKCHARTS_ATR_LOW, STOCKCHARTS_ATR_CLOSE)]
    got = _feed(ATR(14), *bars)
    assert got[:13] == [None] * 13
    # The first TR is high - low (no previous close); the table prints 2 decimals and its
    # intermediate columns are rounded too, so agreement is to the cent.
    assert got[13:] == pytest.approx(STOCKCHARTS_ATR_14, abs=0.01)
    first_trs = [STOCKCHARTS_ATR_HIGH[0] - STOCKCHARTS_ATR_LOW[0]] + [
        max(h - lo, abs(h - pc), abs(lo - pc))
        for h, lo, pc in zip(
            STOCKCHARTS_ATR_HIGH[1:14],
            STOCKCHARTS_ATR_LOW[1:14],
            STOCKCHARTS_ATR_CLOSE[:13],
            strict=True,
        )
    ]
    assert got[13] == pytest.approx(sum(first_trs) / 14, rel=1e-12)


# StockCharts ChartSchool "Bollinger Bands" worked example (20, 2), population std.
STOCKCHARTS_BB_CLOSES = [
    86.16, 89.09, 88.78, 90.32, 89.07, 91.15, 89.44, 89.18, 86.93, 87.68, 86.96, 89.43, 89.32,
    88.72, 87.45, 87.26, 89.50, 87.90, 89.13, 90.70, 92.90, 92.98, 91.80, 92.66, 92.68, 92.30,
    92.77, 92.54, 92.95, 93.20, 91.07, 89.83, 89.74, 90.40, 90.74, 88.02, 88.09, 88.84, 90.78,
    90.54, 91.39, 90.65,
]  # fmt: skip
STOCKCHARTS_BB_MID = [
    88.71, 89.05, 89.24, 89.39, 89.51, 89.69, 89.75, 89.91, 90.08, 90.38, 90.66, 90.86, 90.88,
    90.90, 90.99, 91.15, 91.19, 91.12, 91.17, 91.25, 91.24, 91.17, 91.05,
]  # fmt: skip
STOCKCHARTS_BB_UPPER = [
    91.29, 91.95, 92.61, 92.93, 93.31, 93.73, 93.90, 94.26, 94.56, 94.79, 95.04, 94.91, 94.90,
    94.89, 94.86, 94.67, 94.55, 94.68, 94.57, 94.53, 94.53, 94.37, 94.15,
]  # fmt: skip
STOCKCHARTS_BB_LOWER = [
    86.12, 86.14, 85.87, 85.85, 85.70, 85.65, 85.59, 85.56, 85.60, 85.98, 86.27, 86.82, 86.87,
    86.91, 87.12, 87.63, 87.83, 87.56, 87.76, 87.97, 87.95, 87.96, 87.95,
]  # fmt: skip


def test_bollinger_reproduces_the_stockcharts_table() -> None:
    got = _feed(BollingerBands(20, 2.0), np.array(STOCKCHARTS_BB_CLOSES))
    assert got[:19] == [None] * 19
    values = [v for v in got[19:] if isinstance(v, BollingerValue)]
    assert len(values) == len(STOCKCHARTS_BB_MID)
    # Printed to 2 decimals (a few rounded up/down across copies of the table): within a cent.
    assert [v.mid for v in values] == pytest.approx(STOCKCHARTS_BB_MID, abs=0.01)
    assert [v.upper for v in values] == pytest.approx(STOCKCHARTS_BB_UPPER, abs=0.01)
    assert [v.lower for v in values] == pytest.approx(STOCKCHARTS_BB_LOWER, abs=0.01)
    # First window by hand: mean 88.7085, population std 1.29159..., upper = mean + 2 std.
    window = STOCKCHARTS_BB_CLOSES[:20]
    mean = sum(window) / 20
    std = (sum((c - mean) ** 2 for c in window) / 20) ** 0.5
    assert values[0] == pytest.approx((88.7085, mean + 2 * std, mean - 2 * std), rel=1e-12)
    assert values[0].upper == pytest.approx(91.2919, abs=1e-4)


def test_bollinger_flat_window_collapses_exactly() -> None:
    got = _feed(BollingerBands(5, 2.0), np.array([1.0, 7.0, 3.0] + [101.7] * 8))
    assert got[-1] == BollingerValue(101.7, 101.7, 101.7)


# StockCharts ChartSchool "Stochastic Oscillator" worked example (14, 3). The close column
# starts on bar 14; earlier closes do not influence %K, so placeholders stand in.
STOCKCHARTS_STOCH_HIGH = [
    127.01, 127.62, 126.59, 127.35, 128.17, 128.43, 127.37, 126.42, 126.90, 126.85, 125.65,
    125.72, 127.16, 127.72, 127.69, 128.22, 128.27, 128.09, 128.27, 127.74, 128.77, 129.29,
    130.06, 129.12, 129.29, 128.47, 128.09, 128.65, 129.14, 128.64,
]  # fmt: skip
STOCKCHARTS_STOCH_LOW = [
    125.36, 126.16, 124.93, 126.09, 126.82, 126.48, 126.03, 124.83, 126.39, 125.72, 124.56,
    124.57, 125.07, 126.86, 126.63, 126.80, 126.71, 126.80, 126.13, 125.92, 126.99, 127.81,
    128.47, 128.06, 127.61, 127.60, 127.00, 126.90, 127.49, 127.40,
]  # fmt: skip
STOCKCHARTS_STOCH_CLOSE = [0.0] * 13 + [
    127.29, 127.18, 128.01, 127.11, 127.73, 127.06, 127.33, 128.71, 127.87, 128.58, 128.60,
    127.93, 128.11, 127.60, 127.60, 128.69, 128.27,
]  # fmt: skip
STOCKCHARTS_STOCH_K = [
    70.44, 67.61, 89.20, 65.81, 81.75, 64.52, 74.53, 98.58, 70.10, 73.06, 73.42, 61.23, 60.96,
    40.39, 40.39, 66.83, 56.73,
]  # fmt: skip


def test_stochastic_reproduces_the_stockcharts_table() -> None:
    bars = [
        np.array(s)
        for s in (STOCKCHARTS_STOCH_HIGH, STOCKCHARTS_STOCH_LOW, STOCKCHARTS_STOCH_CLOSE)
    ]
    got = _feed(Stochastic(14, 3), *bars)
    assert got[:15] == [None] * 15
    fast = _feed(Stochastic(14, 1), *bars)
    ks = [v.k for v in fast[13:] if isinstance(v, StochasticValue)]
    # The spreadsheet was computed from unrounded prices; from the printed 2-decimal prices
    # %K lands within 0.2 of it.
    assert ks == pytest.approx(STOCKCHARTS_STOCH_K, abs=0.2)
    # Bar 14 by hand: HH = 128.43 (bar 6), LL = 124.56 (bar 11), close 127.29:
    # %K = 100 * 2.73 / 3.87 = 70.5426...
    assert ks[0] == pytest.approx(100 * (127.29 - 124.56) / (128.43 - 124.56), rel=1e-12)
    # %D on bar 16 = mean of the first three %K values.
    first = got[15]
    assert isinstance(first, StochasticValue)
    assert first.k == ks[2]
    assert first.d == pytest.approx(sum(ks[:3]) / 3, rel=1e-12)


def test_stochastic_zero_range_gives_50() -> None:
    stoch = Stochastic(3, 2)
    got = [stoch.update(10.0, 10.0, 10.0) for _ in range(5)]
    assert got == [None] * 3 + [StochasticValue(50.0, 50.0)] * 2


def test_adx_hand_computed_example() -> None:
    """Period 2, every step by hand.

    bar  H     L    C     +DM  -DM  TR
    0    10    8    9     -    -    -
    1    11    9    10.5  1    0    max(2, |11-9|, |9-9|)        = 2
    2    12    10   11    1    0    max(2, |12-10.5|, |10-10.5|) = 2
         seed sums: TR2 = 4, +DM2 = 2, -DM2 = 0 -> +DI 50, -DI 0, DX 100
    3    11.5  9    9.5   0    1    max(2.5, |11.5-11|, |9-11|)  = 2.5
         TR2 = 4 - 4/2 + 2.5 = 4.5, +DM2 = 2 - 1 + 0 = 1, -DM2 = 0 - 0 + 1 = 1
         +DI = -DI = 100/4.5 = 22.22..., DX 0; ADX = mean(100, 0) = 50 (bar 2n = 4)
    4    13    11   12.5  1.5  0    max(2, |13-9.5|, |11-9.5|)   = 3.5
         TR2 = 4.5 - 2.25 + 3.5 = 5.75, +DM2 = 1 - 0.5 + 1.5 = 2, -DM2 = 1 - 0.5 + 0 = 0.5
         +DI = 200/5.75, -DI = 50/5.75, DX = 100 * 1.5 / 2.5 = 60; ADX = (50 + 60) / 2 = 55
    """
    adx = ADX(2)
    bars = [(10, 8, 9), (11, 9, 10.5), (12, 10, 11), (11.5, 9, 9.5), (13, 11, 12.5)]
    got = [adx.update(*map(float, bar)) for bar in bars]
    assert got[:3] == [None, None, None]
    assert got[3] == pytest.approx((50.0, 100 / 4.5, 100 / 4.5), rel=1e-12)
    assert got[4] == pytest.approx((55.0, 200 / 5.75, 50 / 5.75), rel=1e-12)


def test_adx_flat_market_has_zero_directional_values() -> None:
    adx = ADX(3)
    got = [adx.update(5.0, 5.0, 5.0) for _ in range(8)]
    assert got[:5] == [None] * 5
    assert got[5:] == [ADXValue(0.0, 0.0, 0.0)] * 3


def test_wma_hand_computed_example() -> None:
    # (1*1 + 2*2 + 3*3) / 6 = 14/6, then (1*2 + 2*3 + 3*4) / 6 = 20/6, then 26/6.
    got = _feed(WMA(3), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert got[:2] == [None, None]
    assert got[2:] == pytest.approx([14 / 6, 20 / 6, 26 / 6], rel=1e-12)


def test_donchian_includes_the_current_bar() -> None:
    don = Donchian(3)
    bars = [(10, 8), (12, 9), (11, 7), (15, 10), (13, 11), (12, 11)]
    got = [don.update(float(h), float(lo), float(h)) for h, lo in bars]
    assert got[:2] == [None, None]
    assert got[2:] == [
        DonchianValue(12.0, 7.0),  # bars 0-2
        DonchianValue(15.0, 7.0),  # bars 1-3: the new high is already in its own channel
        DonchianValue(15.0, 7.0),  # bars 2-4
        DonchianValue(15.0, 10.0),  # bars 3-5: the 7 has left the window
    ]


def test_donchian_snapshot_stays_bounded() -> None:
    """Steadily falling highs keep every entry live in the channel; the consumed
    prefix must still be dropped so a snapshot does not grow with the number of bars."""
    don = Donchian(20)
    sizes = []
    for i in range(20_000):
        don.update(1e6 - i, 1e6 - i - 1.0, 1e6 - i)
        if i in (1_000, 19_999):
            sizes.append(len(msgspec.msgpack.encode(don)))
    assert sizes[1] < 1.5 * sizes[0]


def test_rolling_volatility_hand_computed_example() -> None:
    # Returns ln(1.1), ln(0.9); the sample std of two values is |a - b| / sqrt(2).
    got = _feed(RollingVolatility(2), np.array([100.0, 110.0, 99.0]))
    assert got[:2] == [None, None]
    expected = abs(math.log(1.1) - math.log(0.9)) / math.sqrt(2)
    assert got[2] == pytest.approx(expected, rel=1e-12)


def test_zscore_hand_computed_example() -> None:
    # [1, 3]: mean 2, population std 1 -> +1; [3, 3]: flat -> 0.0; [3, 0]: mean 1.5, std 1.5
    # -> (0 - 1.5) / 1.5 = -1.
    got = _feed(ZScore(2), np.array([1.0, 3.0, 3.0, 0.0]))
    assert got == [None, pytest.approx(1.0), 0.0, pytest.approx(-1.0)]


# --- Construction, snapshots, validation -----------------------------------------------------


def test_positional_construction_and_defaults() -> None:
    assert BollingerBands(20, 2.0) == BollingerBands(period=20, k=2.0) == BollingerBands()
    assert (RSI().period, ATR().period, ADX().period, Donchian().period) == (14, 14, 14, 20)
    assert (Stochastic().k_period, Stochastic().d_period) == (14, 3)
    assert Stochastic(5, 2) == Stochastic(k_period=5, d_period=2)
    assert WMA(9).period == ZScore(9).period == RollingVolatility(9).period == 9
    assert ADX(14) == ADX() and Donchian(55).period == 55


BarInput = tuple[float, float, float]

FACTORIES: dict[str, tuple[Callable[[], Any], bool]] = {
    # name: (factory with a short period so resyncs and queue compaction happen, takes bars)
    "WMA": (lambda: WMA(4), False),
    "RSI": (lambda: RSI(5), False),
    "ATR": (lambda: ATR(5), True),
    "BollingerBands": (lambda: BollingerBands(4, 1.5), False),
    "Stochastic": (lambda: Stochastic(5, 3), True),
    "ADX": (lambda: ADX(4), True),
    "Donchian": (lambda: Donchian(5), True),
    "RollingVolatility": (lambda: RollingVolatility(4), False),
    "ZScore": (lambda: ZScore(4), False),
}


def _run_any(indicator: Any, bars: list[BarInput], takes_bars: bool) -> list[Output]:
    if takes_bars:
        return [indicator.update(*bar) for bar in bars]
    return [indicator.update(bar[2]) for bar in bars]


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("cut", [0, 1, 3, 9, 300, 1_500])
def test_snapshot_round_trip_mid_stream_all(name: str, cut: int) -> None:
    factory, takes_bars = FACTORIES[name]
    high, low, close = _bars(3_000, seed=12, coarse=True)
    bars = list(zip(high.tolist(), low.tolist(), close.tolist(), strict=True))
    straight = _run_any(factory(), bars, takes_bars)

    first = factory()
    head = _run_any(first, bars[:cut], takes_bars)
    blob = msgspec.msgpack.encode(first)
    second = msgspec.msgpack.decode(blob, type=type(first))
    assert second == first
    tail = _run_any(second, bars[cut:], takes_bars)
    assert head + tail == straight  # bit-identical, not merely close


SLOTTED: dict[str, tuple[Callable[[], Any], type[Slotted], bool]] = {
    # name: (factory with a short period, its slotted form, takes bars)
    "EMA": (lambda: EMA(4), SlottedEMA, False),
    "RSI": (lambda: RSI(5), SlottedRSI, False),
    "ATR": (lambda: ATR(5), SlottedATR, True),
    "ADX": (lambda: ADX(4), SlottedADX, True),
    "BollingerBands": (lambda: BollingerBands(4, 1.5), SlottedBollingerBands, False),
    "Stochastic": (lambda: Stochastic(5, 3), SlottedStochastic, True),
}


@pytest.mark.parametrize("name", list(SLOTTED))
@pytest.mark.parametrize("cut", [0, 3, 1_500])
def test_slotted_form_steps_and_stores_as_its_struct(name: str, cut: int) -> None:
    """Taken over mid-stream, a slotted form gives the struct's outputs bit for bit, and its
    ``store`` leaves the struct as if the struct had taken every step itself."""
    factory, slotted_type, takes_bars = SLOTTED[name]
    high, low, close = _bars(3_000, seed=12, coarse=True)
    bars = list(zip(high.tolist(), low.tolist(), close.tolist(), strict=True))
    straight = factory()
    expected = _run_any(straight, bars, takes_bars)
    record = factory()
    head = _run_any(record, bars[:cut], takes_bars)
    slotted = slotted_type(record)
    for i in range(cut, len(bars), 700):
        head += _run_any(slotted, bars[i : min(i + 700, len(bars))], takes_bars)
        slotted.store()
    assert head == expected
    assert msgspec.msgpack.encode(record) == msgspec.msgpack.encode(straight)


def test_tagged_union_of_all_indicators_decodes() -> None:
    """Strategies keep indicators in union-typed fields; the tags make that decodable."""
    indicators = [SMA(3), EMA(3), *(factory() for factory, _ in FACTORIES.values())]
    union = (
        SMA | EMA | WMA | RSI | ATR | BollingerBands | Stochastic | ADX | Donchian
        | RollingVolatility | ZScore
    )  # fmt: skip
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(indicators), type=list[union])
    assert decoded == indicators


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: WMA(0), "WMA period must be an integer >= 1"),
        (lambda: RSI(0), "RSI period must be an integer >= 1"),
        (lambda: RSI(-3), "RSI period"),
        (lambda: ATR(0), "ATR period"),
        (lambda: BollingerBands(0), "BollingerBands period"),
        (lambda: BollingerBands(20, -2.0), "BollingerBands k must be a finite number > 0"),
        (lambda: BollingerBands(20, 0.0), "BollingerBands k"),
        (lambda: BollingerBands(20, math.nan), "BollingerBands k"),
        (lambda: BollingerBands(20, math.inf), "BollingerBands k"),
        (lambda: Stochastic(0, 3), "Stochastic k_period"),
        (lambda: Stochastic(14, 0), "Stochastic d_period"),
        (lambda: ADX(0), "ADX period"),
        (lambda: Donchian(0), "Donchian period"),
        (lambda: Donchian(-1), "Donchian period"),
        (lambda: RollingVolatility(1), "RollingVolatility period must be an integer >= 2"),
        (lambda: ZScore(1), "ZScore period must be an integer >= 2"),
        (lambda: WMA(2.5), "WMA period must be an integer"),  # type: ignore[arg-type]
    ],
)
def test_bad_parameters_raise_value_error(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("cls", "fields"),
    [
        (WMA, {"period": 0}),
        (BollingerBands, {"period": 20, "k": -1.0}),
        (Stochastic, {"d_period": 0}),
        (ZScore, {"period": 1}),
    ],
)
def test_decoding_bad_parameters_is_rejected(cls: type, fields: dict[str, Any]) -> None:
    blob = msgspec.msgpack.encode({"type": cls.__name__, **fields})
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(blob, type=cls)
