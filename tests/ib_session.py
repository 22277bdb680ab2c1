"""A whole ``keel up`` fleet trading IB's paper account on the TWS fake.

``IbSession`` starts its own nats-server, the TWS fake on a steadily rising price path (so
the trend follower enters within a few bars and then holds), a config whose ib venue
(``mode = "demo"``, account ``DU…``) names AAPL and the ES front month, and ``keel up`` on
the fake's exchange time (``KEEL_TEST_CLOCK``). It then reads back what the fleet stored
(``FleetSession``), for ``tests/test_ib_up.py``.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from zoneinfo import ZoneInfo

from contracts.events import PositionChanged
from tests.fakes.__main__ import toml_value
from tests.fakes.clock import ScaledClock
from tests.fakes.prices import Candle, PricePath, snap
from tests.fakes.tws.__main__ import venue_toml
from tests.fakes.tws.server import TwsFake
from tests.fleet_session import FleetSession
from tests.gateway_session import STRATEGY

RATE = 60.0
NS = 1_000_000_000
MINUTE_NS = 60 * NS
VENUE = "ib"
SYMBOLS = ("AAPL", "ES")
QTY = 2.0
"""Shares of AAPL and contracts of ES per entry (each filled in one execution)."""
RECONCILE_S = 120.0
"""``[venues.gateway] reconcile_every_s``, exchange seconds (two wall seconds)."""


class RisingPath(PricePath):
    """Five-second candles on a rise of 0.2 % a minute, every fourth minute down 0.05 %
    (so RSI stays below 100, and the 2-bar average never meets the 3-bar one: with a dip
    of half the rise they meet two bars later and the trend follower exits), counted from
    ``origin_ns``'s minute and aligned to the minute, so each 1-minute bar rises or dips
    as a whole."""

    def __init__(self, origin_ns: int) -> None:
        super().__init__()
        self.origin = origin_ns // MINUTE_NS

    def _log_level(self, at_ns: int) -> float:
        minutes, into = divmod(at_ns // NS - self.origin * 60, 60)
        at_minute = minutes * 0.002 - (minutes // 4) * 0.0025
        slope = -0.0005 if minutes % 4 == 3 else 0.002
        return at_minute + slope * into / 60

    def candle(self, symbol: str, open_ns: int) -> Candle:
        spec = self._spec(symbol)
        tick = spec.tick_size
        o = spec.price * math.exp(self._log_level(open_ns))
        c = spec.price * math.exp(self._log_level(open_ns + self.step_ns))
        high, low = snap(max(o, c) * 1.0002, tick), snap(min(o, c) * 0.9998, tick)
        o, c = snap(o, tick), snap(c, tick)
        return Candle(open_ns, o, max(high, o, c), min(low, o, c), c, 100.0, 10)


def exchange_start() -> int:
    """10:00 New York time on the last weekday at least a day before now: the stock's
    regular hours (the fake fills stock orders only then) and ES's session."""
    zone = ZoneInfo("America/New_York")
    day = dt.datetime.now(zone).date() - dt.timedelta(days=1)
    while day.weekday() >= 5:
        day -= dt.timedelta(days=1)
    return int(dt.datetime.combine(day, dt.time(10, 0), zone).timestamp()) * NS


def fleet_toml(port: int, account: str, gateway_extra: dict[str, float]) -> str:
    gateway = {
        "poll_after_s": 30.0,
        "poll_every_s": 5.0,
        "reconcile_every_s": RECONCILE_S,
        **gateway_extra,
    }
    params = toml_value({**STRATEGY, "qty": QTY})
    symbols = toml_value(list(SYMBOLS))
    return f"""
[market]
venue = "{VENUE}"
symbols = {symbols}
interval = "1m"

[[strategies]]
name = "trend_follower"
symbols = {symbols}
params = {params}

[risk]
brackets = true

{venue_toml("127.0.0.1", port, account)}

[venues.gateway]
{chr(10).join(f"{k} = {toml_value(v)}" for k, v in gateway.items())}
"""


class IbSession(FleetSession):
    """The TWS fake, its own nats-server and ``keel up`` in ``work``."""

    def __init__(self, work: Path, gateway_extra: dict[str, float]) -> None:
        super().__init__(work, ScaledClock(exchange_start(), RATE))
        self.gateway_extra = gateway_extra
        self.tws = TwsFake(self.clock)
        self.tws.market.five = RisingPath(self.clock.now_ns())
        self.tws.broker.max_fill = 1.0  # each entry of 2 fills in two executions

    async def start(self) -> None:
        await self._open()
        await self.tws.start()
        await self._launch(fleet_toml(self.tws.port, self.tws.account, self.gateway_extra))

    async def _stop_venue(self) -> None:
        await self.tws.stop()

    async def positions(self) -> dict[str, float]:
        """The portfolio's latest position per symbol of the ib venue."""
        changes = await self.events("PORTFOLIO", "pf.position.>", PositionChanged)
        return {p.symbol: p.qty for p in changes if p.venue == VENUE}
