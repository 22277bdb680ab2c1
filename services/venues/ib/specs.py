"""The contracts an Interactive Brokers venue trades, as written in ``[[venues.ib.contracts]]``.

Three kinds, told apart by ``type``: a stock routed through SMART with its primary exchange,
a future (one expiry, or the continuous front month with its roll stated), and an FX pair on
IDEALPRO. Each names the Keel symbol it trades under (``keel_symbol``, else a default from
the contract); subject tokens come from ``contracts.subjects.symbol_token`` as for every
venue. Plain msgspec structs: loading a config never imports ib_async.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

import msgspec
from msgspec import Meta

from contracts.subjects import symbol_token

_EXPIRY = re.compile(r"[0-9]{6}(?:[0-9]{2})?")
_PAIR = re.compile(r"([A-Z]{3})\.([A-Z]{3})")

IbSymbol = Annotated[str, Meta(min_length=1, max_length=32)]
Exchange = Annotated[str, Meta(pattern=r"^[A-Z0-9._]{1,20}$")]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
FRONT = "front"


class StockSpec(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="stock", tag_field="type"
):
    """A stock: ``symbol`` as IB writes it (``BRK B``), routed through ``exchange``
    (SMART) with ``primary_exchange`` naming its listing, which IB needs to tell apart
    symbols listed in several places."""

    symbol: IbSymbol
    primary_exchange: Exchange
    currency: Currency = "USD"
    exchange: Exchange = "SMART"
    keel_symbol: str = ""

    @property
    def name(self) -> str:
        return self.keel_symbol or self.symbol


class FutureSpec(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="future", tag_field="type"
):
    """A future on ``exchange`` (CME, EUREX...): ``expiry`` a contract month (YYYYMM) or
    last trading day (YYYYMMDD), or ``"front"``: the nearest listed expiry, rolled to the
    next one ``roll_days`` calendar days before the last trading day (required then, and
    only then). ``trading_class`` tells apart contracts sharing a root (ES and MES are
    different roots; micro and mini classes of one root are not)."""

    root: IbSymbol
    exchange: Exchange
    expiry: str
    roll_days: Annotated[int, Meta(ge=-1, le=90)] = -1
    currency: Currency = "USD"
    trading_class: str = ""
    keel_symbol: str = ""

    def __post_init__(self) -> None:
        if self.expiry == FRONT:
            if self.roll_days < 0:
                raise ValueError(
                    f"future {self.root}: expiry = 'front' needs roll_days (calendar days "
                    "before the last trading day to move to the next expiry)"
                )
            return
        if not _EXPIRY.fullmatch(self.expiry) or not _valid_expiry(self.expiry):
            raise ValueError(
                f"future {self.root}: expiry {self.expiry!r} must be YYYYMM, YYYYMMDD or 'front'"
            )
        if self.roll_days >= 0:
            raise ValueError(f"future {self.root}: roll_days only goes with expiry = 'front'")

    @property
    def continuous(self) -> bool:
        return self.expiry == FRONT

    @property
    def name(self) -> str:
        """``ES`` for the front month, ``ES 202612`` for one expiry."""
        if self.keel_symbol:
            return self.keel_symbol
        return self.root if self.continuous else f"{self.root} {self.expiry}"


class FxSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="fx", tag_field="type"):
    """A currency pair, ``pair = "EUR.USD"`` (base.quote, as IB's local symbol writes it),
    on IDEALPRO; its Keel symbol is ``EUR/USD``."""

    pair: str
    exchange: Exchange = "IDEALPRO"
    keel_symbol: str = ""

    def __post_init__(self) -> None:
        match = _PAIR.fullmatch(self.pair)
        if match is None or match.group(1) == match.group(2):
            raise ValueError(
                f"fx pair {self.pair!r} must be two different currency codes as BASE.QUOTE, "
                "e.g. 'EUR.USD'"
            )

    @property
    def base(self) -> str:
        return self.pair[:3]

    @property
    def quote(self) -> str:
        return self.pair[4:]

    @property
    def name(self) -> str:
        return self.keel_symbol or f"{self.base}/{self.quote}"


ContractSpec = StockSpec | FutureSpec | FxSpec


def check_symbols(specs: tuple[ContractSpec, ...]) -> None:
    """Every contract's Keel symbol can become a subject token and is used once."""
    seen: set[str] = set()
    for spec in specs:
        name = spec.name
        symbol_token(name)
        if name in seen:
            raise ValueError(
                f"contracts: Keel symbol {name!r} is used twice; give one a keel_symbol"
            )
        seen.add(name)


def _valid_expiry(text: str) -> bool:
    year, month = int(text[:4]), int(text[4:6])
    if not (1 <= month <= 12 and 2000 <= year <= 2100):
        return False
    if len(text) == 8:
        try:
            dt.date(year, month, int(text[6:]))
        except ValueError:
            return False
    return True
