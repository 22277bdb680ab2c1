"""One exchange-neutral account and matching engine behind every fake skin.

Skins translate their exchange's wire format into ``Account`` calls and the engine's
``FakeOrder`` / ``FakeFill`` back; nothing here knows any exchange.

Differences from /tmp/keel15/spec.md and notes for skin authors (read first):

- ``on_update`` callbacks run synchronously inside ``place``/``cancel``/``amend`` and inside
  the core's tick; they get a COPY of the order as of that change (so a frame built later
  still shows that moment). To write frames, queue them or ``asyncio.create_task`` them.
  No callback runs while ``faults.silent_user_stream`` is set, nor for ``fill_silently``,
  ``vanish``, ``set_position``, ``set_balance``, ``cancel_silently``: skins need not check
  those faults. While ``faults.hold_user_stream`` is set the updates are kept and
  ``faults.release_user_stream()`` runs the callbacks for them later (late frames).
- ``await account.answer_gate(kind)`` (``kind`` "place", "cancel" or "amend"): call it in the
  REST handler AFTER the engine acted (also after an ``OrderError``), before answering. It
  sleeps ``faults.ack_delay_s`` WALL seconds (the HTTP client's timeout is wall time) and,
  while ``faults.hang_next`` > 0, raises ``NoAnswer``. ``place`` itself raises ``NoAnswer``
  for ``faults.drop_next`` (before acting). The core's middleware turns ``NoAnswer`` into
  a connection closed without any response: skins just let it propagate.
- ``client_id=""`` gets ``"auto-<order_id>"``; a client id already used by an OPEN order
  raises ``duplicate_client_id``; a finished order's client id may be reused and ``find``
  by client id returns the newest order with it.
- ``find``, ``open_orders`` and ``orders`` hide orders younger than ``faults.hidden_s``
  (exchange seconds) unless ``include_hidden=True``; ``cancel`` and ``amend`` see them.
- ``amend(qty=...)`` is the new TOTAL quantity (filled part included), as Binance, Bybit
  and Kraken take it; it must stay above the filled quantity.
- A perpetual's position stays in ``positions`` at qty 0 once closed.
- Rejected orders are not kept (as on Binance): ``place`` raises and stores nothing.
  ``faults.reject_next`` rejects the next placements of any type, whatever endpoint the
  skin serves them from (algo/conditional ones too); ``faults.reject_next_conditional``
  only the next conditional ones (stop / take-profit), so an entry fills and the stop
  placed after it is rejected (the gateway's "a rejected stop flattens" case).
- Modules: records and refusals in ``records.py``, money in ``ledger.py``, faults in
  ``account_faults.py``, pure price rules in ``order_rules.py``; this module re-exports
  what skins import.
- Per-symbol behaviour follows ``SymbolSpec.kind`` (Bybit lists spot and perpetuals on one
  account); ``Account.kind`` is the exchange's main kind.

Matching (time only from ``fake.now_ns()`` or the tick's timestamp):

- market orders fill at once at the ask (buy) / bid (sell) of ``fake.snapshot(symbol)``;
- a limit order that is marketable when placed (buy: ask <= price) fills at the touch as a
  taker; one that rests fills at its own price as a maker on the first tick where the market
  crosses it (buy: ask <= price; sell: bid >= price). IOC fills what it can now and expires
  the rest, FOK all or nothing (the book is deep enough for any size), GTX (post only) that
  would take raises ``post_only_rejected``;
- ``stop`` (stop-market) and ``stop_limit`` trigger when the last trade price reaches the
  stop (buy: last >= stop; sell: last <= stop), ``take_profit`` (market) and
  ``take_profit_limit`` the other way (buy: last <= stop; sell: last >= stop). Once
  triggered they behave as market (``stop_limit``, ``take_profit_limit``: a limit at
  ``price`` that rests until the market crosses it). One that would trigger at once is
  refused with ``would_trigger_immediately``, unless placed (or amended) with
  ``trigger_now="fill"`` (as Kraken accepts it): then it triggers in that same call;
- ``faults.fill_parts`` = N (as set when the order is placed) splits its fill into N trades
  on successive passes (place or trigger, then one per tick; IOC/FOK take all N at once);
- money (fees, spot locks, perpetual positions and margin) moves in ``ledger.py``
  (``Account`` is a ``Ledger``): read its docstring. ``conditional_holds`` (per skin):
  whether a conditional order not yet triggered holds its money (Binance: yes); without it
  (Bybit) the money is taken when it triggers, and one the account cannot cover then is
  canceled (its id in ``starved``). Reduce-only (perpetuals): refused
  without a position to reduce, trimmed to the position when larger (at placing and at each
  fill), expired when the position is gone;
- filters from the ``SymbolSpec``: qty a multiple of ``lot_size`` (``lot_size``), prices of
  ``tick_size`` (``tick_size``), qty x price x contract size >= ``min_notional``
  (``min_notional``; reduce-only exempt).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from tests.fakes.account_faults import AccountFaults
from tests.fakes.ledger import (
    Balance,
    FeeAsset,
    Ledger,
    LedgerError,
    Lock,
    PerpPosition,
    generous,
)
from tests.fakes.order_rules import check_shape, crosses, on_step, touch, triggers
from tests.fakes.prices import NS, SymbolSpec, decimals
from tests.fakes.records import (
    ERROR_CODES,
    LIMIT_TYPES,
    OPEN,
    ORDER_TYPES,
    TAKE_PROFIT_TYPES,
    TRIGGERED_TYPES,
    FakeFill,
    FakeOrder,
    GateKind,
    Kind,
    NoAnswer,
    OrderError,
    OrderType,
    Side,
    Status,
    TimeInForce,
    TriggerNow,
)

if TYPE_CHECKING:
    from tests.fakes.core import FakeExchange, Update

__all__ = [
    "ERROR_CODES",
    "LIMIT_TYPES",
    "OPEN",
    "ORDER_TYPES",
    "TAKE_PROFIT_TYPES",
    "TRIGGERED_TYPES",
    "Account",
    "AccountFaults",
    "Balance",
    "FakeFill",
    "FakeOrder",
    "GateKind",
    "Kind",
    "NoAnswer",
    "OrderError",
    "OrderType",
    "PerpPosition",
    "Side",
    "Status",
    "TimeInForce",
    "TriggerNow",
    "default_kind",
]
EPS = 1e-9
log = logging.getLogger(__name__)


class _Book(msgspec.Struct):
    """The engine's private bookkeeping of one open order."""

    parts_left: int
    lock: Lock = msgspec.field(default_factory=Lock)
    rested: bool = False


