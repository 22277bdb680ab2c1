"""Typed events: the only thing workers share.

Every fact in Keel is one of these frozen structs, encoded as JSON with a ``type`` tag so a
subject tap can decode any message without knowing its subject. Times are integer
nanoseconds since the Unix epoch (UTC). Schema evolution: add fields only with defaults,
never change a field's type, bump ``SCHEMA_VERSION`` when a meaning changes.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import msgspec
from msgspec import UNSET, UnsetType

from contracts.event_base import Event, Int64, is_token, require, require_order_prices
from contracts.external_events import (
    External,
    ListingAnnouncement,
    PromoAnnouncement,
    SocialSentiment,
)
from contracts.governance_events import PlaybookAction
from contracts.model_events import AllocationDecided, ModelRoster, PromotionDecided, ShadowStep
from contracts.notify_events import Notification
from contracts.system_events import DeadLetter, GovernanceCommand, Heartbeat, SystemStatus
from contracts.venue_events import (
    Discrepancy,
    KillSwitch,
    VenueAdoption,
    VenueAnswer,
    VenueOrder,
    VenueStatus,
)

SCHEMA_VERSION = 1

_INF = math.inf
_isfinite = math.isfinite

InstrumentKind = Literal["spot", "perpetual", "stock", "future", "fx"]
FeedState = Literal["streaming", "backfilling", "stale", "polling", "delisted", "closed"]
Side = Literal["buy", "sell"]
OrderAction = Literal["new", "cancel", "amend"]
OrderType = Literal["market", "limit", "stop", "stop_limit"]
TimeInForce = Literal["GTC", "IOC", "FOK"]
ExecStatus = Literal["accepted", "partially_filled", "filled", "canceled", "rejected", "expired"]
TradingMode = Literal["long_only", "long_short"]


class Instrument(Event, frozen=True):
    """A market's description. ``contract_size``: units of ``base`` per contract (a
    perpetual's quantity is in contracts; 1 for spot); ``max_leverage``: the venue's cap
    (0 = not given); ``settle``: the currency a perpetual settles in (empty for spot);
    ``active``: False once the venue stopped trading it (a delisting is a new event).

    Brokers' contracts (Interactive Brokers) also say: ``contract_id``, the broker's own id
    (IB's conId); ``expiry``, a future's last trading day (YYYYMMDD); ``trading_hours`` and
    ``liquid_hours``, the broker's session text read in ``time_zone``
    (``services/venues/ib/calendar.py``). Empty for crypto markets, which never close."""

    venue: str
    symbol: str
    base: str
    quote: str
    kind: InstrumentKind = "spot"
    tick_size: float = 0.0
    lot_size: float = 0.0
    min_notional: float = 0.0
    contract_size: float = 1.0
    max_leverage: float = 0.0
    settle: str = ""
    active: bool = True
    contract_id: str = ""
    expiry: str = ""
    time_zone: str = ""
    trading_hours: str = ""
    liquid_hours: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.tick_size >= 0 and self.lot_size >= 0 and self.min_notional >= 0,
            "tick_size, lot_size and min_notional must be >= 0",
        )
        require(self.contract_size > 0, "contract_size must be > 0")
        require(self.max_leverage >= 0, "max_leverage must be >= 0")
        require(bool(self.base and self.quote), "base and quote must not be empty")


class Bar(Event, frozen=True, gc=False):
    """An OHLCV bar; ``ts`` equals ``close_time`` (a bar is known when it closes).

    ``gc=False``: only strings and numbers, so never part of a reference cycle; untracked, a
    bar (one built per row read) costs the garbage collector nothing."""

    venue: str
    symbol: str
    interval: str
    open_time: Int64
    close_time: Int64
    open: float
    high: float
    low: float
    close: float
    volume: float

    def __post_init__(self) -> None:
        # Built for every bar read: one chained comparison checks the rules and finiteness
        # at once (NaN fails every comparison, infinity fails ``< _INF``); anything it
        # refuses takes the generic path below, which names the problem.
        if (
            0 < self.low <= self.high < _INF
            and 0 < self.open < _INF
            and 0 < self.close < _INF
            and 0 <= self.volume < _INF
            and self.open_time < self.close_time == self.ts
        ):
            return
        super().__post_init__()
        require(min(self.open, self.high, self.low, self.close) > 0, "prices must be > 0")
        require(self.volume >= 0, "volume must be >= 0")
        require(self.high >= self.low, "high below low")
        require(self.close_time > self.open_time, "close_time must be after open_time")
        require(self.ts == self.close_time, "ts must equal close_time")


class Trade(Event, frozen=True):
    venue: str
    symbol: str
    price: float
    qty: float
    side: Side
    trade_id: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.price > 0 and self.qty > 0, "price and qty must be > 0")


class Quote(Event, frozen=True):
    venue: str
    symbol: str
    bid: float
    ask: float
    bid_size: float = 0.0
    ask_size: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.bid <= self.ask, "need 0 < bid <= ask")
        require(self.bid_size >= 0 and self.ask_size >= 0, "bid_size and ask_size must be >= 0")


class FundingRate(Event, frozen=True):
    """A perpetual's funding rate: ``rate`` is the fraction of the position's notional that
    longs pay shorts (negative: shorts pay longs) per funding interval of ``interval_h``
    hours; ``next_time`` is the next funding time (ns, 0 = not given)."""

    venue: str
    symbol: str
    rate: float
    interval_h: float = 8.0
    next_time: Int64 = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.interval_h > 0, "interval_h must be > 0")
        require(self.next_time >= 0, "next_time must be >= 0")


class FeedStatus(Event, frozen=True):
    """The state of one symbol's live feed at a venue (``md.status.<venue>.<symbol>``):
    ``streaming`` (closed bars arrive on time), ``backfilling`` (missing bars are being
    fetched by REST), ``stale`` (no closed bar by close + grace: risk takes no new entries on
    it), ``polling`` (the stream is down, REST polling keeps the bars coming), ``delisted``
    (the venue stopped trading it) or ``closed`` (the trading calendar says the session
    ended and every bar of it is stored: no entries until it opens; a normal quiet, not an
    outage; the reason names the next open). ``ts`` is the close time the state is about, so a replay
    orders it with the bars it concerns; ``last_close`` is the close of the last stored bar."""

    venue: str
    symbol: str
    state: FeedState
    reason: str = ""
    last_close: Int64 = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.last_close >= 0, "last_close must be >= 0")

    @property
    def fresh(self) -> bool:
        """Whether risk may take new entries on this symbol's data."""
        return self.state in ("streaming", "polling")


class Signal(Event, frozen=True):
    """A strategy's intent: a target position (preferred) or a side and size.

    ``stop`` and ``target`` are levels the strategy computed (close - k * ATR may fall below
    zero in a wild market): any finite value is legal here, so the strategy's own state and
    what it publishes never part; risk decides what a bracket can carry."""

    strategy: str
    venue: str
    symbol: str
    model_tag: str = ""
    target_position: float | None = None
    side: Side | None = None
    size: float | None = None
    confidence: float = 1.0
    stop: float | None = None
    target: float | None = None
    atr: float | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        by_target = self.target_position is not None and self.side is None and self.size is None
        by_side = self.target_position is None and self.side is not None and self.size is not None
        require(by_target or by_side, "give either target_position or both side and size")
        require(0.0 <= self.confidence <= 1.0, "confidence must be within [0, 1]")
        require(self.size is None or self.size > 0, "size must be > 0")
        require(self.atr is None or self.atr >= 0, "atr must be >= 0")


class OrderCommand(Event, frozen=True):
    """An order for the execution role's order manager (docs/orders.md).

    ``action``: ``new``, ``cancel`` or ``amend`` (a working order's new total ``qty`` and,
    when given, new ``limit_price``/``stop_price``). The order-management fields default to
    ``msgspec.UNSET`` (falsy; ``None`` is accepted and stored as UNSET), which leaves them out
    of the JSON, so a plain order carries only the fields it uses. ``take_profit`` and
    ``stop_loss`` make a ``new`` order a bracket entry (an OCO pair of a take-profit limit and
    a protective stop, placed when it fills); ``trail_pct`` or ``trail_atr`` (a multiple of
    ``atr``, else of the order manager's ATR) make the stop trail; ``oco_group`` links orders
    that cancel each other; ``expire_at`` (ns) is a good-till-date expiry."""

    action: OrderAction
    client_order_id: str
    strategy: str
    venue: str
    symbol: str
    side: Side
    qty: float
    order_type: OrderType = "market"
    limit_price: float | None = None
    stop_price: float | None = None
    time_in_force: TimeInForce = "GTC"
    model_tag: str = ""
    take_profit: float | UnsetType | None = UNSET
    stop_loss: float | UnsetType | None = UNSET
    trail_pct: float | UnsetType | None = UNSET
    trail_atr: float | UnsetType | None = UNSET
    atr: float | UnsetType | None = UNSET
    oco_group: str | UnsetType | None = UNSET
    expire_at: Int64 | UnsetType | None = UNSET

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.qty > 0, "qty must be > 0")
        require(bool(self.client_order_id), "client_order_id must not be empty")
        require(is_token(self.strategy), _STRATEGY_TOKEN)
        if (
            self.take_profit is not UNSET
            or self.stop_loss is not UNSET
            or self.trail_pct is not UNSET
            or self.trail_atr is not UNSET
            or self.atr is not UNSET
            or self.oco_group is not UNSET
            or self.expire_at is not UNSET
        ):
            self._check_managed()
        require_order_prices(self.order_type, self.limit_price, self.stop_price)

    def _check_managed(self) -> None:
        for name in _MANAGED_FIELDS:
            if getattr(self, name) is None:
                msgspec.structs.force_setattr(self, name, UNSET)
        for name in ("take_profit", "stop_loss", "trail_atr", "atr"):
            value = getattr(self, name)
            require(value is UNSET or value > 0, f"{name} must be > 0")
        trail_pct, trail_atr = self.trail_pct, self.trail_atr
        require(trail_pct is UNSET or 0 < trail_pct < 100, "trail_pct must be within (0, 100)")
        require(trail_pct is UNSET or trail_atr is UNSET, "give trail_pct or trail_atr, not both")
        require(self.oco_group is UNSET or bool(self.oco_group), "oco_group must not be empty")
        require(self.expire_at is UNSET or self.expire_at > 0, "expire_at must be > 0")


