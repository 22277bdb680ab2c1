"""A hand-made market and its hand-computed outcome, shared by the end-to-end tests.

SMA(2) vs SMA(3), long/short, 1 unit, fee 10 bps, no slippage, 1,000 starting cash:
- bar 3 is the first warm bar (fast 11.5 > slow 11): no signal;
- bar 5 (close 10): fast 10.5 < slow 11 -> target -1 -> sell 1, filled at bar 6's open 10;
- bar 8 (close 12): fast 11 > slow 10.333 -> target +1 -> buy 2, filled at bar 9's open 12;
- fees 0.010 + 0.024; realized (10 - 12) * 1 = -2; cash 1000 + 10 - 0.01 - 24 - 0.024 = 985.966;
- at bar 10's close (12): position +1 @ 12, equity 985.966 + 12 = 997.966.
Opens equal the previous close, so "same bar's close" fills give the same prices.
"""

from __future__ import annotations

from collections.abc import Sequence

from contracts.events import Bar
from tests.factories import T0_ON_MINUTE as T0
from tests.factories import bars_from_closes

VENUE = "test"
SYMBOL = "BTC/USDT"
CLOSES = [10.0, 11.0, 12.0, 11.0, 10.0, 9.0, 10.0, 12.0, 13.0, 12.0]

CONFIG = """
[[strategies]]
name = "ma_cross"
instance = "ma"
params = { kind = "sma", fast = 2, slow = 3, mode = "long_short", qty = 1 }

[risk]
allowed_symbols = ["BTC/USDT"]
max_position = 5

[execution]
fill = "{fill}"
fee_bps = 10
slippage_bps = 0

[portfolio]
starting_cash = 1000
"""

EXPECTED_FILLS = [("sell", 1.0, 10.0, 0.010), ("buy", 2.0, 12.0, 0.024)]
EXPECTED_EQUITY = 997.966


def bars(closes: Sequence[float] = CLOSES, symbol: str = SYMBOL, start: int = T0) -> list[Bar]:
    """The scenario's market: each bar opens at the previous close, wicks half a point out."""
    return bars_from_closes(closes, wick=0.5, start=start, symbol=symbol, venue=VENUE)
