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

from contracts.events import Bar

VENUE = "test"
SYMBOL = "BTC/USDT"
MINUTE = 60 * 10**9
T0 = 1_700_000_040 * 10**9 // MINUTE * MINUTE
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


def bars(closes: list[float] = CLOSES, symbol: str = SYMBOL, start: int = T0) -> list[Bar]:
    out: list[Bar] = []
    previous = closes[0]
    for i, close in enumerate(closes):
        open_time = start + i * MINUTE
        out.append(
            Bar(
                ts=open_time + MINUTE,
                venue=VENUE,
                symbol=symbol,
                interval="1m",
                open_time=open_time,
                close_time=open_time + MINUTE,
                open=previous,
                high=max(previous, close) + 0.5,
                low=min(previous, close) - 0.5,
                close=close,
                volume=1.0,
            )
        )
        previous = close
    return out