Callback = Callable[[FakeOrder, FakeFill | None], None]


class Account(Ledger):
    """Orders and fills of the one account a fake serves; its money is the ``Ledger``."""

    def __init__(
        self,
        fake: FakeExchange,
        kind: Kind,
        balances: dict[str, float] | None = None,
        *,
        taker_fee: float = 0.001,
        maker_fee: float = 0.0008,
        leverage: float = 10.0,
        fee_asset: FeeAsset = "received",
    ) -> None:
        self.fake = fake
        self.kind: Kind = kind
        super().__init__(
            self._spec_any,
            balances if balances is not None else generous(fake.specs.values()),
            taker_fee=taker_fee,
            maker_fee=maker_fee,
            leverage=leverage,
            fee_asset=fee_asset,
        )
        self.faults = AccountFaults(self)
        self._all: list[FakeOrder] = []
        self._by_id: dict[int, FakeOrder] = {}
        self._books: dict[int, _Book] = {}
        """Exactly the open orders, oldest first."""
        self._hidden_until: dict[int, int] = {}
        self._fills: list[FakeFill] = []
        self._callbacks: list[Callback] = []
        self._next_order = 1_000_001
        self._next_trade = 5_000_001
        self._mute = 0
        self._last_ns = 0
        self.conditional_holds = True
        self.starved: set[int] = set()
        """Conditional orders canceled on triggering: the account could not cover them."""

    # -- queries ---------------------------------------------------------------------------

    def find(
        self,
        *,
        order_id: int | None = None,
        client_id: str | None = None,
        include_hidden: bool = False,
    ) -> FakeOrder | None:
        if order_id is not None:
            order = self._by_id.get(order_id)
            if order is None or (client_id is not None and order.client_id != client_id):
                return None
            return order if include_hidden or self._visible(order) else None
        if client_id is not None:
            for order in reversed(self._all):
                if order.client_id == client_id:
                    return order if include_hidden or self._visible(order) else None
        return None

    def open_orders(
        self, symbol: str | None = None, algo: bool | None = None, *, include_hidden: bool = False
    ) -> list[FakeOrder]:
        return [
            o
            for o in self.orders(symbol, include_hidden=include_hidden)
            if o.is_open and (algo is None or o.algo == algo)
        ]

    def orders(self, symbol: str | None = None, *, include_hidden: bool = False) -> list[FakeOrder]:
        return [
            o
            for o in self._all
            if (symbol is None or o.symbol == symbol) and (include_hidden or self._visible(o))
        ]

    def fills(
        self, symbol: str | None = None, since_ns: int | None = None, order_id: int | None = None
    ) -> list[FakeFill]:
        return [
            f
            for f in self._fills
            if (symbol is None or f.symbol == symbol)
            and (since_ns is None or f.ts_ns >= since_ns)
            and (order_id is None or f.order_id == order_id)
        ]

    def on_update(self, callback: Callback) -> None:
        self._callbacks.append(callback)

    async def answer_gate(self, kind: GateKind) -> None:
        """Hold or swallow the answer to a request the engine already acted on."""
        del kind  # every request kind is held the same way
        if self.faults.ack_delay_s > 0:
            await asyncio.sleep(self.faults.ack_delay_s)
        if self.faults.hang_next > 0:
            self.faults.hang_next -= 1
            raise NoAnswer

    def _now(self, ts_ns: int | None = None) -> int:
        """Exchange time, never behind a time already stamped: a tick that runs late (a busy
        loop) must not date a fill before the order it fills."""
        self._last_ns = max(self._last_ns, self.fake.now_ns() if ts_ns is None else ts_ns)
        return self._last_ns

    def _visible(self, order: FakeOrder) -> bool:
        return self._hidden_until.get(order.order_id, 0) <= self.fake.now_ns()

    # -- actions ---------------------------------------------------------------------------

    def place(
        self,
        symbol: str,
        side: Side,
        type: OrderType,
        qty: float,
        *,
        price: float | None = None,
        stop_price: float | None = None,
        client_id: str = "",
        reduce_only: bool = False,
        tif: TimeInForce = "GTC",
        algo: bool = False,
        external: bool = False,
        trigger_now: TriggerNow = "refuse",
    ) -> FakeOrder:
        """A new order, matched at once as far as the market allows; raises ``OrderError``.
        ``trigger_now``: what a conditional order already past its trigger gets: refused
        (``would_trigger_immediately``) or triggered at once."""
        if self.faults.drop_next > 0:
            self.faults.drop_next -= 1
            raise NoAnswer
        if self.faults.reject_next:
            raise OrderError(self.faults.reject_next.pop(0), "rejected on purpose (fault)")
        conditional = self.faults.reject_next_conditional
        if conditional and type in TRIGGERED_TYPES:
            raise OrderError(conditional.pop(0), "conditional order rejected on purpose (fault)")
        now = self._now()
        spec = self._spec(symbol)
        if side not in ("buy", "sell"):
            raise OrderError("bad_request", f"bad side {side!r}")
        if tif not in ("GTC", "IOC", "FOK", "GTX"):
            raise OrderError("bad_request", f"bad time in force {tif!r}")
        if trigger_now not in ("refuse", "fill"):
            raise ValueError(f"trigger_now is 'refuse' or 'fill', not {trigger_now!r}")
        if client_id and any(self._by_id[i].client_id == client_id for i in self._books):
            raise OrderError("duplicate_client_id", f"client id {client_id!r} is in use")
        check_shape(spec, type, price, stop_price)
        tick = self.fake.snapshot(symbol, now)
        if (
            trigger_now == "refuse"
            and type in TRIGGERED_TYPES
            and triggers(side, type, stop_price, tick.trade.price)
        ):
            raise OrderError("would_trigger_immediately", "the order would trigger immediately")
        if reduce_only:
            qty = self._reduce_only_qty(spec, side, qty)
        order_id = self._next_order
        self._next_order += 1
        order = FakeOrder(
            order_id=order_id,
            client_id=client_id or f"auto-{order_id}",
            symbol=symbol,
            side=side,
            type=type,
            qty=qty,
            price=price,
            stop_price=stop_price,
            reduce_only=reduce_only,
            tif=tif,
            algo=algo,
            status="new",
            created_ns=now,
            updated_ns=now,
            external=external,
        )
        self._check_filters(spec, order, tick)
        if tif == "GTX" and type == "limit" and crosses(order, tick):
            raise OrderError("post_only_rejected", "the order would immediately take")
        book = _Book(self.faults.fill_parts)
        self._lock(spec, order, book, tick)
        self._all.append(order)
        self._by_id[order_id] = order
        self._books[order_id] = book
        if self.faults.hidden_s > 0:
            self._hidden_until[order_id] = now + int(self.faults.hidden_s * NS)
        self._remargin(spec)
        self._notify(order, None)
        self._work(order, tick, now)
        return order

    def cancel(
        self,
        *,
        order_id: int | None = None,
        client_id: str | None = None,
        symbol: str | None = None,
    ) -> FakeOrder:
        order = self._open_one(order_id, client_id, symbol)
        self._finish(order, "canceled", self._now())
        return order

    def amend(
        self,
        *,
        order_id: int | None = None,
        client_id: str | None = None,
        qty: float | None = None,
        price: float | None = None,
        stop_price: float | None = None,
        symbol: str | None = None,
        trigger_now: TriggerNow = "refuse",
    ) -> FakeOrder:
        """Change an open order in place (same order id); matched again at once
        (``trigger_now`` as for ``place``)."""
        order = self._open_one(order_id, client_id, symbol)
        spec = self._spec(order.symbol)
        now = self._now()
        tick = self.fake.snapshot(order.symbol, now)
        new_qty = order.qty if qty is None else qty
        new_price = order.price if price is None else price
        new_stop = order.stop_price if stop_price is None else stop_price
        if new_qty <= order.filled + EPS:
            raise OrderError("bad_request", "the new quantity is not above the filled one")
        check_shape(spec, order.type, new_price, new_stop)
        if (
            trigger_now == "refuse"
            and order.type in TRIGGERED_TYPES
            and not order.triggered
            and triggers(order.side, order.type, new_stop, tick.trade.price)
        ):
            raise OrderError("would_trigger_immediately", "the order would trigger immediately")
        trial = msgspec.structs.replace(order, qty=new_qty, price=new_price, stop_price=new_stop)
        self._check_filters(spec, trial, tick)
        if trial.tif == "GTX" and trial.type == "limit" and crosses(trial, tick):
            raise OrderError("post_only_rejected", "the order would immediately take")
        book = self._books[order.order_id]
        dormant = order.reduce_only or self._dormant(order)
        held = 0.0 if dormant else self._order_margin(spec, order, tick)
        self._unlock(book)
        try:
            self._lock(spec, trial, book, tick, credit=held)
        except OrderError:
            self._lock(spec, order, book, tick)
            raise
        order.qty, order.price, order.stop_price = new_qty, new_price, new_stop
        order.updated_ns = now
        self._remargin(spec)
        self._notify(order, None)
        self._work(order, tick, now)
        return order

    # -- ticking ---------------------------------------------------------------------------

    def match(self, ts_ns: int) -> None:
        """One pass over every open order at exchange time ``ts_ns`` (the core's tick)."""
        ts_ns = self._now(ts_ns)
        by_symbol: dict[str, list[FakeOrder]] = {}
        for order_id in self._books:
            order = self._by_id[order_id]
            by_symbol.setdefault(order.symbol, []).append(order)
        for symbol, orders in sorted(by_symbol.items()):
            if self.fake.is_delisted(symbol):
                continue
            tick = self.fake.snapshot(symbol, ts_ns)
            for order in orders:
                try:
                    self._work(order, tick, ts_ns)
                except Exception:  # a skin's callback failed: keep the exchange ticking
                    log.exception("fake matching: order %s on %s", order.order_id, symbol)

    def _work(self, order: FakeOrder, tick: Update, ts: int) -> None:
        if not order.is_open:
            return
        book = self._books[order.order_id]
        if order.type in TRIGGERED_TYPES and not order.triggered:
            if not triggers(order.side, order.type, order.stop_price, tick.trade.price):
                return
            order.triggered = True
            order.updated_ns = ts
            self._notify(order, None)
            if not self.conditional_holds and not self._afford(order, book, tick):
                self.starved.add(order.order_id)
                self._finish(order, "canceled", ts)
                return
        limit = order.type in LIMIT_TYPES
        crossing = not limit or crosses(order, tick)
        if limit and crossing and order.tif == "GTX" and not book.rested:
            self._finish(order, "expired", ts)  # a triggered post-only that would take
            return
        if not crossing:
            if order.tif in ("IOC", "FOK"):
                self._finish(order, "expired", ts)
            else:
                book.rested = True
            return
        maker = limit and book.rested
        price = order.price if maker and order.price is not None else touch(order, tick)
        every = order.tif in ("IOC", "FOK")
        while order.is_open:
            parts = max(1, book.parts_left)
            qty = round(order.remaining, 12) if parts == 1 else self._part(order, parts)
            book.parts_left = parts - 1
            if not self._fill(order, qty, price, maker, ts) or not every:
                break

    # -- internals -------------------------------------------------------------------------

    def _spec(self, symbol: str) -> SymbolSpec:
        spec = self.fake.specs.get(symbol)
        if spec is None or self.fake.is_delisted(symbol):
            raise OrderError("bad_symbol", f"unknown or inactive symbol {symbol!r}")
        return spec

    def _open_one(
        self, order_id: int | None, client_id: str | None, symbol: str | None
    ) -> FakeOrder:
        if order_id is None and not client_id:
            raise OrderError("bad_request", "an order id or a client id is needed")
        order = self.find(order_id=order_id, client_id=client_id, include_hidden=True)
        if order is None or not order.is_open or (symbol is not None and order.symbol != symbol):
            raise OrderError("unknown_order", "unknown order")
        return order

    def _check_filters(self, spec: SymbolSpec, order: FakeOrder, tick: Update) -> None:
        if order.qty <= 0:
            raise OrderError("bad_request", "the quantity must be positive")
        if order.qty < spec.lot_size - EPS or not on_step(order.qty, spec.lot_size):
            raise OrderError("lot_size", f"quantity {order.qty} is not a multiple of the lot")
        reference = self._reference_price(order, tick)
        if (
            not order.reduce_only
            and order.qty * reference * spec.contract_size < spec.min_notional - EPS
        ):
            raise OrderError("min_notional", f"notional below {spec.min_notional}")

    def _reduce_only_qty(self, spec: SymbolSpec, side: Side, qty: float) -> float:
        if spec.kind != "perpetual":
            raise OrderError("bad_request", "reduce-only needs a perpetual")
        reducible = self.reducible(spec.symbol, side)
        if reducible < EPS:
            raise OrderError("reduce_only_rejected", "reduce-only order would not reduce")
        return min(qty, reducible)

    def _reference_price(self, order: FakeOrder, tick: Update) -> float:
        if order.price is not None:
            return order.price
        if order.stop_price is not None and not order.triggered:
            return order.stop_price
        return touch(order, tick)

    def _part(self, order: FakeOrder, parts: int) -> float:
        lot = self._spec_any(order.symbol).lot_size
        share = math.floor(order.remaining / parts / lot + EPS) * lot
        return round(min(order.remaining, max(lot, share)), decimals(lot))

    def _spec_any(self, symbol: str) -> SymbolSpec:
        spec = self.fake.specs.get(symbol)
        return spec if spec is not None else self.fake.path._spec(symbol)

    # -- money (ledger.py) -----------------------------------------------------------------

    def _dormant(self, order: FakeOrder) -> bool:
        """A conditional order that holds nothing until it triggers (``conditional_holds``)."""
        untriggered = order.type in TRIGGERED_TYPES and not order.triggered
        return untriggered and not self.conditional_holds

    def _afford(self, order: FakeOrder, book: _Book, tick: Update) -> bool:
        """Take the money of a conditional order that just triggered; False: not enough."""
        try:
            self._lock(self._spec_any(order.symbol), order, book, tick)
        except OrderError:
            return False
        return True

    def _lock(
        self, spec: SymbolSpec, order: FakeOrder, book: _Book, tick: Update, credit: float = 0.0
    ) -> None:
        if self._dormant(order):
            return
        try:
            self.lock(spec, order, book.lock, self._reference_price(order, tick), credit)
        except LedgerError as error:
            raise OrderError("insufficient_balance", str(error)) from None

    def _unlock(self, book: _Book) -> None:
        self.unlock(book.lock)

    def _order_margin(self, spec: SymbolSpec, order: FakeOrder, tick: Update) -> float:
        return self.margin(spec, order, self._reference_price(order, tick))

    def _remargin(self, spec: SymbolSpec) -> None:
        orders = (self._by_id[order_id] for order_id in self._books)
        self.remargin(spec, [o for o in orders if not self._dormant(o)])

    def _fill(self, order: FakeOrder, qty: float, price: float, maker: bool, ts: int) -> bool:
        """One trade of ``order``; False when nothing could be filled (order finished)."""
        spec = self._spec_any(order.symbol)
        book = self._books[order.order_id]
        if order.reduce_only:
            qty = min(qty, self.reducible(order.symbol, order.side))
            if qty < EPS:
                self._finish(order, "expired", ts)
                return False
        fee, fee_currency = self.settle(spec, order, book.lock, qty, price, maker, ts)
        order.avg_price = round(
            (order.avg_price * order.filled + price * qty) / (order.filled + qty), 10
        )
        order.filled = round(order.filled + qty, 12)
        order.fee_paid += fee
        order.updated_ns = ts
        if order.remaining < EPS:
            order.filled = order.qty
            order.status = "filled"
            self._books.pop(order.order_id, None)
        else:
            order.status = "partially_filled"
        fill = FakeFill(
            trade_id=self._next_trade,
            order_id=order.order_id,
            client_id=order.client_id,
            symbol=order.symbol,
            side=order.side,
            qty=qty,
            price=price,
            fee=fee,
            fee_currency=fee_currency,
            maker=maker,
            ts_ns=ts,
        )
        self._next_trade += 1
        self._fills.append(fill)
        self._remargin(spec)
        self._notify(order, fill)
        return True

    def _finish(self, order: FakeOrder, status: Status, ts: int) -> None:
        book = self._books.pop(order.order_id, None)
        if book is not None:
            self._unlock(book)
        order.status = status
        order.updated_ns = ts
        self._remargin(self._spec_any(order.symbol))
        self._notify(order, None)

    def _notify(self, order: FakeOrder, fill: FakeFill | None) -> None:
        if self._mute or self.faults.silent_user_stream:
            return
        copy = msgspec.structs.replace(order)
        if self.faults.hold_user_stream:
            self.faults.held.append((copy, fill))
            return
        self._deliver(copy, fill)

    def _deliver(self, order: FakeOrder, fill: FakeFill | None) -> None:
        for callback in self._callbacks:
            callback(order, fill)


def default_kind(exchange_id: str) -> Kind:
    return "perpetual" if exchange_id in ("binanceusdm", "krakenfutures") else "spot"
