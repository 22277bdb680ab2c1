"""Guards: the stablecoin depeg guard and the perpetual funding guard, as pure state machines.

**Depeg.** The rate of ``asset`` in ``reference`` (USDC in USD) is derived from instruments
that share a base: ``rate = P(base/reference) / P(base/asset)`` with the latest closes (BTC
at 100,000 USD and 101,000 USDC: one USDC is worth 0.990 USD), or read directly from an
``asset/reference`` market; several bases give their median. Beyond ``threshold_pct`` from
1.0 the guard trips: entries quoted in ``asset`` are rejected (``halt_entries``) and, with
``action = "flatten"``, every position quoted in it is closed. It resumes once the rate has
stayed inside the band for ``resume_after`` (event time, measured on the rate's updates).

**Funding.** A ``FundingRate`` beyond ``threshold_pct`` (percent per funding interval) puts
the paying side (longs when positive) of that perpetual under the guard: entries that grow
exposure on that side are rejected (``block``); ``trim`` also cuts positions on that side by
``trim_pct`` percent when the guard trips. It clears when the rate is back inside.
"""

from __future__ import annotations

import statistics

import msgspec

from contracts.keys import InstrumentId
from services.risk.limits import DepegGuard, FundingGuard


class DepegState(msgspec.Struct, forbid_unknown_fields=True):
    active: bool = False
    rate: float = 1.0
    inside_since: int = 0  # first update back inside the band while active (0 = not yet)
    rates: dict[str, float] = msgspec.field(default_factory=dict)  # per base


class DepegChange(msgspec.Struct, frozen=True):
    tripped: bool  # True: tripped now; False: resumed now
    rate: float
    detail: str


class Depeg:
    def __init__(self, config: DepegGuard, state: DepegState) -> None:
        self.config = config
        self.state = state
        self.resume_ns = config.resume_ns
        self.band = config.threshold_pct / 100.0

    def relevant(self, quote: str, base: str) -> bool:
        c = self.config
        return quote in (c.asset, c.reference) or (base == c.asset and quote == c.reference)

    def observe(self, base: str, prices: dict[str, float], now: int) -> DepegChange | None:
        """A price of ``base`` changed (``prices``: latest close per ``BASE/QUOTE``)."""
        c, s = self.config, self.state
        if base == c.asset:
            direct = prices.get(f"{c.asset}/{c.reference}")
            if direct is None:
                return None
            s.rates[base] = direct
        else:
            in_ref = prices.get(f"{base}/{c.reference}")
            in_asset = prices.get(f"{base}/{c.asset}")
            if in_ref is None or in_asset is None:
                return None
            s.rates[base] = in_ref / in_asset
        rate = s.rate = statistics.median(s.rates.values())
        deviation = abs(rate - 1.0)
        what = f"1 {c.asset} = {rate:.4f} {c.reference} ({100 * (rate - 1):+.2f}%"
        if not s.active:
            if deviation > self.band:
                s.active, s.inside_since = True, 0
                detail = f"{what}, beyond +/-{c.threshold_pct:g}%): {c.action}"
                return DepegChange(True, rate, detail)
            return None
        if deviation > self.band:
            s.inside_since = 0
            return None
        if not s.inside_since:
            s.inside_since = now
        if now - s.inside_since >= self.resume_ns:
            s.active, s.inside_since = False, 0
            detail = f"{what}, inside +/-{c.threshold_pct:g}% for {c.resume_after}): resume"
            return DepegChange(False, rate, detail)
        return None


class FundingState(msgspec.Struct, forbid_unknown_fields=True):
    side: int = 0  # +1: longs pay beyond the threshold; -1: shorts pay; 0: inside
    rate: float = 0.0


class FundingChange(msgspec.Struct, frozen=True):
    side: int  # the paying side now under the guard (0 = cleared)
    detail: str


class Funding:
    def __init__(self, config: FundingGuard, state: dict[InstrumentId, FundingState]) -> None:
        self.config = config
        self.state = state

    def observe(self, market: InstrumentId, rate: float, interval_h: float) -> FundingChange | None:
        c = self.config
        symbol = market.symbol
        if c.symbols and symbol not in c.symbols:
            return None
        s = self.state.get(market)
        if s is None:
            s = self.state[market] = FundingState()
        s.rate = rate
        pct = rate * 100.0
        side = 0 if abs(pct) <= c.threshold_pct else (1 if pct > 0 else -1)
        if side == s.side:
            return None
        s.side = side
        per = f"{pct:+.4f}% per {interval_h:g}h"
        if side == 0:
            return FundingChange(0, f"{symbol} funding {per}, inside +/-{c.threshold_pct:g}%")
        payer = "longs" if side > 0 else "shorts"
        return FundingChange(
            side, f"{symbol} funding {per} beyond +/-{c.threshold_pct:g}%: {payer} pay"
        )
