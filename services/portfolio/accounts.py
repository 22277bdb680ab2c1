"""The portfolio: multi-venue, multi-currency accounting of spot and perpetual positions, as a
pure fold ``decide(event, now) -> events`` (docs/portfolio.md is the reference).

- **Accounts.** Cash is kept per account and currency. A venue listed under
  ``[portfolio.venues]`` has an account of its own (its ``balances``); every other venue
  shares the default account, which starts with ``starting_cash`` in the base currency.
- **Positions** per instrument, average cost, signed (``positions.py``). Spot: a fill moves
  its notional between cash and the position. Perpetual (linear): no notional changes
  hands; realized PnL, fees and funding move the account's cash in the quote currency, and
  the position is worth its unrealized PnL.
- **Currencies.** Every amount is kept in its own currency and valued in the base currency
  at the current rates (``fx.py``) when the equity is reported (``valuation.py``). So, per
  currency and in total: ``cash + spot positions at mark + perpetuals' unrealized PnL =
  starting balances + realized + unrealized - fees - funding``; in the base currency the
  starting balances are worth ``initial_equity + fx_pnl``.
- **Attribution.** Every fill also goes to its strategy's book and to the book of its
  (strategy, model tag): average-cost lots of their own, so each reports realized and
  unrealized PnL, fees and funding. Total PnL (realized + unrealized - fees - funding) adds
  up across books to the account's; how it splits between realized and unrealized need not
  (one strategy's long netted against another's short realizes nothing in the account).

Outputs: a fill gives the position it leaves and the equity after it; a bar marks its
instrument and gives the equity; a funding payment gives the position it charged and the
equity; every ``attribution_every`` bars, one ``StrategyPnL`` per strategy and per model tag.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

import msgspec

from contracts.events import (
    Bar,
    EquitySnapshot,
    Event,
    ExecutionReport,
    FundingRate,
    Instrument,
    PositionChanged,
    StrategyPnL,
)
from contracts.keys import InstrumentId
from services.portfolio import valuation
from services.portfolio.config import PortfolioConfig
from services.portfolio.fx import BASE, Fx
from services.portfolio.instruments import Described, Meta, from_description, from_symbol
from services.portfolio.positions import Book, Lot, Position
from services.portfolio.state import PortfolioState, StrategyTag
from services.portfolio.valuation import POSITION_FUNDING0, POSITION_MARGIN0, PositionView

_Leg = tuple[str, str, dict[str, tuple[int, float]]]
"""(asset, quote currency key, the asset's legs by quote: (time, rate))"""
_Name = TypeVar("_Name", str, StrategyTag)
"""A book's key: a strategy, or a strategy's model tag."""
_STATE_DECODER = msgspec.msgpack.Decoder(PortfolioState)
_ENCODER = msgspec.msgpack.Encoder()


class Portfolio:
    """``decide(event, now) -> events`` over ``ExecutionReport`` (fills), ``Bar`` (marks and
    conversion rates), ``FundingRate`` (perpetual funding) and ``Instrument``."""

    snapshot_version: ClassVar[int] = 1
    """The layout of ``PortfolioState`` that ``snapshot()`` writes and ``restore()`` reads."""

    def __init__(self, config: PortfolioConfig, instruments: tuple[Described, ...] = ()) -> None:
        self.config = config
        self._specs = {
            InstrumentId(getattr(s, "venue", ""), s.symbol): from_description(s)
            for s in instruments
        }
        self._skew = config.fx_max_skew_ns
        self.state = self._fresh()
        self._reset_caches()

    # -- setup --

    def _fresh(self) -> PortfolioState:
        config = self.config
        base = config.base_currency
        balances: dict[str, dict[str, float]] = {"": {BASE: config.starting_cash}}
        for venue, account in config.venues.items():
            own = balances[venue] = {}
            for currency, amount in account.balances.items():
                key = BASE if currency == base else currency
                own[key] = own.get(key, 0.0) + amount
        return PortfolioState(balances=balances, base=base)

    def _reset_caches(self) -> None:
        """What is derived from the state and the config: rebuilt on restore."""
        state = self.state
        self.fx = Fx(state.fx, dict(self.config.rates), self._skew)
        self._rates = state.fx.rates
        self._meta: dict[InstrumentId, Meta] = {}
        # One key object per instrument: a dict finds a key by identity before comparing.
        self._ids = {key: key for key in state.positions}
        state.marks = {self._ids.setdefault(k, k): mark for k, mark in state.marks.items()}
        self._markets: dict[str, dict[str, tuple[InstrumentId, _Leg | None]]] = {}
        self._attribution_every = self.config.attribution_every
        self._foreign: valuation.Foreign = tuple(
            (currency, amount, self.config.rates.get(currency, 1.0))
            for account in self.config.venues.values()
            for currency, amount in account.balances.items()
            if currency != state.base and amount
        )
        for account in state.balances.values():
            for currency in account:
                self.fx.track(currency, 0)
        self._valuation = valuation.Valuation(state, self._foreign)

    # -- currencies and instruments --

    def _currency(self, name: str) -> str:
        """A currency name as a key: the base currency is ""."""
        return BASE if not name or name == self.state.base else name

    def _instrument(self, venue: str, symbol: str) -> InstrumentId:
        key = InstrumentId(venue, symbol)
        return self._ids.setdefault(key, key)

    def _describe(self, key: InstrumentId) -> Meta:
        meta = self._meta.get(key)
        if meta is None:
            meta = (
                self.state.instruments.get(key) or self._specs.get(key) or from_symbol(key.symbol)
            )
            if not self.state.base and meta.quote:
                self.state.base = meta.quote  # the first market seen names the base
            self._meta[key] = meta
        return meta

    def _market(self, venue: str, symbol: str) -> tuple[InstrumentId, _Leg | None]:
        """A market's key and, for a spot market that can serve as an FX leg, (asset, quote,
        the asset's legs); kept by venue and symbol, so a bar builds no key. Called on a
        market's bar, which then gives the leg its rate: the quote currency is registered as
        quoting the asset here, once."""
        key = self._instrument(venue, symbol)
        meta = self._describe(key)
        leg = None
        if not meta.margined and meta.quote and meta.base:
            asset, quote = self._currency(meta.base), self._currency(meta.quote)
            if asset != quote:
                legs = self.fx.legs_of(asset)
                if quote not in legs:
                    self.state.fx.quoted.setdefault(quote, []).append(asset)
                leg = (asset, quote, legs)
        market = self._markets.setdefault(venue, {})[symbol] = (key, leg)
        return market

    def _terms(self, position: Position, key: InstrumentId, now: int) -> None:
        """Give a flat position the instrument's current terms."""
        meta = self._describe(key)
        position.currency = currency = self._currency(meta.quote)
        position.perpetual = perpetual = meta.margined
        position.kind = meta.kind
        position.size = meta.contract_size if perpetual else 1.0
        leverage = self.config.leverage_of(key.venue, key.symbol) if perpetual else 1.0
        if perpetual and meta.max_leverage > 0:
            leverage = min(leverage, meta.max_leverage)
        position.leverage = leverage
        position.account = key.venue if key.venue in self.config.venues else ""
        self.fx.track(currency, now)

    # -- the fold --

    def decide(self, event: Event, now: int) -> list[Event]:
        state = self.state
        state.events += 1
        due = 0 < state.next_funding < now
        if isinstance(event, Bar):  # most inputs are bars: first, inline, ahead of ``match``
            settled = self._settle_due(now) if due else None
            try:
                key, leg = self._markets[event.venue][event.symbol]
            except KeyError:
                key, leg = self._market(event.venue, event.symbol)
            close = event.close
            state.marks[key] = close
            position = state.positions.get(key)
            if position is not None:
                position.mark = close
            if leg is not None:  # a conversion-rate leg (fx.py)
                asset, quote, legs = leg
                legs[quote] = (event.ts, close)
                if len(self._rates) > 1 and self.fx.changed(asset, quote, legs, event.ts):
                    self._valuation.stale()
            if self._attribution_every:
                state.bars += 1
                if state.bars % self._attribution_every == 0:
                    out: list[Event] = [self.equity(now), *self.attribution(now)]
                    return settled + out if settled else out
            if settled:
                settled.append(self.equity(now))
                return settled
            return [self._valuation.equity(now)]
        match event:
            case ExecutionReport() if event.fill_qty > 0:
                out = self._settle_due(now) if due else []
                out.append(self._on_fill(event, now))
                out.append(self.equity(now))
                return out
            case FundingRate():
                return self._on_funding(event, now, due)
            case Instrument():
                self._on_instrument(event)
        return self._settle_due(now) if due else []

    def _on_fill(self, fill: ExecutionReport, now: int) -> PositionChanged:
        state = self.state
        signed = fill.fill_qty if fill.side == "buy" else -fill.fill_qty
        key = self._instrument(fill.venue, fill.symbol)
        position = state.positions.get(key)
        if position is None:
            position = state.positions[key] = Position()
            self._terms(position, key, now)
        elif not position.qty:
            self._terms(position, key, now)
        position.mark = state.marks.get(key, fill.fill_price)
        price = fill.fill_price
        fee = fill.fee
        currency = position.currency
        fee_currency = self._currency(fill.fee_currency) if fill.fee_currency else currency
        cash = state.balances[position.account]
        size = position.size
        if position.perpetual:
            realized = position.apply_fill(signed, price, size)
            state.realized[currency] = state.realized.get(currency, 0.0) + realized
            cash[currency] = cash.get(currency, 0.0) + realized
            if fee_currency not in self._rates:
                self.fx.track(fee_currency, now)
            cash[fee_currency] = cash.get(fee_currency, 0.0) - fee
        else:
            realized = position.apply_fill(signed, price)
            state.realized[currency] = state.realized.get(currency, 0.0) + realized
            if fee_currency == currency:
                cash[currency] = cash.get(currency, 0.0) - (signed * price + fee)
            else:
                if fee_currency not in self._rates:
                    self.fx.track(fee_currency, now)
                cash[currency] = cash.get(currency, 0.0) - signed * price
                cash[fee_currency] = cash.get(fee_currency, 0.0) - fee
            if position.qty < 0 and not self._margin(position.account):
                position.short_breach = True
        state.fees[fee_currency] = state.fees.get(fee_currency, 0.0) + fee
        self._valuation.stale()
        strategy, tag = fill.strategy, StrategyTag(fill.strategy, fill.model_tag)
        _attribute(
            state.strategies, strategy, key, signed, price, size, fee, fee_currency, currency
        )
        _attribute(state.tags, tag, key, signed, price, size, fee, fee_currency, currency)
        if position.perpetual:
            return PositionChanged(
                ts=now,
                venue=fill.venue,
                symbol=fill.symbol,
                qty=position.qty,
                avg_price=position.avg_price,
                realized_pnl=position.realized,
                strategy=fill.strategy,
                funding=position.funding or POSITION_FUNDING0,
                margin_used=abs(position.qty * size * position.mark) / position.leverage
                or POSITION_MARGIN0,
            )
        return PositionChanged(
            ts=now,
            venue=fill.venue,
            symbol=fill.symbol,
            qty=position.qty,
            avg_price=position.avg_price,
            realized_pnl=position.realized,
            strategy=fill.strategy,
        )

    def _margin(self, account: str) -> bool:
        if not account:
            return self.config.margin
        return self.config.venues[account].margin

    def _on_instrument(self, event: Instrument) -> None:
        key = self._instrument(event.venue, event.symbol)
        self.state.instruments[key] = from_description(event)
        self._meta.pop(key, None)
        self._markets.get(event.venue, {}).pop(event.symbol, None)

    # -- funding --

    def _on_funding(self, event: FundingRate, now: int, due: bool) -> list[Event]:
        state = self.state
        out: list[Event] = self._settle_due(now) if due else []
        key = self._instrument(event.venue, event.symbol)
        if not self._describe(key).perpetual:
            return out
        when = event.next_time or event.ts
        if when > event.ts:  # a forecast: paid at ``when`` with the last forecast before then
            if when > state.funded.get(key, 0):
                state.pending_funding.setdefault(key, {})[when] = event.rate
                if not state.next_funding or when < state.next_funding:
                    state.next_funding = when
            return out
        paid = self._pay(key, event.rate, when, now)
        if paid is not None:
            out.append(paid)
            out.append(self.equity(now))
        return out

    def _settle_due(self, now: int) -> list[Event]:
        """Pay the forecasts whose funding time has passed, before the first event later
        than it: the position is the one held at that time, valued at the last mark known
        then (a bar closing at the funding time has been folded)."""
        state = self.state
        out: list[Event] = []
        for key, pending in list(state.pending_funding.items()):
            for when in sorted(t for t in pending if t < now):
                paid = self._pay(key, pending[when], when, now)
                if paid is not None:
                    out.append(paid)
        later = [t for pending in state.pending_funding.values() for t in pending]
        state.next_funding = min(later) if later else 0
        return out

    def _pay(self, key: InstrumentId, rate: float, when: int, now: int) -> PositionChanged | None:
        """One funding payment at time ``when``: longs pay ``rate`` x notional at the mark
        (negative rate: shorts pay). Once per funding time per instrument."""
        state = self.state
        pending = state.pending_funding.get(key)
        if pending is not None:  # this time is paid now, and nothing before it is due any more
            for time in [t for t in pending if t <= when]:
                del pending[time]
            if not pending:
                del state.pending_funding[key]
        if state.funded.get(key, 0) >= when:
            return None
        state.funded[key] = when
        position = state.positions.get(key)
        if position is None or not position.qty or not position.perpetual:
            return None
        per_unit = position.size * position.mark * rate
        payment = position.qty * per_unit
        currency = position.currency
        position.funding += payment
        state.funding[currency] = state.funding.get(currency, 0.0) + payment
        cash = state.balances[position.account]
        cash[currency] = cash.get(currency, 0.0) - payment
        self._valuation.stale()
        for books in (state.strategies.values(), state.tags.values()):
            for book in books:
                lot = book.lots.get(key)
                if lot is not None and lot.qty:
                    share = lot.qty * per_unit
                    lot.funding += share
                    book.funding[currency] = book.funding.get(currency, 0.0) + share
        return PositionChanged(
            ts=now,
            venue=key.venue,
            symbol=key.symbol,
            qty=position.qty,
            avg_price=position.avg_price,
            realized_pnl=position.realized,
            funding=position.funding or POSITION_FUNDING0,
            margin_used=abs(position.qty * position.size * position.mark) / position.leverage
            or POSITION_MARGIN0,
        )

    # -- reports --

    def equity(self, now: int) -> EquitySnapshot:
        return self._valuation.equity(now)

    def attribution(self, now: int) -> list[StrategyPnL]:
        """Every strategy's book (``model_tag`` empty), then every (strategy, model tag)."""
        return valuation.attribution(self.state, now)

    def positions(self) -> list[PositionView]:
        """Every position the account holds or held, in its own currency."""
        return valuation.position_views(self.state)

    def currency_name(self, key: str) -> str:
        return valuation.currency_name(self.state, key)

    # -- snapshots --

    @property
    def snapshot_due(self) -> bool:
        """Whether the events folded so far are a multiple of ``snapshot_every``."""
        return self.state.events % self.config.snapshot_every == 0

    def snapshot(self) -> bytes:
        return _ENCODER.encode(self.state)

    def restore(self, data: bytes) -> None:
        """Take back a ``snapshot()``; bytes that do not decode as this version's state
        raise ``msgspec.DecodeError`` (``ValidationError`` is one) and change nothing."""
        self.state = _STATE_DECODER.decode(data)
        self._reset_caches()


def _attribute(
    books: dict[_Name, Book],
    name: _Name,
    key: InstrumentId,
    signed: float,
    price: float,
    size: float,
    fee: float,
    fee_currency: str,
    currency: str,
) -> None:
    """A fill into one strategy's (or model tag's) book: realized PnL in the position's
    currency, the fee in its own."""
    book = books.get(name)
    if book is None:
        book = books[name] = Book()
    lot = book.lots.get(key)
    if lot is None:
        lot = book.lots[key] = Lot()
    realized = lot.apply_fill(signed, price, size)
    if realized:
        book.realized[currency] = book.realized.get(currency, 0.0) + realized
    book.fees[fee_currency] = book.fees.get(fee_currency, 0.0) + fee
