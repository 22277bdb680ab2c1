"""The portfolio: multi-venue, multi-currency accounting of spot and perpetual positions, as a
pure fold ``decide(event, now) -> events`` (docs/portfolio.md is the reference).

- **Accounts.** Cash is kept per account and currency. A venue listed under
  ``[portfolio.venues]`` has an account of its own (its ``balances``); every other venue
  shares the default account, which starts with ``starting_cash`` in the base currency.
- **Positions** per (venue, symbol), average cost, signed. Spot: a fill moves its notional
  between cash and the position. Perpetual (linear): no notional changes hands; realized PnL,
  fees and funding move the account's cash in the quote currency, and the position is worth
  its unrealized PnL.
- **Currencies.** Every amount is kept in its own currency and valued in the base currency
  at the current rates (``fx.py``) when the equity is reported. So, per currency and in
  total: ``cash + spot positions at mark + perpetuals' unrealized PnL = starting balances
  + realized + unrealized - fees - funding``; in the base currency the starting balances
  are worth ``initial_equity + fx_pnl``.
- **Attribution.** Every fill also goes to its strategy's book and to the book of its
  (strategy, model tag): average-cost lots of their own, so each reports realized and
  unrealized PnL, fees and funding. Total PnL (realized + unrealized - fees - funding) adds
  up across books to the account's; how it splits between realized and unrealized need not
  (one strategy's long netted against another's short realizes nothing in the account).

Outputs: a fill gives the position it leaves and the equity after it; a bar marks its
instrument and gives the equity; a funding payment gives the position it charged and the
equity; every ``attribution_every`` bars, one ``StrategyPnL`` per strategy and per model tag.
With one spot venue in one currency the outputs are byte-identical to the original ledger.
"""

from __future__ import annotations

import math
import re

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
from services.portfolio.fx import BASE, Fx, FxState
from services.portfolio.instruments import Described, Meta, from_description, from_symbol

EPS = 1e-12

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_NS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86_400 * 10**9}


def _duration_ns(text: str, key: str) -> int:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{key} ({text!r}) must be a duration like 90s, 5m or 1h")
    return round(float(match.group(1)) * _UNIT_NS[match.group(2)])


def _check_amounts(what: str, values: dict[str, float], positive: bool) -> None:
    for currency, value in values.items():
        if not currency:
            raise ValueError(f"{what}: empty currency name")
        ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
        if not ok:
            bound = "> 0" if positive else ">= 0"
            raise ValueError(f"{what}.{currency} must be {bound} (got {value})")


# --- configuration -------------------------------------------------------------------------------


