"""Prices of an exchange fake: the markets it lists and a deterministic OHLCV path.

``PricePath`` gives every symbol one candle per interval, synthetic (a smooth wander with a
little noise, from a seed) or a real bar file reused cyclically and scaled to each symbol's
start price; ``partial`` is the forming candle as known part-way, converging on the closed
one. Prices sit on the symbol's tick, volumes on its lot.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from contracts.events import Bar

NS = 1_000_000_000


@functools.cache
def decimals(step: float) -> int:
    """Digits after the point that ``step`` needs (0.001 -> 3, 1 -> 0)."""
    text = f"{step:.12f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


@functools.cache
def _format_spec(step: float, digits: int) -> str:
    return f".{max(digits, decimals(step))}f"


def fmt(value: float, step: float, digits: int = 8) -> str:
    """``value`` as the exchange writes it: a string with at least ``digits`` places."""
    return format(value, _format_spec(step, digits))


def snap(value: float, step: float) -> float:
    """``value`` rounded to a multiple of ``step`` (never below one step)."""
    return round(max(step, round(value / step) * step), decimals(step))


class SymbolSpec(msgspec.Struct, frozen=True):
    """One market as the fake lists it (ccxt unified symbol)."""

    symbol: str
    base: str
    quote: str
    settle: str = ""
    kind: Literal["spot", "perpetual"] = "spot"
    tick_size: float = 0.01
    lot_size: float = 0.001
    min_notional: float = 5.0
    contract_size: float = 1.0
    price: float = 100.0


class Candle(msgspec.Struct, frozen=True):
    open_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int


def unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return struct.unpack("<Q", digest)[0] / 2**64


class PricePath:
    """Deterministic OHLCV per symbol per candle: synthetic, or a real bar file reused
    cyclically and scaled to each symbol's start price. ``partial`` converges on ``candle``."""

    def __init__(self, seed: int = 0, bars: Sequence[Bar] = ()) -> None:
        self.seed = seed
        self.bars = tuple(bars)
        self.step_ns = (self.bars[0].close_time - self.bars[0].open_time) if self.bars else 0
        self.specs: dict[str, SymbolSpec] = {}
        self._cache: dict[tuple[str, int], Candle] = {}

    @classmethod
    def synthetic(cls, seed: int = 0) -> PricePath:
        return cls(seed=seed)

    @classmethod
    def from_bars(cls, bars: Sequence[Bar]) -> PricePath:
        if not bars:
            raise ValueError("PricePath.from_bars needs at least one bar")
        return cls(bars=bars)

    def register(self, specs: Iterable[SymbolSpec], step_ns: int) -> None:
        """Know these markets; a changed one (a new tick size) forgets its cached candles."""
        changed: set[str] = set()
        for spec in specs:
            known = self.specs.get(spec.symbol)
            if known is not None and known != spec:
                changed.add(spec.symbol)
            self.specs[spec.symbol] = spec
        if changed:
            self._cache = {key: c for key, c in self._cache.items() if key[0] not in changed}
        if not self.bars:
            self.step_ns = step_ns

    def _spec(self, symbol: str) -> SymbolSpec:
        spec = self.specs.get(symbol)
        if spec is None:
            base, _, quote = symbol.partition("/")
            spec = SymbolSpec(symbol, base, quote.partition(":")[0])
            self.specs[symbol] = spec
        return spec

    def _level(self, symbol: str, k: int) -> float:
        """Price level at the start of candle ``k``: a smooth wander with a little noise."""
        phase = unit(self.seed, symbol, "phase") * 2 * math.pi
        drift = 0.02 * math.sin(k / 97 + phase) + 0.008 * math.sin(k / 13 + 2 * phase)
        noise = 0.002 * (unit(self.seed, symbol, k) - 0.5)
        return math.exp(drift + noise)

    def candle(self, symbol: str, open_ns: int) -> Candle:
        key = (symbol, open_ns)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if len(self._cache) > 50_000:
            self._cache.clear()
        spec = self._spec(symbol)
        k = open_ns // self.step_ns
        if self.bars:
            offset = int(unit(symbol, "offset") * len(self.bars))
            bar = self.bars[(k + offset) % len(self.bars)]
            scale = spec.price / self.bars[0].open
            o, h, lo, c, v = bar.open, bar.high, bar.low, bar.close, bar.volume
            o, h, lo, c = o * scale, h * scale, lo * scale, c * scale
            volume = v / scale if v > 0 else spec.lot_size * 10
        else:
            o = spec.price * self._level(symbol, k)
            c = spec.price * self._level(symbol, k + 1)
            h = max(o, c) * (1 + 0.001 * unit(self.seed, symbol, k, "h"))
            lo = min(o, c) * (1 - 0.001 * unit(self.seed, symbol, k, "l"))
            volume = spec.lot_size * (50 + 1000 * unit(self.seed, symbol, k, "v"))
        tick = spec.tick_size
        o, c = snap(o, tick), snap(c, tick)
        candle = Candle(
            open_ns=open_ns,
            open=o,
            high=max(snap(h, tick), o, c),
            low=min(snap(lo, tick), o, c),
            close=c,
            volume=snap(volume, spec.lot_size),
            trades=10 + int(90 * unit(self.seed, symbol, k, "n")),
        )
        self._cache[key] = candle
        return candle

    def partial(self, symbol: str, open_ns: int, fraction: float) -> Candle:
        """The forming candle as known at ``fraction`` of its interval: high and low only
        widen, and at 1.0 it is ``candle()``."""
        full = self.candle(symbol, open_ns)
        f = min(1.0, max(0.0, fraction))
        if f >= 1.0:
            return full
        spec = self._spec(symbol)
        tick, lot = spec.tick_size, spec.lot_size
        close = snap(full.open + (full.close - full.open) * f, tick)
        top, bottom = max(full.open, full.close), min(full.open, full.close)
        high = snap(max(full.open, close) + (full.high - top) * f, tick)
        low = snap(min(full.open, close) - (bottom - full.low) * f, tick)
        return Candle(
            open_ns=open_ns,
            open=full.open,
            high=min(max(high, close, full.open), full.high),
            low=max(min(low, close, full.open), full.low),
            close=close,
            volume=round(math.floor(full.volume * f / lot) * lot, decimals(lot)),
            trades=int(full.trades * f),
        )


