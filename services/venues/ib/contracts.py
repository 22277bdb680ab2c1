"""From Keel's contract specs to ib_async's ``Contract`` and back, and from IB's contract
details to Keel's ``Instrument`` event. ib_async's types stay at this edge.

The continuous front month: IB lists a root's expiries (``reqContractDetails`` on a future
without an expiry); ``front_month`` picks the first whose roll date (the last trading day
minus ``roll_days`` calendar days) is after today, so on the roll date itself the next
expiry is traded. A position still held in the old expiry stays there: the roll moves new
orders, not positions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from ib_async import Contract, ContractDetails, Forex, Future, Stock

from contracts.events import Instrument, InstrumentKind
from services.venues.ib.specs import ContractSpec, FutureSpec, FxSpec, StockSpec

_KINDS: dict[str, InstrumentKind] = {"STK": "stock", "FUT": "future", "CASH": "fx"}


class ContractError(ValueError):
    """IB's answer about a contract cannot be used: one line naming the contract."""


def ib_contract(spec: ContractSpec) -> Contract:
    """The contract to qualify (``qualifyContracts``) or, for a front month, to list the
    expiries of (``reqContractDetails``)."""
    match spec:
        case StockSpec():
            return Stock(
                spec.symbol, spec.exchange, spec.currency, primaryExchange=spec.primary_exchange
            )
        case FutureSpec():
            return Future(
                spec.root,
                "" if spec.continuous else spec.expiry,
                spec.exchange,
                currency=spec.currency,
                tradingClass=spec.trading_class,
            )
        case FxSpec():
            return Forex(spec.base + spec.quote, spec.exchange)


def last_trade_date(details: ContractDetails) -> dt.date:
    """A future's last trading day: ``lastTradeDateOrContractMonth`` once qualified
    (``YYYYMMDD``, possibly followed by a time), else ``realExpirationDate``."""
    contract = details.contract
    text = (contract.lastTradeDateOrContractMonth if contract else "")[:8]
    if len(text) != 8:
        text = details.realExpirationDate[:8]
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError as exc:
        name = contract.localSymbol if contract else "?"
        raise ContractError(f"{name}: no last trading day in the contract details") from exc


def front_month(
    listed: Sequence[ContractDetails], today: dt.date, roll_days: int
) -> ContractDetails:
    """The expiry a continuous front month trades on ``today`` (the exchange's date)."""
    ordered = sorted(listed, key=last_trade_date)
    for details in ordered:
        if today < last_trade_date(details) - dt.timedelta(days=roll_days):
            return details
    raise ContractError(
        f"no listed expiry rolls after {today.isoformat()} (roll_days = {roll_days}); "
        f"{len(ordered)} listed"
    )


def keel_symbol(contract: Contract, specs: Sequence[ContractSpec]) -> str | None:
    """The Keel symbol an IB contract (a position's, an execution's) trades under; None for
    a contract no spec names. Any expiry of a front-month root is that root's symbol."""
    for spec in specs:
        if _names(spec, contract):
            return spec.name
    return None


def _names(spec: ContractSpec, contract: Contract) -> bool:
    match spec:
        case StockSpec():
            return (
                contract.secType == "STK"
                and contract.symbol == spec.symbol
                and contract.currency == spec.currency
            )
        case FutureSpec():
            if contract.secType != "FUT" or contract.symbol != spec.root:
                return False
            if spec.trading_class and contract.tradingClass != spec.trading_class:
                return False
            return spec.continuous or contract.lastTradeDateOrContractMonth.startswith(spec.expiry)
        case FxSpec():
            return (
                contract.secType == "CASH"
                and contract.symbol == spec.base
                and contract.currency == spec.quote
            )


def instrument_of(venue: str, spec: ContractSpec, details: ContractDetails, ts: int) -> Instrument:
    """The Instrument event for a qualified contract: ``minTick`` is the tick size, the
    multiplier the contract size, ``sizeIncrement`` (else ``minSize``, else 1) the lot; the
    trading and liquid hours travel with their time zone for the calendar. Stocks and futures
    trade in whole units."""
    contract = details.contract
    if contract is None or not contract.conId:
        raise ContractError(f"{spec.name}: IB's details carry no qualified contract")
    kind = _KINDS.get(contract.secType)
    if kind is None:
        raise ContractError(f"{spec.name}: security type {contract.secType!r} is not supported")
    if not details.minTick > 0:
        raise ContractError(f"{spec.name}: IB gives no tick size (minTick {details.minTick})")
    try:
        multiplier = float(contract.multiplier) if contract.multiplier else 1.0
    except ValueError as exc:
        raise ContractError(f"{spec.name}: multiplier {contract.multiplier!r}") from exc
    if not multiplier > 0:
        raise ContractError(f"{spec.name}: multiplier {contract.multiplier!r} is not > 0")
    lot = details.sizeIncrement if details.sizeIncrement > 0 else details.minSize
    if kind != "fx":
        # IB may list fractional increments for stocks (0.0001), which its API trades only
        # for accounts with that permission: Keel trades whole shares and whole contracts.
        lot = max(lot, 1.0)
    return Instrument(
        ts=ts,
        venue=venue,
        symbol=spec.name,
        base=contract.symbol,
        quote=contract.currency,
        kind=kind,
        tick_size=details.minTick,
        lot_size=lot if lot > 0 else 1.0,
        contract_size=multiplier,
        settle=contract.currency if kind == "future" else "",
        contract_id=str(contract.conId),
        expiry=last_trade_date(details).strftime("%Y%m%d") if kind == "future" else "",
        time_zone=details.timeZoneId,
        trading_hours=details.tradingHours,
        liquid_hours=details.liquidHours,
    )
