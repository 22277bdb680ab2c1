"""What the books are worth in the base currency at the current rates: the account's equity
(``EquitySnapshot``), each strategy's and model tag's book (``StrategyPnL``), and the
positions as people read them (``PositionView``, in their own currency)."""

from __future__ import annotations

import msgspec

from contracts.events import EquitySnapshot, PositionChanged, StrategyPnL
from services.portfolio.fx import BASE
from services.portfolio.positions import Book, Position
from services.portfolio.state import PortfolioState

Foreign = tuple[tuple[str, float, float], ...]
"""Starting balances in other currencies than the base: (currency key, amount, assumed rate)."""


def _defaults(cls: type) -> dict[str, object]:
    return {f.name: f.default for f in msgspec.structs.fields(cls)}


# The optional fields are left out of the encoding at their default (``omit_defaults``), and
# msgspec tells a float default by identity: a computed 0.0 would be written out, so a zero
# is passed as the field's own default object.
_EQ = _defaults(EquitySnapshot)
MARGIN0, FUNDING0, FX0 = _EQ["margin_used"], _EQ["funding"], _EQ["fx_pnl"]
_PC = _defaults(PositionChanged)
POSITION_FUNDING0, POSITION_MARGIN0 = _PC["funding"], _PC["margin_used"]


class PositionView(msgspec.Struct, frozen=True):
    """A position as ``Portfolio.positions()`` reports it, in its quote currency."""

    venue: str
    symbol: str
    kind: str
    currency: str
    qty: float
    avg_price: float
    mark: float
    realized_pnl: float
    unrealized_pnl: float
    funding: float
    margin_used: float


def in_base(amounts: dict[str, float], rates: dict[str, float]) -> float:
    total = 0.0
    for currency, amount in amounts.items():
        total += amount * rates[currency]
    return total


_Totals = tuple[float, float, float, float, float, bool]
"""(cash, realized, fees, funding, FX PnL, whether funding or FX PnL can be set)"""


class Valuation:
    """The account's equity over a state: cash, spot positions at their marks and
    perpetuals' unrealized PnL, in the base currency.

    Between fills, funding payments and rate changes only marks move: the account's totals
    (cash, realized PnL, fees, funding and FX PnL in the base currency) and the open
    positions with their conversion rates are kept, and worked out again, with the same
    arithmetic in the same order, after ``stale()``. Books of spot positions without funding
    or foreign starting balances leave the margin, funding, FX and net-exposure fields at
    their defaults."""

    def __init__(self, state: PortfolioState, foreign: Foreign) -> None:
        self.state = state
        self.foreign = foreign
        self._totals: _Totals | None = None
        self._open: list[tuple[Position, float, bool]] = []
        """open positions in the state's order: (position, its rate, perpetual)."""

    def stale(self) -> None:
        """A quantity, balance, PnL, fee, funding or rate changed."""
        self._totals = None

    def _refresh(self) -> _Totals:
        state = self.state
        rates = state.fx.rates
        self._open = [
            (p, rates[p.currency], p.perpetual) for p in state.positions.values() if p.qty
        ]
        cash = 0.0
        for account in state.balances.values():
            for currency, amount in account.items():
                cash += amount * rates[currency]
        realized = in_base(state.realized, rates)
        fees = in_base(state.fees, rates)
        if not (state.funding or self.foreign):
            totals = cash, realized, fees, 0.0, 0.0, False
        else:
            fx_pnl = 0.0
            for currency, amount, assumed in self.foreign:
                fx_pnl += amount * (rates[currency] - assumed)
            totals = cash, realized, fees, in_base(state.funding, rates), fx_pnl, True
        self._totals = totals
        return totals

    def equity(self, now: int) -> EquitySnapshot:
        totals = self._totals
        if totals is None:
            totals = self._refresh()
        cash, realized, fees, funding, fx_pnl, extended = totals
        value = unrealized = gross = 0.0
        perpetuals = False
        upnl = margin = net = 0.0
        for p, fx, perpetual in self._open:
            qty = p.qty
            mark = p.mark
            if perpetual:
                perpetuals = True
                units = qty * p.size
                pnl = units * (mark - p.avg_price) * fx
                upnl += pnl
                unrealized += pnl
                notional = units * mark * fx
                net += notional
                notional = abs(notional)
                gross += notional
                margin += notional / p.leverage
            else:
                market_value = qty * mark * fx
                value += market_value
                unrealized += qty * (mark - p.avg_price) * fx
                gross += abs(market_value)  # = |qty x mark| x fx exactly: fx > 0
        if perpetuals or extended:
            return EquitySnapshot(
                ts=now,
                cash=cash,
                equity=cash + value + upnl if perpetuals else cash + value,
                realized_pnl=realized,
                unrealized_pnl=unrealized,
                fees=fees,
                gross_exposure=gross,
                margin_used=margin or MARGIN0,
                funding=funding or FUNDING0,
                fx_pnl=fx_pnl or FX0,
                net_exposure=value + net if perpetuals else None,
            )
        return EquitySnapshot(
            ts=now,
            cash=cash,
            equity=cash + value,
            realized_pnl=realized,
            unrealized_pnl=unrealized,
            fees=fees,
            gross_exposure=gross,
        )


def book_pnl(state: PortfolioState, strategy: str, tag: str, book: Book, now: int) -> StrategyPnL:
    """One book at the account's marks and the current rates."""
    rates = state.fx.rates
    unrealized = gross = net = 0.0
    open_lots = 0
    for key, lot in book.lots.items():
        if lot.qty:
            p = state.positions[key]
            fx = rates[p.currency]
            notional = lot.qty * p.size * p.mark
            unrealized += lot.qty * p.size * (p.mark - lot.avg_price) * fx
            gross += abs(notional) * fx
            net += notional * fx
            open_lots += 1
    return StrategyPnL(
        ts=now,
        strategy=strategy,
        model_tag=tag,
        realized_pnl=in_base(book.realized, rates),
        unrealized_pnl=unrealized,
        fees=in_base(book.fees, rates),
        funding=in_base(book.funding, rates),
        gross_exposure=gross,
        net_exposure=net,
        positions=open_lots,
    )


def attribution(state: PortfolioState, now: int) -> list[StrategyPnL]:
    """Every strategy's book (``model_tag`` empty), then every (strategy, model tag)."""
    out = [book_pnl(state, name, "", book, now) for name, book in state.strategies.items()]
    for key, book in state.tags.items():
        out.append(book_pnl(state, key.strategy, key.model_tag, book, now))
    return out


def currency_name(state: PortfolioState, key: str) -> str:
    return (state.base or "base") if key == BASE else key


def position_views(state: PortfolioState) -> list[PositionView]:
    """Every position the account holds or held, in its own currency."""
    out = []
    for key, p in state.positions.items():
        units = p.qty * p.size
        # a position restored from a snapshot older than ``kind`` says only ``perpetual``
        kind = "perpetual" if p.perpetual and p.kind == "spot" else p.kind
        out.append(
            PositionView(
                venue=key.venue,
                symbol=key.symbol,
                kind=kind,
                currency=currency_name(state, p.currency),
                qty=p.qty,
                avg_price=p.avg_price,
                mark=p.mark,
                realized_pnl=p.realized,
                unrealized_pnl=units * (p.mark - p.avg_price),
                funding=p.funding,
                margin_used=abs(units * p.mark) / p.leverage if p.perpetual else 0.0,
            )
        )
    return out