BASE_PRICES = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0, "XRP": 0.5, "DOGE": 0.15}
QUOTES = {"kraken": "USD", "krakenfutures": "USD"}


def default_symbols(
    exchange_id: str, n: int, kind: Literal["spot", "perpetual"] | None = None
) -> list[SymbolSpec]:
    """``n`` plausible markets: BTC, ETH, SOL, XRP, DOGE, then C001, C002... (600 and more).
    ``binanceusdm`` and ``krakenfutures`` list perpetuals (``BASE/QUOTE:SETTLE``), the others
    spot, unless ``kind`` says (``bybit`` serves both)."""
    quote = QUOTES.get(exchange_id, "USDT")
    if kind is None:
        kind = "perpetual" if exchange_id in ("binanceusdm", "krakenfutures") else "spot"
    perpetual = kind == "perpetual"
    out: list[SymbolSpec] = []
    names = list(BASE_PRICES)
    for i in range(n):
        base = names[i] if i < len(names) else f"C{i - len(names) + 1:03d}"
        price = BASE_PRICES.get(base, round(1 + 200 * unit(base, "price"), 2))
        magnitude = math.floor(math.log10(price))
        tick = round(10.0 ** (magnitude - 5), 12)
        lot = round(10.0 ** -min(8, max(0, magnitude - 1)), 8)
        settle = quote if perpetual else ""
        symbol = f"{base}/{quote}:{settle}" if perpetual else f"{base}/{quote}"
        out.append(
            SymbolSpec(
                symbol=symbol,
                base=base,
                quote=quote,
                settle=settle,
                kind="perpetual" if perpetual else "spot",
                tick_size=tick,
                lot_size=lot,
                min_notional=5.0 if quote == "USDT" else 0.0,
                contract_size=1.0,
                price=snap(price, tick),
            )
        )
    return out
