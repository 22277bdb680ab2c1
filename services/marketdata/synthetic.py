"""A deterministic synthetic market: the project's own data for demos and default tests.

Each symbol follows a regime-switching random walk in log price. A sticky three-state Markov
chain picks the regime of every bar:

* bull: positive drift, low volatility;
* bear: negative drift, higher volatility;
* range: no drift, low volatility, and mean reversion towards the price where it began.

Regimes last about fifty bars (stay probability 0.98). Within a regime log returns are
normal; drift and volatility scale with the square root of the interval, so the
signal-to-noise ratio per bar is the same at any interval. Each bar opens at the previous
close, wicks extend a positive random amount beyond the open and close, and volume is
positive and larger in volatile regimes and on big moves. The true regime of every bar is
available from ``regimes()`` so regime-detection models can be scored.

Same parameters, same bars: every symbol draws from its own generator, seeded by ``seed``
and a SHA-256 of the symbol, so adding a symbol does not change the others.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import msgspec
import numpy as np

from contracts.events import Bar
from contracts.intervals import UNIT_NS, interval_ns

REGIMES = ("bull", "bear", "range")
_RANGE = REGIMES.index("range")
_STAY = 0.98
_DRIFT = np.array([2e-4, -2e-4, 0.0])  # per bar at 1m
_VOLATILITY = np.array([8e-4, 1.6e-3, 6e-4])  # per bar at 1m
_REVERSION = np.array([0.0, 0.0, 0.05])  # share of the gap to the anchor closed per bar
_WICK = 0.5  # wick size as a share of the regime's volatility
_NOTIONAL_PER_MINUTE = 200_000.0
_KNOWN_PRICES = {"BTC/USDT": 30_000.0, "ETH/USDT": 2_000.0, "SOL/USDT": 50.0}


class _Path(NamedTuple):
    """One symbol's simulated bars as arrays, before they become events."""

    regimes: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray


class SyntheticMarket(msgspec.Struct, frozen=True):
    """Parameters of a reproducible multi-symbol market; ``start_ns`` snaps to the interval."""

    symbols: tuple[str, ...] = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
    venue: str = "sim"
    interval: str = "1m"
    bars: int = 500
    seed: int = 7
    start_ns: int = 1_700_000_000_000_000_000

    def __post_init__(self) -> None:
        if self.bars < 1:
            raise ValueError(f"bars must be >= 1, got {self.bars}")
        symbols = tuple(self.symbols)
        if not symbols:
            raise ValueError("symbols must not be empty")
        if not all(isinstance(symbol, str) and symbol for symbol in symbols):
            raise ValueError("symbols must be non-empty strings")
        repeated = sorted({symbol for symbol in symbols if symbols.count(symbol) > 1})
        if repeated:
            raise ValueError(f"symbols must be unique; repeated: {', '.join(repeated)}")
        if not self.venue:
            raise ValueError("venue must not be empty")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.start_ns < 0:
            raise ValueError(f"start_ns must be >= 0, got {self.start_ns}")
        step = interval_ns(self.interval)
        msgspec.structs.force_setattr(self, "symbols", symbols)
        msgspec.structs.force_setattr(self, "start_ns", self.start_ns - self.start_ns % step)

    def generate(self) -> Iterator[Bar]:
        """All bars in event-time order: per time step, one bar per symbol in symbols order."""
        step = interval_ns(self.interval)
        columns = []
        for symbol in self.symbols:
            path = self._simulate(symbol)
            columns.append(
                (
                    symbol,
                    path.open.tolist(),
                    path.high.tolist(),
                    path.low.tolist(),
                    path.close.tolist(),
                    path.volume.tolist(),
                )
            )
        for index in range(self.bars):
            open_time = self.start_ns + index * step
            close_time = open_time + step
            for symbol, opens, highs, lows, closes, volumes in columns:
                yield Bar(
                    ts=close_time,
                    venue=self.venue,
                    symbol=symbol,
                    interval=self.interval,
                    open_time=open_time,
                    close_time=close_time,
                    open=opens[index],
                    high=highs[index],
                    low=lows[index],
                    close=closes[index],
                    volume=volumes[index],
                )

    def regimes(self) -> dict[str, list[str]]:
        """The true regime label of every bar, per symbol, aligned with ``generate()``."""
        return {
            symbol: [REGIMES[state] for state in self._simulate(symbol).regimes.tolist()]
            for symbol in self.symbols
        }

    def _simulate(self, symbol: str) -> _Path:
        """Vectorised draws for one symbol; only the mean-reverting recursion is a loop."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _symbol_key(symbol)]))
        scale = math.sqrt(interval_ns(self.interval) / UNIT_NS["m"])
        states = _regime_path(rng, self.bars)
        volatility = _VOLATILITY[states] * scale
        shocks = (_DRIFT[states] * scale + volatility * rng.standard_normal(self.bars)).tolist()
        reversion = _REVERSION[states].tolist()
        starts_range = np.flatnonzero(
            (states == _RANGE) & (np.concatenate(([-1], states[:-1])) != _RANGE)
        )
        start_price = _start_price(symbol)
        level = anchor = math.log(start_price)
        entries = set(starts_range.tolist())
        log_close = []
        for index, (shock, pull) in enumerate(zip(shocks, reversion, strict=True)):
            if index in entries:
                anchor = level
            level += shock - pull * (level - anchor)
            log_close.append(level)
        close = np.exp(np.array(log_close))
        open_ = np.concatenate(([start_price], close[:-1]))
        wick_up = np.abs(rng.standard_normal(self.bars)) * volatility * _WICK
        wick_down = np.abs(rng.standard_normal(self.bars)) * volatility * _WICK
        high = np.maximum(open_, close) * np.exp(wick_up)
        low = np.minimum(open_, close) * np.exp(-wick_down)
        move = np.abs(np.log(close / open_)) / volatility
        base_volume = _NOTIONAL_PER_MINUTE * scale**2 / start_price
        volume = (
            base_volume
            * (volatility / (_VOLATILITY[0] * scale))
            * (1.0 + move)
            * np.exp(0.4 * rng.standard_normal(self.bars))
        )
        return _Path(states, open_, high, low, close, volume)


def _regime_path(rng: np.random.Generator, bars: int) -> np.ndarray:
    """Regime per bar from geometric run lengths, each run switching to another regime."""
    lengths = rng.geometric(1.0 - _STAY, size=bars // 25 + 8)
    while lengths.sum() < bars:
        lengths = np.concatenate((lengths, rng.geometric(1.0 - _STAY, size=bars // 25 + 8)))
    switches = rng.integers(1, len(REGIMES), size=len(lengths) - 1)
    first = rng.integers(len(REGIMES))
    states = (first + np.concatenate(([0], np.cumsum(switches)))) % len(REGIMES)
    return np.repeat(states, lengths)[:bars]


def _symbol_key(symbol: str) -> int:
    """A stable 64-bit number for a symbol (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:8], "big")


def _start_price(symbol: str) -> float:
    """Familiar prices for the default symbols, else 10 to 10,000 derived from the name."""
    if symbol in _KNOWN_PRICES:
        return _KNOWN_PRICES[symbol]
    fraction = _symbol_key(symbol) / 2**64
    return round(10 ** (1 + 3 * fraction), 2)