class VenueAccount(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[portfolio.venues.<venue>]``: the venue has an account of its own."""

    balances: dict[str, float] = msgspec.field(default_factory=dict)
    """starting balance per currency (default: none)."""
    margin: bool = False
    """a margin account: spot shorts allowed (perpetuals always may be short)."""
    leverage: float | None = None
    """leverage of perpetual positions here (default: ``[portfolio] leverage``)."""
    symbol_leverage: dict[str, float] = msgspec.field(default_factory=dict)
    """leverage per perpetual symbol here (wins over ``leverage``)."""

    def __post_init__(self) -> None:
        _check_amounts("balances", self.balances, positive=False)
        if self.leverage is not None and not (math.isfinite(self.leverage) and self.leverage > 0):
            raise ValueError(f"leverage must be > 0 (got {self.leverage})")
        _check_amounts("symbol_leverage", self.symbol_leverage, positive=True)


class PortfolioConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[portfolio]`` (docs/portfolio.md has the reference and an example)."""

    starting_cash: float = 100_000.0
    """cash in the base currency in the default account (venues without their own)."""
    base_currency: str = ""
    """what equity is reported in; empty: the quote currency of the first market seen."""
    margin: bool = True
    """the default account is a margin account (spot shorts allowed)."""
    leverage: float = 1.0
    """leverage of perpetual positions (capped by the instrument's ``max_leverage``)."""
    venues: dict[str, VenueAccount] = msgspec.field(default_factory=dict)
    rates: dict[str, float] = msgspec.field(default_factory=dict)
    """assumed rate into the base currency per currency, until one is observed."""
    fx_max_skew: str = "1m"
    """a cross rate's two legs must both have closed within this of the bar processed."""
    snapshot_every: int = 1000
    """take a portfolio snapshot (``snapshot_due``) every this many events."""
    attribution_every: int = 0
    """publish ``StrategyPnL`` every this many bars (0: never)."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.starting_cash) or self.starting_cash < 0:
            raise ValueError(f"starting_cash must be > 0 (got {self.starting_cash})")
        if not (math.isfinite(self.leverage) and self.leverage > 0):
            raise ValueError(f"leverage must be > 0 (got {self.leverage})")
        _check_amounts("rates", self.rates, positive=True)
        _duration_ns(self.fx_max_skew, "fx_max_skew")
        if self.snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1 (got {self.snapshot_every})")
        if self.attribution_every < 0:
            raise ValueError(f"attribution_every must be >= 0 (got {self.attribution_every})")
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


# --- state -------------------------------------------------------------------------------------


class Lot(msgspec.Struct):
    """An average-cost position: the account's, or a strategy's or model tag's share."""

    qty: float = 0.0
    avg_price: float = 0.0
    realized: float = 0.0
    funding: float = 0.0

    def apply_fill(self, signed_qty: float, price: float, size: float = 1.0) -> float:
        """Apply a fill (``size``: units per contract); returns the PnL it realizes."""
        realized = 0.0
        if abs(self.qty) < EPS or (self.qty > 0) == (signed_qty > 0):
            total = abs(self.qty) + abs(signed_qty)
            self.avg_price = (abs(self.qty) * self.avg_price + abs(signed_qty) * price) / total
            self.qty += signed_qty
        else:
            closed = min(abs(self.qty), abs(signed_qty))
            direction = 1.0 if self.qty > 0 else -1.0
            realized = closed * (price - self.avg_price) * direction * size
            remaining = self.qty + signed_qty
            if abs(remaining) < EPS:
                self.qty, self.avg_price = 0.0, 0.0
            elif (remaining > 0) != (self.qty > 0):
                self.qty, self.avg_price = remaining, price
            else:
                self.qty = remaining
        self.realized += realized
        return realized


class Position(Lot):
    """The account's position in one (venue, symbol), with the terms it was opened on:
    ``currency`` (key: "" = base), ``perpetual``, ``size`` (contract size), ``leverage``,
    ``account``. Terms change only while flat (a new ``Instrument`` applies at the next
    open)."""

    mark: float = 0.0
    currency: str = BASE
    perpetual: bool = False
    size: float = 1.0
    leverage: float = 1.0
    account: str = ""
    short_breach: bool = False


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


class Book(msgspec.Struct):
    """What one strategy's (or one model tag's) own fills made, per currency."""

    lots: dict[str, Lot] = msgspec.field(default_factory=dict)
    realized: dict[str, float] = msgspec.field(default_factory=dict)
    fees: dict[str, float] = msgspec.field(default_factory=dict)
    funding: dict[str, float] = msgspec.field(default_factory=dict)


class PortfolioState(msgspec.Struct):
    balances: dict[str, dict[str, float]]
    """account ("" = the default account) -> currency key -> amount."""
    realized: dict[str, float] = msgspec.field(default_factory=lambda: {BASE: 0.0})
    fees: dict[str, float] = msgspec.field(default_factory=lambda: {BASE: 0.0})
    funding: dict[str, float] = msgspec.field(default_factory=dict)
    positions: dict[str, Position] = msgspec.field(default_factory=dict)
    marks: dict[str, float] = msgspec.field(default_factory=dict)
    base: str = ""
    """the base currency's name ("" until the first market names it)."""
    instruments: dict[str, Meta] = msgspec.field(default_factory=dict)
    """``Instrument`` events seen, by ``venue|symbol``."""
    fx: FxState = msgspec.field(default_factory=FxState)
    strategies: dict[str, Book] = msgspec.field(default_factory=dict)
    tags: dict[str, Book] = msgspec.field(default_factory=dict)
    """by ``strategy|model_tag``."""
    pending_funding: dict[str, dict[int, float]] = msgspec.field(default_factory=dict)
    """forecasts not paid yet: ``venue|symbol`` -> funding time -> rate."""
    funded: dict[str, int] = msgspec.field(default_factory=dict)
    """last funding time paid per ``venue|symbol`` (a funding time is paid once)."""
    next_funding: int = 0
    events: int = 0
    """events folded (the snapshot policy counts them)."""
    bars: int = 0
    """bars folded, counted when ``attribution_every`` is set."""

    @property
    def cash(self) -> float:
        """All cash, in the base currency at the current rates."""
        rates = self.fx.rates
        total = 0.0
        for account in self.balances.values():
            for currency, amount in account.items():
                total += amount * rates[currency]
        return total


class _LegacyPosition(msgspec.Struct):
    qty: float = 0.0
    avg_price: float = 0.0
    realized: float = 0.0
    mark: float = 0.0


class _LegacyLedger(msgspec.Struct):
    cash: float
    realized: float = 0.0
    fees: float = 0.0
    positions: dict[str, _LegacyPosition] = msgspec.field(default_factory=dict)
    marks: dict[str, float] = msgspec.field(default_factory=dict)


_STATE_DECODER = msgspec.msgpack.Decoder(PortfolioState)
_Leg = tuple[str, str, dict[str, tuple[int, float]]]
"""(asset, quote currency key, the asset's legs by quote: (time, rate))"""
_ENCODER = msgspec.msgpack.Encoder()


def _defaults(cls: type) -> dict[str, object]:
    return {f.name: f.default for f in msgspec.structs.fields(cls)}


# The added fields are left out of the JSON at their default (``omit_defaults``). Passing
# the field's own default object for a zero makes that hold whatever way msgspec compares
# (identity, for floats, in msgspec 0.22): a computed 0.0 would otherwise be written out.
_EQ = _defaults(EquitySnapshot)
_MARGIN0, _FUNDING0, _FX0 = _EQ["margin_used"], _EQ["funding"], _EQ["fx_pnl"]
_PC = _defaults(PositionChanged)
_PC_FUNDING0, _PC_MARGIN0 = _PC["funding"], _PC["margin_used"]


# --- the decider -------------------------------------------------------------------------------


class Portfolio:
    """``decide(event, now) -> events`` over ``ExecutionReport`` (fills), ``Bar`` (marks and
    conversion rates), ``FundingRate`` (perpetual funding) and ``Instrument``."""

    def __init__(self, config: PortfolioConfig, instruments: tuple[Described, ...] = ()) -> None:
        self.config = config
        self._specs = {
            f"{getattr(s, 'venue', '')}|{s.symbol}": from_description(s) for s in instruments
        }
        self._skew = _duration_ns(config.fx_max_skew, "fx_max_skew")
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
        state = self.state
        self.fx = Fx(state.fx, dict(self.config.rates), self._skew)
        self._rates = state.fx.rates
        self._meta: dict[str, Meta] = {}
        self._markets: dict[str, dict[str, tuple[str, _Leg | None]]] = {}
        self._attribution_every = self.config.attribution_every
        # starting balances in other currencies: (currency key, amount, assumed rate)
        self._foreign: list[tuple[str, float, float]] = []
        for account in self.config.venues.values():
            for currency, amount in account.balances.items():
                if currency != state.base and amount:
                    self._foreign.append((currency, amount, self.config.rates.get(currency, 1.0)))
        for account in state.balances.values():
            for currency in account:
                self.fx.track(currency, 0)
        self._refresh_mode()

    def _refresh_mode(self) -> None:
        """The simple book (one account, one currency, spot only, no funding) reports its
        equity with the original ledger's arithmetic, operation for operation."""
        state = self.state
        self._simple = (
            len(state.balances) == 1
            and len(self._rates) == 1
            and not state.funding
            and not self._foreign
            and not any(p.perpetual for p in state.positions.values())
        )

    # -- currencies and instruments --

    def _currency(self, name: str) -> str:
        """A currency name as a key: the base currency is ""."""
        return BASE if not name or name == self.state.base else name

    def _describe(self, key: str, symbol: str) -> Meta:
        meta = self._meta.get(key)
        if meta is None:
            meta = self.state.instruments.get(key) or self._specs.get(key) or from_symbol(symbol)
            if not self.state.base and meta.quote:
                self.state.base = meta.quote  # the first market seen names the base
            self._meta[key] = meta
        return meta

    def _market(self, venue: str, symbol: str) -> tuple[str, _Leg | None]:
        """A market's book key and, for a spot market that can serve as an FX leg, (asset,
        quote, the asset's legs); kept by venue and symbol, so a bar builds no key string.
        Called on a market's bar, which then gives the leg its rate: the quote currency is
        registered as quoting the asset here, once."""
        key = f"{venue}|{symbol}"
        meta = self._describe(key, symbol)
        leg = None
        if not meta.perpetual and meta.quote and meta.base:
            asset, quote = self._currency(meta.base), self._currency(meta.quote)
            if asset != quote:
                legs = self.fx.legs_of(asset)
                if quote not in legs:
                    self.state.fx.quoted.setdefault(quote, []).append(asset)
                leg = (asset, quote, legs)
        market = self._markets.setdefault(venue, {})[symbol] = (key, leg)
        return market

    def _terms(self, position: Position, key: str, venue: str, symbol: str, now: int) -> None:
        """Give a flat position the instrument's current terms."""
        meta = self._describe(key, symbol)
        position.currency = currency = self._currency(meta.quote)
        position.perpetual = perpetual = meta.perpetual
        position.size = meta.contract_size if perpetual else 1.0
        leverage = self.config.leverage_of(venue, symbol) if perpetual else 1.0
        if perpetual and meta.max_leverage > 0:
            leverage = min(leverage, meta.max_leverage)
        position.leverage = leverage
        position.account = venue if venue in self.config.venues else ""
        self.fx.track(currency, now)
        self._refresh_mode()

    # -- the fold --

    def decide(self, event: Event, now: int) -> list[Event]:
        state = self.state
        state.events += 1
        due = 0 < state.next_funding < now
        if type(event) is Bar:  # first, and inline: nearly every input is a bar
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
                if len(self._rates) > 1:
                    self.fx.changed(asset, quote, legs, event.ts)
            if self._attribution_every:
                state.bars += 1
                if state.bars % self._attribution_every == 0:
                    out: list[Event] = [self.equity(now), *self.attribution(now)]
                    return settled + out if settled else out
            if settled:
                settled.append(self.equity(now))
                return settled
            return [self._simple_equity(now) if self._simple else self.equity(now)]
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
        key = f"{fill.venue}|{fill.symbol}"
        position = state.positions.get(key)
        if position is None:
            position = state.positions[key] = Position()
            self._terms(position, key, fill.venue, fill.symbol, now)
        elif not position.qty:
            self._terms(position, key, fill.venue, fill.symbol, now)
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
                self._track(fee_currency, now)
            cash[fee_currency] = cash.get(fee_currency, 0.0) - fee
        else:
            realized = position.apply_fill(signed, price)
            state.realized[currency] = state.realized.get(currency, 0.0) + realized
            if fee_currency == currency:
                cash[currency] = cash.get(currency, 0.0) - (signed * price + fee)
            else:
                if fee_currency not in self._rates:
                    self._track(fee_currency, now)
                cash[currency] = cash.get(currency, 0.0) - signed * price
                cash[fee_currency] = cash.get(fee_currency, 0.0) - fee
            if position.qty < 0 and not self._margin(position.account):
                position.short_breach = True
        state.fees[fee_currency] = state.fees.get(fee_currency, 0.0) + fee
        self._attribute(
            state.strategies, fill.strategy, key, signed, price, size, fee, fee_currency, currency
        )
        self._attribute(
            state.tags,
            f"{fill.strategy}|{fill.model_tag}",
            key,
            signed,
            price,
            size,
            fee,
            fee_currency,
            currency,
        )
        if position.perpetual:
            return PositionChanged(
                ts=now,
                venue=fill.venue,
                symbol=fill.symbol,
                qty=position.qty,
                avg_price=position.avg_price,
                realized_pnl=position.realized,
                strategy=fill.strategy,
                funding=position.funding or _PC_FUNDING0,
                margin_used=abs(position.qty * size * position.mark) / position.leverage
                or _PC_MARGIN0,
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

    def _track(self, currency: str, now: int) -> None:
        self.fx.track(currency, now)
        self._refresh_mode()

    def _margin(self, account: str) -> bool:
        if not account:
            return self.config.margin
        return self.config.venues[account].margin

    @staticmethod
    def _attribute(
        books: dict[str, Book],
        name: str,
        key: str,
        signed: float,
        price: float,
        size: float,
        fee: float,
        fee_currency: str,
        currency: str,
    ) -> None:
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

    def _on_instrument(self, event: Instrument) -> None:
        key = f"{event.venue}|{event.symbol}"
        self.state.instruments[key] = from_description(event)
        self._meta.pop(key, None)
        self._markets.get(event.venue, {}).pop(event.symbol, None)

    # -- funding --

    def _on_funding(self, event: FundingRate, now: int, due: bool) -> list[Event]:
        state = self.state
        out: list[Event] = self._settle_due(now) if due else []
        key = f"{event.venue}|{event.symbol}"
        if not self._describe(key, event.symbol).perpetual:
            return out
        when = event.next_time or event.ts
        if when > event.ts:  # a forecast: paid at ``when`` with the last forecast before then
            if when > state.funded.get(key, 0):
                state.pending_funding.setdefault(key, {})[when] = event.rate
                if not state.next_funding or when < state.next_funding:
                    state.next_funding = when
            return out
        paid = self._pay(key, event.venue, event.symbol, event.rate, when, now)
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
                venue, _, symbol = key.partition("|")
                paid = self._pay(key, venue, symbol, pending[when], when, now)
                if paid is not None:
                    out.append(paid)
        later = [t for pending in state.pending_funding.values() for t in pending]
        state.next_funding = min(later) if later else 0
        return out

    def _pay(
        self, key: str, venue: str, symbol: str, rate: float, when: int, now: int
    ) -> PositionChanged | None:
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
        for books in (state.strategies, state.tags):
            for book in books.values():
                lot = book.lots.get(key)
                if lot is not None and lot.qty:
                    share = lot.qty * per_unit
                    lot.funding += share
                    book.funding[currency] = book.funding.get(currency, 0.0) + share
        return PositionChanged(
            ts=now,
            venue=venue,
            symbol=symbol,
            qty=position.qty,
            avg_price=position.avg_price,
            realized_pnl=position.realized,
            funding=position.funding or _PC_FUNDING0,
            margin_used=abs(position.qty * position.size * position.mark) / position.leverage
            or _PC_MARGIN0,
        )

    # -- reports --

    def _in_base(self, amounts: dict[str, float]) -> float:
        rates = self.state.fx.rates
        total = 0.0
        for currency, amount in amounts.items():
            total += amount * rates[currency]
        return total

    def equity(self, now: int) -> EquitySnapshot:
        if self._simple:
            return self._simple_equity(now)
        state = self.state
        rates = state.fx.rates
        value = unrealized = gross = 0.0
        perpetuals = False
        upnl = margin = net = 0.0
        for p in state.positions.values():
            qty = p.qty
            if qty:
                fx = rates[p.currency]
                if p.perpetual:
                    perpetuals = True
                    units = qty * p.size
                    mark = p.mark
                    pnl = units * (mark - p.avg_price) * fx
                    upnl += pnl
                    unrealized += pnl
                    notional = units * mark * fx
                    net += notional
                    notional = abs(notional)
                    gross += notional
                    margin += notional / p.leverage
                else:
                    market_value = qty * p.mark
                    value += market_value * fx
                    unrealized += qty * (p.mark - p.avg_price) * fx
                    gross += abs(market_value) * fx
        cash = 0.0
        for account in state.balances.values():
            for currency, amount in account.items():
                cash += amount * rates[currency]
        fx_pnl = 0.0
        for currency, amount, assumed in self._foreign:
            fx_pnl += amount * (rates[currency] - assumed)
        if perpetuals or state.funding or self._foreign:
            return EquitySnapshot(
                ts=now,
                cash=cash,
                equity=cash + value + upnl if perpetuals else cash + value,
                realized_pnl=self._in_base(state.realized),
                unrealized_pnl=unrealized,
                fees=self._in_base(state.fees),
                gross_exposure=gross,
                margin_used=margin or _MARGIN0,
                funding=self._in_base(state.funding) or _FUNDING0,
                fx_pnl=fx_pnl or _FX0,
                net_exposure=value + net if perpetuals else None,
            )
        return EquitySnapshot(  # spot only, no funding, no foreign starting balances
            ts=now,
            cash=cash,
            equity=cash + value,
            realized_pnl=self._in_base(state.realized),
            unrealized_pnl=unrealized,
            fees=self._in_base(state.fees),
            gross_exposure=gross,
        )

    def _simple_equity(self, now: int) -> EquitySnapshot:
        """One account, one currency, spot only: the original ledger's arithmetic."""
        state = self.state
        value = unrealized = gross = 0.0
        for p in state.positions.values():
            qty = p.qty
            if qty:
                market_value = qty * p.mark
                value += market_value
                unrealized += qty * (p.mark - p.avg_price)
                gross += abs(market_value)
        cash = state.balances[""][BASE]
        return EquitySnapshot(
            ts=now,
            cash=cash,
            equity=cash + value,
            realized_pnl=state.realized[BASE],
            unrealized_pnl=unrealized,
            fees=state.fees[BASE],
            gross_exposure=gross,
        )

    def _book_pnl(self, name: str, tag: str, book: Book, now: int) -> StrategyPnL:
        state = self.state
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
            strategy=name,
            model_tag=tag,
            realized_pnl=self._in_base(book.realized),
            unrealized_pnl=unrealized,
            fees=self._in_base(book.fees),
            funding=self._in_base(book.funding),
            gross_exposure=gross,
            net_exposure=net,
            positions=open_lots,
        )

    def attribution(self, now: int) -> list[StrategyPnL]:
        """Every strategy's book (``model_tag`` empty), then every (strategy, model tag)."""
        out = [self._book_pnl(name, "", book, now) for name, book in self.state.strategies.items()]
        for key, book in self.state.tags.items():
            name, _, tag = key.partition("|")
            out.append(self._book_pnl(name, tag, book, now))
        return out

    def positions(self) -> list[PositionView]:
        """Every position the account holds or held, in its own currency."""
        out = []
        for key, p in self.state.positions.items():
            venue, _, symbol = key.partition("|")
            units = p.qty * p.size
            out.append(
                PositionView(
                    venue=venue,
                    symbol=symbol,
                    kind="perpetual" if p.perpetual else "spot",
                    currency=self.currency_name(p.currency),
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

    def currency_name(self, key: str) -> str:
        return (self.state.base or "base") if key == BASE else key

    # -- snapshots --

    @property
    def snapshot_due(self) -> bool:
        """Whether the events folded so far are a multiple of ``snapshot_every``."""
        return self.state.events % self.config.snapshot_every == 0

    def snapshot(self) -> bytes:
        return _ENCODER.encode(self.state)

    def restore(self, data: bytes) -> None:
        try:
            self.state = _STATE_DECODER.decode(data)
        except msgspec.ValidationError:
            self.state = self._migrate(data)
        self._reset_caches()

    def _migrate(self, data: bytes) -> PortfolioState:
        """A snapshot of the single-currency ledger: one account, one currency."""
        old = msgspec.msgpack.decode(data, type=_LegacyLedger)
        state = self._fresh()
        state.balances = {"": {BASE: old.cash}}
        state.realized = {BASE: old.realized}
        state.fees = {BASE: old.fees}
        state.marks = dict(old.marks)
        for key, p in old.positions.items():
            state.positions[key] = Position(
                qty=p.qty, avg_price=p.avg_price, realized=p.realized, mark=p.mark
            )
        return state
