"""A whole ``keel up`` fleet trading one exchange fake through its venue gateway.

``GatewaySession`` starts its own nats-server, the fake (on a rising price path, so a trend
strategy enters within a few bars and then holds), a config whose one ``[[venues]]`` entry
points ccxt at the fake in the venue's test mode (``MODES``) with the credentials in
environment variables, and ``keel up`` on the fake's exchange time (``KEEL_TEST_CLOCK``).
It then reads back what the fleet stored and what the exchange holds (``FleetSession``),
for ``tests/test_gateway_e2e.py``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from contracts.events import Bar, PositionChanged
from tests.fakes.__main__ import toml_value, venue_toml
from tests.fakes.clock import ScaledClock
from tests.fakes.core import FakeExchange, start_fake
from tests.fakes.prices import Candle, PricePath, default_symbols, snap, unit
from tests.fleet_session import FleetSession
from tests.gateway_harness import secret_for

RATE = 60.0
STEP = 60_000_000_000
NS = 1_000_000_000
VENUE = "vx"
KEY = "e2e-test-key-0123456789"
KEY_ENV, SECRET_ENV = "KEEL_E2E_KEY", "KEEL_E2E_SECRET"
MODES = {
    "binance": "sandbox",
    "binanceusdm": "sandbox",
    "bybit": "sandbox",
    "kraken": "live",  # ccxt knows no Kraken spot testnet: a live entry pointed at the fake
    "krakenfutures": "sandbox",  # ccxt's Kraken Futures test URLs are its demo environment
}
RECONCILE_S = 120.0
"""``[venues.gateway] reconcile_every_s``, exchange seconds (two wall seconds)."""
CYCLE = 3000
"""Bars in the price path before it starts over (``PricePath.from_bars`` reuses it)."""
START_AT = 200
"""Where in the path exchange time starts: history behind, the whole rise ahead."""
STRATEGY = {  # warm after a few bars; on a steady rise it enters and holds until a drop
    "fast": 2,
    "slow": 3,
    "htf_factor": 1,
    "htf_period": 3,
    "rsi_period": 3,
    "rsi_min": 0,
    "rsi_max": 99.9,
    "rsi_exit": 100,
    "atr_period": 3,
    "atr_stop_mult": 2,
    "atr_target_mult": 200,
    "cooldown_bars": 1000,  # no second entry after the stop
}


def rising_bars() -> list[Bar]:
    """Up 0.05 % a bar, every fourth bar down 0.02 %: fast above slow, close above the
    higher-timeframe average, and the dips keep RSI below 100."""
    bars: list[Bar] = []
    price = 100.0
    for k in range(CYCLE):
        close = price * (0.9998 if k % 4 == 3 else 1.0005)
        high, low = max(price, close) * 1.0003, min(price, close) * 0.9997
        bars.append(
            Bar(
                ts=(k + 1) * STEP,
                venue="path",
                symbol="X",
                interval="1m",
                open_time=k * STEP,
                close_time=(k + 1) * STEP,
                open=price,
                high=high,
                low=low,
                close=close,
                volume=10.0,
            )
        )
        price = close
    return bars


class DroppingPath(PricePath):
    """The rising path, until ``drop``: from then on every candle is ``factor`` lower (a gap
    down at a minute's open, so the candles already shown stay as they were)."""

    def __init__(self, seed: int = 0, bars: Sequence[Bar] = ()) -> None:
        super().__init__(seed, bars)
        self.drop_ns: int | None = None
        self.factor = 1.0

    def drop(self, at_ns: int, factor: float) -> None:
        self.drop_ns, self.factor = at_ns, factor

    def candle(self, symbol: str, open_ns: int) -> Candle:
        c = super().candle(symbol, open_ns)
        if self.drop_ns is None or open_ns < self.drop_ns:
            return c
        tick, f = self._spec(symbol).tick_size, self.factor
        o, h, lo, cl = (snap(x * f, tick) for x in (c.open, c.high, c.low, c.close))
        return Candle(open_ns, o, h, lo, cl, c.volume, c.trades)


def exchange_start(symbol: str) -> int:
    """Exchange time hours behind the wall (ccxt clamps some requests to its own clock), at
    a minute where ``symbol`` is ``START_AT`` bars into its cycle, 20 s into the minute."""
    offset = int(unit(symbol, "offset") * CYCLE)
    k = time.time_ns() // STEP - 3 * 60
    k -= (k + offset - START_AT) % CYCLE
    return k * STEP + 20 * NS


def fleet_toml(fake: FakeExchange, symbol: str, qty: float) -> str:
    mode = MODES[fake.exchange_id]
    entry = {
        **fake.venue_entry(VENUE),
        "mode": mode,
        ("live" if mode == "live" else mode): True,
        "timeout_ms": 3000,
        "credentials": {"api_key_env": KEY_ENV, "secret_env": SECRET_ENV},
    }
    gateway = {"poll_after_s": 30.0, "poll_every_s": 5.0, "reconcile_every_s": RECONCILE_S}
    params = toml_value({**STRATEGY, "qty": qty})
    return f"""
[market]
venue = "{VENUE}"
symbols = ["{symbol}"]
interval = "1m"
quotes = true

[[strategies]]
name = "trend_follower"
symbols = ["{symbol}"]
params = {params}

[risk]
brackets = true
max_signal_lag = "1h"  # exchange time runs 60x: a bar a second, which five loaded fleets lag

{venue_toml(entry)}

[venues.gateway]
{chr(10).join(f"{k} = {toml_value(v)}" for k, v in gateway.items())}
"""


class GatewaySession(FleetSession):
    """One exchange fake, its own nats-server and ``keel up`` in ``work``."""

    def __init__(
        self, exchange_id: str, work: Path, balances: dict[str, float] | None = None
    ) -> None:
        spec = default_symbols(exchange_id, 1)[0]
        super().__init__(work, ScaledClock(exchange_start(spec.symbol), RATE), f"{exchange_id}: ")
        self.balances = balances
        self.path = DroppingPath.from_bars(rising_bars())
        self.exchange_id = exchange_id
        self.spec = spec
        self.symbol = spec.symbol
        self.qty = round(max(spec.lot_size, 20.0 / spec.price) * 10, 8)
        self.fake: FakeExchange | None = None

    async def start(self) -> None:
        await self._open()
        self.fake = await start_fake(
            self.exchange_id, [self.spec], self.clock, path=self.path, balances=self.balances
        )
        live = ["--live"] if MODES[self.exchange_id] == "live" else []
        credentials = {KEY_ENV: KEY, SECRET_ENV: secret_for(self.fake)}
        await self._launch(fleet_toml(self.fake, self.symbol, self.qty), *live, env=credentials)

    async def _stop_venue(self) -> None:
        fake, self.fake = self.fake, None
        if fake is not None:
            await fake.stop()

    async def stop(self) -> None:
        """Ctrl-C: ``keel up`` stops its workers and exits; then the fake and the server.
        Stopping twice does nothing more."""
        try:
            await super().stop()
        finally:
            self.close_server()

    async def positions(self) -> list[PositionChanged]:
        return await self.events("PORTFOLIO", "pf.position.>", PositionChanged)

    async def status(self, *args: str) -> str:
        """``keel status`` of this fleet, its output as text."""
        return await self.keel("status", *args)
