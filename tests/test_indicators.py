"""Incremental SMA/EMA against a vectorised numpy reference, warm-up, snapshots, validation."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.indicators import EMA, SMA

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
