"""The configured IB contracts, qualified: the contract to stream, its Instrument and its
trading calendar.

A stock, an FX pair or a dated future must come back as exactly one contract; a continuous
front month lists the root's expiries and picks one by the spec's roll rule (on the
exchange's date). A contract IB does not know is the user's to fix: one line, and the
worker stops.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from collections.abc import Sequence

import msgspec
from ib_async import IB, Contract, ContractDetails

from contracts.events import Instrument
from eventstore.errors import KeelError
from services.venues.ib.calendar import CalendarError, TradingCalendar, ib_zone
from services.venues.ib.contracts import ContractError, front_month, ib_contract, instrument_of
from services.venues.ib.specs import ContractSpec, FutureSpec, FxSpec

log = logging.getLogger("keel.marketdata")


class Qualified(msgspec.Struct, frozen=True):
    """``show``: the data IB builds the symbol's bars from (FX has no trades: MIDPOINT)."""

    symbol: str
    contract: Contract
    instrument: Instrument
    calendar: TradingCalendar | None
    show: str


def choose(venue: str, specs: Sequence[ContractSpec], symbols: Sequence[str]) -> list[ContractSpec]:
    """The specs of the configured ``symbols``, in their order; an unknown one is one line."""
    by_name = {s.name: s for s in specs}
    unknown = [s for s in symbols if s not in by_name]
    if unknown:
        known = ", ".join(by_name) or "none"
        raise KeelError(
            f"venue {venue}: {', '.join(unknown)} not among its [[venues.ib.contracts]] "
            f"(they trade as: {known})"
        )
    return [by_name[s] for s in dict.fromkeys(symbols)]


async def qualify(ib: IB, venue: str, spec: ContractSpec, now_ns: int) -> Qualified:
    """One spec against IB (``ConnectionError`` when the session drops meanwhile)."""
    listed = await ib.reqContractDetailsAsync(ib_contract(spec))
    details = _one(spec, listed, now_ns)
    try:
        instrument = instrument_of(venue, spec, details, now_ns)
    except ContractError as exc:
        raise KeelError(f"venue {venue}: {exc}") from None
    contract = details.contract
    assert contract is not None  # instrument_of checked it
    calendar = None
    try:
        calendar = TradingCalendar.parse(details.tradingHours, details.timeZoneId)
    except CalendarError as exc:
        log.warning("%s: %s: no trading calendar (%s): every bar expected", venue, spec.name, exc)
    show = "MIDPOINT" if isinstance(spec, FxSpec) else "TRADES"
    return Qualified(spec.name, contract, instrument, calendar, show)


def _one(spec: ContractSpec, listed: Sequence[ContractDetails], now_ns: int) -> ContractDetails:
    if isinstance(spec, FutureSpec) and spec.continuous and listed:
        try:
            return front_month(listed, _exchange_date(listed[0], now_ns), spec.roll_days)
        except ContractError as exc:
            raise KeelError(f"{spec.name}: {exc}") from None
    if len(listed) != 1:
        what = "does not know" if not listed else f"lists {len(listed)} contracts for"
        raise KeelError(f"IB {what} {spec.name} ({ib_contract(spec)!r}): check the contract spec")
    return listed[0]


def _exchange_date(details: ContractDetails, now_ns: int) -> dt.date:
    moment = dt.datetime.fromtimestamp(now_ns / 1e9, dt.UTC)
    try:
        return moment.astimezone(ib_zone(details.timeZoneId)).date()
    except (CalendarError, zoneinfo.ZoneInfoNotFoundError):
        return moment.date()