_STRATEGY_TOKEN = "strategy must match [A-Za-z0-9_-]+ (it names subjects downstream)"

_MANAGED_FIELDS = (
    "take_profit",
    "stop_loss",
    "trail_pct",
    "trail_atr",
    "atr",
    "oco_group",
    "expire_at",
)


class RiskDecision(Event, frozen=True):
    approved: bool
    strategy: str
    venue: str
    symbol: str
    client_order_id: str = ""
    rule: str = ""
    reason: str = ""


class ExecutionReport(Event, frozen=True):
    status: ExecStatus
    client_order_id: str
    strategy: str
    venue: str
    symbol: str
    side: Side
    order_qty: float
    venue_order_id: str = ""
    fill_price: float = 0.0
    fill_qty: float = 0.0
    cum_qty: float = 0.0
    fee: float = 0.0
    fee_currency: str = ""
    model_tag: str = ""
    reason: str = ""
    parent_id: str | UnsetType = UNSET
    stop_price: float | UnsetType = UNSET
    limit_price: float | UnsetType = UNSET

    def __post_init__(self) -> None:
        # Built for every fill: a finite sum means finite fields; the order manager's
        # optional prices are UNSET on the venue's own reports. ``fee`` may be negative (a
        # maker rebate, docs/fill-models.md); quantities and prices may not. A fill
        # (``fill_qty`` > 0, whatever the status) needs a price. A ``filled`` or
        # ``partially_filled`` report without a fill (``fill_qty`` 0) restates the order's
        # status (the order manager's amendment, a status query): nothing is booked from it.
        if (
            _isfinite(self.order_qty + self.fill_price + self.fill_qty + self.cum_qty + self.fee)
            and self.stop_price is UNSET
            and self.limit_price is UNSET
            and self.order_qty >= 0.0
            and self.cum_qty >= 0.0
            and (self.fill_price > 0.0 if self.fill_qty > 0.0 else self.fill_qty == 0.0)
            and self.fill_price >= 0.0
            and is_token(self.strategy)
        ):
            return
        super().__post_init__()
        require(is_token(self.strategy), _STRATEGY_TOKEN)
        require(self.order_qty >= 0, "order_qty must be >= 0")
        require(self.fill_price >= 0, "fill_price must be >= 0")
        require(self.fill_qty >= 0, "fill_qty must be >= 0")
        require(self.cum_qty >= 0, "cum_qty must be >= 0")
        require(self.fill_qty == 0 or self.fill_price > 0, "fill_price must be > 0 with a fill")
        require(self.stop_price is UNSET or self.stop_price > 0, "stop_price must be > 0")
        require(self.limit_price is UNSET or self.limit_price > 0, "limit_price must be > 0")


