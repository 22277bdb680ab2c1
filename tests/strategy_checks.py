"""What the bar-driven strategy tests share: a seeded random walk, running a strategy over
bars, the snapshot-continues check and the real-data command-line run."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from contracts.events import Bar, Event
from strategies.registry import Strategy
from tests import factories
from tests.test_backtest_cli import keel, last_json

DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "binanceus-1m-2023-03" / "BTCUSDT.csv"
)
WEEK = ["--start", "2023-03-08T00:00:00Z", "--end", "2023-03-15T00:00:00Z"]


def random_walk(
    n: int,
    seed: int,
    *,
    drift: float = 0.0,
    wick: float = 0.003,
    volume: Callable[[random.Random], float] = lambda _rng: 1.0,
) -> list[Bar]:
    """One symbol's minute bars: log-normal closes (1% per bar), wicks up to ``wick`` of the
    price beyond the body, open = the previous close."""
    rng = random.Random(seed)
    bars: list[Bar] = []
    price = 100.0
    for i in range(n):
        open_ = price
        price *= math.exp(rng.gauss(drift, 0.01))
        high = max(open_, price) * (1 + rng.random() * wick)
        low = min(open_, price) * (1 - rng.random() * wick)
        bars.append(
            factories.bar(price, open=open_, high=high, low=low, volume=volume(rng), index=i)
        )
    return bars


def run(strat: Strategy, bars: Sequence[Bar]) -> list[tuple[int, Event]]:
    """Every output with the 1-based number of the bar that produced it."""
    out: list[tuple[int, Event]] = []
    for n, bar in enumerate(bars, start=1):
        out.extend((n, s) for s in strat.on_bar(bar))
    return out


def assert_snapshot_continues(
    make: Callable[[], Strategy], bars: Sequence[Bar], cuts: Sequence[int]
) -> list[tuple[int, Event]]:
    """A snapshot at each cut restored into a fresh instance continues exactly like the
    uninterrupted run; returns that run."""
    straight = run(make(), bars)
    for cut in cuts:
        first = make()
        head = run(first, bars[:cut])
        second = make()
        second.restore(first.snapshot())
        tail = [(n + cut, s) for n, s in run(second, bars[cut:])]
        assert head + tail == straight, cut
    return straight


def assert_real_week_reproducible(tmp_path: Path, name: str, *params: str) -> dict:
    """``keel backtest`` of one real week twice: it trades and gives the same hash."""
    if not DATA.is_file():
        pytest.skip(f"real data not available at {DATA}")
    args = ["backtest", "--data", str(DATA), "--strategy", name, *WEEK, "--json"]
    for param in params:
        args += ["--param", param]
    first = last_json(keel(tmp_path, *args))
    second = last_json(keel(tmp_path, *args))
    assert first["bars"] == 7 * 24 * 60
    assert first["signals"] > 0
    assert first["result_hash"] == second["result_hash"]
    return first
