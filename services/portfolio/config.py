"""``[portfolio]``: the accounts, their starting balances, leverage, assumed rates and the
snapshot and attribution cadence (docs/portfolio.md has the reference and an example).

Decoded with ``msgspec.convert`` from the fleet's TOML (``services/config.py``): single-value
bounds are msgspec constraints, so a bad value fails with one line naming its key.
``__post_init__`` keeps what a constraint cannot say: finiteness (a bound rejects nan, not
infinity) and the rules that tie several keys together.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated

import msgspec
from msgspec import Meta

from contracts.intervals import duration_ns

Currency = Annotated[str, Meta(min_length=1)]
Balance = Annotated[float, Meta(ge=0)]
Positive = Annotated[float, Meta(gt=0)]


def _require_finite(what: str, values: Iterable[float]) -> None:
    for value in values:
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite (got {value})")


class VenueAccount(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[portfolio.venues.<venue>]``: the venue has an account of its own."""

    balances: dict[Currency, Balance] = msgspec.field(default_factory=dict)
    """starting balance per currency (default: none)."""
    margin: bool = False
    """a margin account: spot shorts allowed (perpetuals always may be short)."""
    leverage: Positive | None = None
    """leverage of perpetual positions here (default: ``[portfolio] leverage``)."""
    symbol_leverage: dict[str, Positive] = msgspec.field(default_factory=dict)
    """leverage per perpetual symbol here (wins over ``leverage``)."""

    def __post_init__(self) -> None:
        _require_finite("balances", self.balances.values())
        _require_finite("leverage", () if self.leverage is None else (self.leverage,))
        _require_finite("symbol_leverage", self.symbol_leverage.values())


class PortfolioConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[portfolio]``."""

    starting_cash: Balance = 100_000.0
    """cash in the base currency in the default account (venues without their own)."""
    base_currency: str = ""
    """what equity is reported in; empty: the quote currency of the first market seen."""
    margin: bool = True
    """the default account is a margin account (spot shorts allowed)."""
    leverage: Positive = 1.0
    """leverage of perpetual positions (capped by the instrument's ``max_leverage``)."""
    venues: dict[str, VenueAccount] = msgspec.field(default_factory=dict)
    rates: dict[Currency, Positive] = msgspec.field(default_factory=dict)
    """assumed rate into the base currency per currency, until one is observed."""
    fx_max_skew: str = "1m"
    """a cross rate's two legs must both have closed within this of the bar processed."""
    snapshot_every: Annotated[int, Meta(ge=1)] = 1000
    """take a portfolio snapshot (``snapshot_due``) every this many events."""
    attribution_every: Annotated[int, Meta(ge=0)] = 0
    """publish ``StrategyPnL`` every this many bars (0: never)."""

    def __post_init__(self) -> None:
        _require_finite("starting_cash", (self.starting_cash,))
        _require_finite("leverage", (self.leverage,))
        _require_finite("rates", self.rates.values())
        duration_ns(self.fx_max_skew, "fx_max_skew")
        held = any(v.balances for v in self.venues.values())
        if (held or self.rates) and not self.base_currency:
            raise ValueError(
                "base_currency must be set when venues hold balances or rates are given"
            )
        if self.base_currency in self.rates:
            raise ValueError(f"rates.{self.base_currency}: the base currency's rate is 1")
        if not self.initial_equity > 0:
            raise ValueError(
                "starting_cash must be > 0 (or venues must hold balances worth more than 0)"
            )

    @property
    def fx_max_skew_ns(self) -> int:
        return duration_ns(self.fx_max_skew, "fx_max_skew")

    @property
    def initial_equity(self) -> float:
        """The starting balances in the base currency, at the assumed rates (par when none):
        the reference for returns and drawdowns."""
        total = self.starting_cash
        for account in self.venues.values():
            for currency, amount in account.balances.items():
                rate = 1.0 if currency == self.base_currency else self.rates.get(currency, 1.0)
                total += amount * rate
        return total

    def leverage_of(self, venue: str, symbol: str) -> float:
        account = self.venues.get(venue)
        if account is None:
            return self.leverage
        by_symbol = account.symbol_leverage.get(symbol)
        if by_symbol is not None:
            return by_symbol
        return self.leverage if account.leverage is None else account.leverage