class PositionChanged(Event, frozen=True, omit_defaults=True):
    """A position after a fill (or a funding payment): ``qty`` signed (contracts for a
    perpetual), ``avg_price`` and ``realized_pnl`` in the quote currency. Perpetuals add
    ``funding`` (paid on this position so far, negative = received) and ``margin_used``
    (initial margin at the mark). Fields at their default are left out of the JSON
    (``omit_defaults``), so a spot position carries only the fields it uses."""

    venue: str
    symbol: str
    qty: float
    avg_price: float
    realized_pnl: float
    strategy: str = ""
    funding: float = 0.0
    margin_used: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.avg_price >= 0, "avg_price must be >= 0")
        require(self.margin_used >= 0, "margin_used must be >= 0")


class EquitySnapshot(Event, frozen=True, omit_defaults=True, gc=False):
    """The book in the base currency (docs/portfolio.md); numbers only, so untracked by the
    garbage collector like ``Bar`` (one is built per bar). Fields at their default are left
    out of the JSON (``omit_defaults``), so a spot book in one currency carries only what it
    uses: ``margin_used`` (perpetuals' initial margin), ``funding`` (paid so far, negative =
    received), ``fx_pnl`` (change in the base value of the starting balances),
    ``net_exposure`` (signed; None when no perpetual is open: it is then equity - cash)."""

    cash: float
    equity: float
    realized_pnl: float
    unrealized_pnl: float
    fees: float
    gross_exposure: float
    margin_used: float = 0.0
    funding: float = 0.0
    fx_pnl: float = 0.0
    net_exposure: float | None = None

    def __post_init__(self) -> None:
        # Built once per bar: a finite sum means finite fields (NaN and infinities propagate);
        # an overflowing sum of finite fields falls back to the generic check, which passes.
        if _isfinite(
            self.cash
            + self.equity
            + self.realized_pnl
            + self.unrealized_pnl
            + self.fees
            + self.gross_exposure
            + self.margin_used
            + self.funding
            + self.fx_pnl
        ) and (
            (self.net_exposure is None or _isfinite(self.net_exposure))
            and self.gross_exposure >= 0.0
            and self.margin_used >= 0.0
        ):
            return
        super().__post_init__()
        require(self.gross_exposure >= 0, "gross_exposure must be >= 0")
        require(self.margin_used >= 0, "margin_used must be >= 0")

    @property
    def net(self) -> float:
        """Net exposure (signed, base currency), whether or not ``net_exposure`` is set."""
        return self.equity - self.cash if self.net_exposure is None else self.net_exposure


class StrategyPnL(Event, frozen=True):
    """Attribution of the book to a strategy (``model_tag`` empty) or to one model tag of
    it, in the base currency: what its own fills made (docs/portfolio.md, Attribution).
    Published on ``pf.pnl.<strategy>`` every ``[portfolio] attribution_every`` bars."""

    strategy: str
    model_tag: str = ""
    realized_pnl: float = 0.0
    unrealized_pnl: float = 0.0
    fees: float = 0.0
    funding: float = 0.0
    gross_exposure: float = 0.0
    net_exposure: float = 0.0
    positions: Int64 = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.gross_exposure >= 0, "gross_exposure must be >= 0")
        require(self.positions >= 0, "positions must be >= 0")

    @property
    def pnl(self) -> float:
        return self.realized_pnl + self.unrealized_pnl - self.fees - self.funding


class ParamsTuned(Event, frozen=True):
    """A strategy moved one of its own parameters (auto-tuning); kept for audit and replay."""

    strategy: str
    symbol: str
    param: str
    old: float
    new: float
    reason: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.param), "param must not be empty")


class RiskAlert(Event, frozen=True):
    """A risk guard or breach acted (published on ``ord.alert.<rule>``): ``rule`` is the
    rail or guard (``depeg_guard``, ``funding_guard``, ``max_drawdown``...), ``action`` what
    it did or asks the order manager to do (``halt_entries``, ``flatten``, ``trim``,
    ``block``, ``cancel_entries``, ``tighten_stops``, ``resume``), ``detail`` the numbers.
    ``venue``/``symbol`` name the market concerned when there is one."""

    rule: str
    action: str
    detail: str = ""
    venue: str = ""
    symbol: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.action), "action must not be empty")


AnyEvent = (
    Instrument
    | Bar
    | Trade
    | Quote
    | FundingRate
    | FeedStatus
    | Signal
    | OrderCommand
    | RiskDecision
    | ExecutionReport
    | PositionChanged
    | EquitySnapshot
    | StrategyPnL
    | ParamsTuned
    | GovernanceCommand
    | Heartbeat
    | DeadLetter
    | SystemStatus
    | RiskAlert
    | ListingAnnouncement
    | SocialSentiment
    | PromoAnnouncement
    | VenueOrder
    | VenueAnswer
    | Discrepancy
    | VenueStatus
    | VenueAdoption
    | KillSwitch
    | PlaybookAction
    | ShadowStep
    | ModelRoster
    | PromotionDecided
    | AllocationDecided
    | Notification
)

EXTERNAL_TYPES: tuple[type[External], ...] = (
    ListingAnnouncement,
    SocialSentiment,
    PromoAnnouncement,
)

EVENT_TYPES: tuple[type[Event], ...] = get_args(AnyEvent)
