"""Reconciliation, pure: the venue's view against the venue journal (docs/reconciliation.md).

Rules, each one a pitfall other engines met:
- a failed or partial query (``complete=False``) concludes nothing: no inferred fill, no
  missing order, no position, never "flat";
- a venue trade Keel had not recorded becomes a fill with the trade's own id (the event id
  the stream would have given, so a late stream copy is the same event); Keel's position is
  its own log (baseline + fills), never rebuilt from a window of the venue's trade history;
- an order whose client id is no leg the journal knows is external: recorded once, never
  traded; its trades are not Keel's fills, so they show as a position or balance difference;
- a leg with recent activity (within ``settle_s``) or whose fate is open is not judged yet:
  its fill may be on the wire;
- positions and balances beyond tolerance halt the venue until an operator adopts the
  venue's view; the first reconciliation, and the one after an adoption, take the venue's
  numbers as the baseline instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from contracts.venue_events import Discrepancy, VenueAnswer, VenueOrder
from services.venues.client_ids import venue_client_id
from services.venues.journal import Leg, VenueJournal

_MS = 1_000_000
_NS = 1_000_000_000
_NOISE = 1e-9
"""Relative difference that is float noise, never a discrepancy (venue decimals vs sums)."""
_STOP_TYPES = frozenset({"stop", "stop_limit"})


class ViewOrder(msgspec.Struct, frozen=True, kw_only=True):
    """One open order as the venue lists it."""

    symbol: str
    venue_order_id: str
    client_id: str = ""
    side: str = ""
    qty: float = 0.0
    filled: float = 0.0
    order_type: str = ""
    price: float | None = None
    stop_price: float | None = None
    reduce_only: bool = False
    ts: int = 0


class ViewTrade(msgspec.Struct, frozen=True, kw_only=True):
    """One of the account's trades as the venue lists it (``venue_ts`` in ns)."""

    symbol: str
    trade_id: str
    venue_order_id: str
    side: str
    qty: float
    price: float
    client_id: str = ""
    fee: float = 0.0
    fee_currency: str = ""
    venue_ts: int = 0


class OpenOrders(msgspec.Struct, frozen=True, kw_only=True):
    """``symbols``: the symbols asked (None: all); ``conditional``: stop/algo orders
    included (Binance USDT-M and Bybit list them apart)."""

    orders: tuple[ViewOrder, ...] = ()
    complete: bool = False
    symbols: tuple[str, ...] | None = None
    conditional: bool = True
    error: str = ""

    def covers(self, leg: Leg) -> bool:
        if self.symbols is not None and leg.order.symbol not in self.symbols:
            return False
        return self.conditional or leg.order.order_type not in _STOP_TYPES


class Trades(msgspec.Struct, frozen=True, kw_only=True):
    trades: tuple[ViewTrade, ...] = ()
    complete: bool = False
    error: str = ""


class Positions(msgspec.Struct, frozen=True, kw_only=True):
    """Signed positions of derivatives and stocks by symbol; a symbol not listed in a
    complete view is flat."""

    positions: dict[str, float] = {}
    complete: bool = False
    error: str = ""


class Balances(msgspec.Struct, frozen=True, kw_only=True):
    """Total per asset (an asset not listed in a complete view is zero) and the part of it
    that is open derivatives' unrealized profit."""

    balances: dict[str, float] = {}
    unrealized: dict[str, float] = {}
    complete: bool = False
    error: str = ""

    def wallet(self, asset: str) -> float:
        """The total without open positions' unrealized profit (Binance USDT-M's total is
        its margin balance), which is what Keel's fills account for."""
        return float(self.balances.get(asset, 0.0)) - float(self.unrealized.get(asset, 0.0))


class VenueView(msgspec.Struct, frozen=True, kw_only=True):
    """What the reconciliation queries returned; ``ts`` is the gateway's clock when the
    queries began. Every part defaults to incomplete: only a query that answered in full
    says anything."""

    ts: int
    open_orders: OpenOrders = msgspec.field(default_factory=OpenOrders)
    trades: Trades = msgspec.field(default_factory=Trades)
    positions: Positions = msgspec.field(default_factory=Positions)
    balances: Balances = msgspec.field(default_factory=Balances)

    @classmethod
    def from_ccxt(
        cls,
        *,
        ts: int,
        orders: Sequence[Mapping[str, Any]] | None = None,
        orders_error: str = "",
        order_symbols: Sequence[str] | None = None,
        trades: Sequence[Mapping[str, Any]] | None = None,
        trades_error: str = "",
        positions: Mapping[str, float] | None = None,
        positions_error: str = "",
        balances: Mapping[str, float] | None = None,
        balances_error: str = "",
        unrealized: Mapping[str, float] | None = None,
    ) -> VenueView:
        """From ccxt's unified structures; a part that is None or has an error is
        incomplete."""
        return cls(
            ts=ts,
            open_orders=OpenOrders(
                orders=tuple(_ccxt_order(o) for o in orders or ()),
                complete=orders is not None and not orders_error,
                symbols=tuple(order_symbols) if order_symbols is not None else None,
                error=orders_error,
            ),
            trades=Trades(
                trades=tuple(_ccxt_trade(t) for t in trades or ()),
                complete=trades is not None and not trades_error,
                error=trades_error,
            ),
            positions=Positions(
                positions=dict(positions or {}),
                complete=positions is not None and not positions_error,
                error=positions_error,
            ),
            balances=Balances(
                balances=dict(balances or {}),
                unrealized=dict(unrealized or {}),
                complete=balances is not None and not balances_error,
                error=balances_error,
            ),
        )


def _float(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def _ccxt_order(order: Mapping[str, Any]) -> ViewOrder:
    stop = _float(order.get("triggerPrice")) or _float(order.get("stopPrice"))
    return ViewOrder(
        symbol=str(order.get("symbol") or ""),
        venue_order_id=str(order.get("id") or ""),
        client_id=str(order.get("clientOrderId") or ""),
        side=str(order.get("side") or ""),
        qty=_float(order.get("amount")) or 0.0,
        filled=_float(order.get("filled")) or 0.0,
        order_type=str(order.get("type") or ""),
        price=_float(order.get("price")),
        stop_price=stop,
        reduce_only=bool(order.get("reduceOnly")),
        ts=int(order.get("timestamp") or 0) * _MS,
    )


def _ccxt_trade(trade: Mapping[str, Any]) -> ViewTrade:
    fee = trade.get("fee") or {}
    return ViewTrade(
        symbol=str(trade.get("symbol") or ""),
        trade_id=str(trade.get("id") or ""),
        venue_order_id=str(trade.get("order") or ""),
        client_id=str(trade.get("clientOrderId") or ""),
        side=str(trade.get("side") or ""),
        qty=_float(trade.get("amount")) or 0.0,
        price=_float(trade.get("price")) or 0.0,
        fee=_float(fee.get("cost")) or 0.0,
        fee_currency=str(fee.get("currency") or ""),
        venue_ts=int(trade.get("timestamp") or 0) * _MS,
    )


class Tolerance(msgspec.Struct, frozen=True, kw_only=True):
    """How far the venue's numbers may be from Keel's before the venue halts: a difference
    within ``max(absolute, relative * the larger value)`` is accepted. ``settle_s``: how long
    after a leg's last activity its symbol is judged (a fill may be on the wire)."""

    position: float = 0.0
    balance: float = 0.0
    position_rel: float = 0.0
    balance_rel: float = 0.0
    settle_s: float = 5.0
    ignore_assets: tuple[str, ...] = ()

    def within(self, venue: float, keel: float, absolute: float, relative: float) -> bool:
        scale = max(abs(venue), abs(keel))
        return abs(venue - keel) <= max(absolute, relative * scale, _NOISE * max(scale, 1.0))


class Findings(msgspec.Struct, frozen=True, kw_only=True):
    """What reconciliation found and what the gateway is to do: store the discrepancies and
    the answers (inferred fills under the trade's own id, orders found for legs in doubt),
    place the re-placed stops (``VenueOrder`` legs), query the legs in ``queries`` by client
    id, cancel the orders in ``cancels`` (venue order ids of Keel legs its journal holds as
    over). ``deferred``: symbols and assets not judged this time (recent activity, a leg in
    doubt); ``halt``: a position or balance is beyond tolerance."""

    discrepancies: tuple[Discrepancy, ...] = ()
    answers: tuple[VenueAnswer, ...] = ()
    replace_stops: tuple[VenueOrder, ...] = ()
    queries: tuple[str, ...] = ()
    cancels: tuple[str, ...] = ()
    deferred: tuple[str, ...] = ()
    halt: bool = False

    @property
    def fills(self) -> tuple[VenueAnswer, ...]:
        return tuple(a for a in self.answers if a.kind == "fill")


class _Run:
    """One reconciliation's working set."""

    def __init__(self, view: VenueView, journal: VenueJournal, tolerance: Tolerance) -> None:
        self.view = view
        self.journal = journal
        self.tolerance = tolerance
        self.venue = journal.venue
        self.after = journal.copy()  # the journal with this run's inferred fills
        self.settled_before = view.ts - round(tolerance.settle_s * _NS)
        self.discrepancies: list[Discrepancy] = []
        self.answers: list[VenueAnswer] = []
        self.replace: list[VenueOrder] = []
        self.queries: list[str] = []
        self.cancels: list[str] = []
        self.deferred: list[str] = []
        self.foreign: dict[str, list[str]] = {}
        self.halt = False

    def found(self, kind: str, action: str, **fields: Any) -> None:
        self.discrepancies.append(
            Discrepancy(ts=self.view.ts, venue=self.venue, kind=kind, action=action, **fields)  # type: ignore[arg-type]
        )

    def findings(self) -> Findings:
        return Findings(
            discrepancies=tuple(self.discrepancies),
            answers=tuple(self.answers),
            replace_stops=tuple(self.replace),
            queries=tuple(dict.fromkeys(self.queries)),
            cancels=tuple(dict.fromkeys(self.cancels)),
            deferred=tuple(dict.fromkeys(self.deferred)),
            halt=self.halt,
        )


def reconcile(view: VenueView, journal: VenueJournal, tolerance: Tolerance) -> Findings:
    run = _Run(view, journal, tolerance)
    _failed_queries(run)
    if view.trades.complete:
        _trades(run)
    if view.open_orders.complete:
        _open_orders(run)
    if view.trades.complete and view.positions.complete and view.balances.complete:
        if journal.baseline_pending:
            _baseline(run)
        else:
            _compare(run)
    return run.findings()


def _failed_queries(run: _Run) -> None:
    view = run.view
    parts: Iterable[tuple[str, bool, str]] = (
        ("open orders", view.open_orders.complete, view.open_orders.error),
        ("trades", view.trades.complete, view.trades.error),
        ("positions", view.positions.complete, view.positions.error),
        ("balances", view.balances.complete, view.balances.error),
    )
    for name, complete, error in parts:
        if not complete:
            run.found("query_failed", "nothing concluded", detail=f"{name}: {error or 'partial'}")


def _leg_of(run: _Run, client_id: str, venue_order_id: str) -> Leg | None:
    journal = run.journal
    leg = journal.leg(client_id) if client_id else None
    if leg is None and venue_order_id:
        leg = journal.leg_by_venue_id(venue_order_id)
        if leg is None and run.view.open_orders.complete:
            for order in run.view.open_orders.orders:
                if order.venue_order_id == venue_order_id and order.client_id:
                    leg = journal.leg(order.client_id)
    return leg


def _trades(run: _Run) -> None:
    for trade in sorted(run.view.trades.trades, key=lambda t: (t.venue_ts, t.trade_id)):
        if not trade.trade_id or trade.qty <= 0 or trade.price <= 0:
            continue
        if run.journal.seen_trade(trade.symbol, trade.trade_id) or run.after.seen_trade(
            trade.symbol, trade.trade_id
        ):
            continue
        leg = _leg_of(run, trade.client_id, trade.venue_order_id)
        if leg is None:
            run.foreign.setdefault(trade.symbol, []).append(trade.trade_id)
            continue
        order = leg.order
        known = run.after.leg(order.venue_client_id)
        filled = (known.filled_qty if known else 0.0) + trade.qty
        answer = VenueAnswer(
            ts=run.view.ts,
            kind="fill",
            venue=run.venue,
            symbol=order.symbol,
            client_order_id=order.client_order_id,
            venue_client_id=order.venue_client_id,
            source="reconcile",
            strategy=order.strategy,
            side=order.side,
            venue_order_id=trade.venue_order_id or leg.venue_order_id,
            order_qty=order.qty,
            cum_qty=filled,
            trade_id=trade.trade_id,
            fill_qty=trade.qty,
            fill_price=trade.price,
            fee=trade.fee,
            fee_currency=trade.fee_currency,
            venue_ts=trade.venue_ts,
        )
        run.answers.append(answer)
        run.after.apply(answer)
        run.found(
            "missed_fill",
            "inferred fill",
            symbol=order.symbol,
            venue_client_id=order.venue_client_id,
            venue_order_id=answer.venue_order_id,
            trade_id=trade.trade_id,
            venue_value=trade.qty,
            detail=f"{order.side} {trade.qty} @ {trade.price}",
        )


def _open_orders(run: _Run) -> None:
    view, journal = run.view, run.journal
    listed_ids: set[str] = set()
    listed_vids: set[str] = set()
    for order in sorted(view.open_orders.orders, key=lambda o: (o.venue_order_id, o.client_id)):
        listed_ids.add(order.client_id)
        listed_vids.add(order.venue_order_id)
        leg = _leg_of(run, order.client_id, order.venue_order_id)
        if leg is None:
            _external(run, order)
        elif leg.state in ("sent", "unknown") or leg.in_doubt():
            _found_open(run, leg, order)
        elif leg.state == "done" and leg.last_ts <= run.settled_before:
            _over_but_open(run, leg, order)
    for leg in journal.legs_open():
        if leg.state != "working" or leg.replaced_by or not view.open_orders.covers(leg):
            continue
        if leg.venue_client_id in listed_ids or (
            leg.venue_order_id and leg.venue_order_id in listed_vids
        ):
            continue
        now = run.after.leg(leg.venue_client_id)
        if now is not None and now.state == "done":
            continue  # this run's inferred fills completed it
        if leg.last_ts > run.settled_before:
            run.deferred.append(leg.order.symbol)
            continue
        _missing(run, leg)


def _external(run: _Run, order: ViewOrder) -> None:
    if run.journal.reported("external_order", order.client_id, order.venue_order_id):
        return
    run.found(
        "external_order",
        "recorded; never traded",
        symbol=order.symbol,
        venue_client_id=order.client_id,
        venue_order_id=order.venue_order_id,
        venue_value=order.qty,
        detail=f"{order.side} {order.order_type} {order.qty} open, placed outside Keel",
    )


def _found_open(run: _Run, leg: Leg, order: ViewOrder) -> None:
    """A leg in doubt the venue lists: that is its real state (accepted, filled so far)."""
    answer = VenueAnswer(
        ts=run.view.ts,
        kind="accepted",
        venue=run.venue,
        symbol=leg.order.symbol,
        client_order_id=leg.order.client_order_id,
        venue_client_id=leg.venue_client_id,
        source="reconcile",
        strategy=leg.order.strategy,
        side=leg.order.side,
        venue_order_id=order.venue_order_id,
        order_qty=order.qty or leg.order.qty,
        cum_qty=order.filled,
    )
    run.answers.append(answer)
    run.after.apply(answer)


def _over_but_open(run: _Run, leg: Leg, order: ViewOrder) -> None:
    """A Keel leg its journal holds as over (canceled, rejected, given up as missing) that
    the venue still lists: nobody manages it, so it is canceled."""
    vcid = leg.venue_client_id
    if run.journal.reported("external_order", vcid, order.venue_order_id):
        return
    run.cancels.append(order.venue_order_id)
    run.found(
        "external_order",
        "cancel",
        symbol=order.symbol,
        venue_client_id=vcid,
        venue_order_id=order.venue_order_id,
        venue_value=order.qty,
        detail=f"Keel's leg is {leg.outcome or 'over'} in its journal but open on the venue",
    )


def _missing(run: _Run, leg: Leg) -> None:
    """A working leg the venue does not list: filled or canceled without Keel hearing, or
    gone. A query by client id tells which; a protective stop is placed again at once."""
    run.queries.append(leg.venue_client_id)
    if leg.cancel_requested or leg.reported_missing:
        return
    fields: dict[str, Any] = {
        "symbol": leg.order.symbol,
        "venue_client_id": leg.venue_client_id,
        "venue_order_id": leg.venue_order_id,
    }
    if not leg.order.protective:
        run.found("missing_order", "query", **fields)
        return
    stop, why = _replacement(run, leg)
    if stop is None:
        run.found("missing_stop", f"query; not re-placed: {why}", **fields)
        return
    run.replace.append(stop)
    run.found(
        "missing_stop",
        f"re-placed as {stop.venue_client_id}",
        venue_value=stop.qty,
        detail=f"{stop.side} {stop.order_type} {stop.qty} @ {stop.stop_price}",
        **fields,
    )


def _replacement(run: _Run, leg: Leg) -> tuple[VenueOrder | None, str]:
    """The same stop as the next leg of its order, for what is left of it (a reduce-only
    stop no larger than the position it protects)."""
    now = run.after.leg(leg.venue_client_id) or leg
    if now.fills.keys() - leg.fills.keys():
        return None, "it traded (inferred fills)"
    qty = now.remaining
    order = leg.order
    if run.after.market(order.symbol).positional:
        # Keel's position and the venue's: a stop IB filled past its day boundary leaves Keel's
        position = run.after.position(order.symbol)
        held = run.view.positions.positions.get(order.symbol, 0.0)
        held = held if run.view.positions.complete else position
        if not all(p > 0 if order.side == "sell" else p < 0 for p in (position, held)):
            return None, f"no position for it to protect (Keel {position}, venue {held})"
        if order.reduce_only:
            qty = min(qty, abs(position))
    if qty <= 0:
        return None, "nothing left of it"
    number = run.journal.next_leg(order.client_order_id)
    stop = msgspec.structs.replace(
        order,
        ts=run.view.ts,
        action="new",
        venue_client_id=venue_client_id(run.venue, order.client_order_id, number),
        qty=qty,
        replaces=leg.venue_client_id,
    )
    return stop, ""


def _busy(run: _Run, symbols: Iterable[str]) -> bool:
    """Whether a leg on these symbols is too fresh or in doubt to judge its numbers."""
    wanted = set(symbols)
    for leg in run.journal.legs():
        if leg.order.symbol not in wanted:
            continue
        now = run.after.leg(leg.venue_client_id) or leg
        if now.in_doubt() or leg.last_ts > run.settled_before:
            return True
    return False


def _position_pairs(run: _Run) -> list[tuple[str, float, float]]:
    venue = run.view.positions.positions
    listed = {s for s in venue if run.after.market(s).positional}
    names = set(run.after.position_symbols()) | listed
    return [(s, float(venue.get(s, 0.0)), run.after.position(s)) for s in sorted(names)]


def _balance_pairs(run: _Run) -> list[tuple[str, float, float]]:
    venue = run.view.balances
    names = (set(run.after.balance_assets()) | set(venue.balances)) - set(
        run.tolerance.ignore_assets
    )
    return [
        (a, venue.wallet(a), run.after.balance(a)) for a in sorted(names) if run.after.tracked(a)
    ]


def _baseline(run: _Run) -> None:
    """The first reconciliation, or the first after an adoption: the venue's numbers are
    the starting point; what differs is recorded with both values."""
    symbols = {leg.order.symbol for leg in run.journal.legs()}
    if _busy(run, symbols):
        run.deferred.append("baseline")  # a leg in doubt may own a trade not yet attributed
        return
    action = "adopted" if run.journal.adoption else "baseline"
    for symbol, venue, keel in _position_pairs(run):
        if not run.tolerance.within(venue, keel, 0.0, 0.0):
            run.found(
                "position_mismatch", action, symbol=symbol, venue_value=venue, keel_value=keel
            )
    for asset, venue, keel in _balance_pairs(run):
        if not run.tolerance.within(venue, keel, 0.0, 0.0):
            run.found("balance_mismatch", action, asset=asset, venue_value=venue, keel_value=keel)


def _foreign_note(run: _Run, symbols: Iterable[str]) -> str:
    trades = [t for s in sorted(set(symbols)) for t in run.foreign.get(s, [])]
    return f"; trades of orders Keel did not place: {', '.join(trades)}" if trades else ""


def _compare(run: _Run) -> None:
    tol = run.tolerance
    for symbol, venue, keel in _position_pairs(run):
        if tol.within(venue, keel, tol.position, tol.position_rel):
            continue
        if _busy(run, [symbol]):
            run.deferred.append(symbol)
            continue
        _halt(run, "position_mismatch", symbol, venue, keel, _foreign_note(run, [symbol]))
    for asset, venue, keel in _balance_pairs(run):
        if tol.within(venue, keel, tol.balance, tol.balance_rel):
            continue
        moving = [
            g.order.symbol
            for g in run.journal.legs()
            if asset in run.after.market(g.order.symbol).assets
        ]
        if _busy(run, moving):
            run.deferred.append(asset)
            continue
        note = _foreign_note(run, [s for s in run.foreign if asset in run.after.market(s).assets])
        _halt(run, "balance_mismatch", asset, venue, keel, note)


def _halt(run: _Run, kind: str, key: str, venue: float, keel: float, note: str) -> None:
    run.halt = True
    before = run.journal.halted_on(kind, key) if run.journal.halted else None
    if before is not None and before == (venue, keel):
        return  # already halted on exactly this; not reported again every cycle
    what = "position" if kind == "position_mismatch" else "balance"
    field = "symbol" if kind == "position_mismatch" else "asset"
    run.found(
        kind,
        "halt",
        venue_value=venue,
        keel_value=keel,
        detail=f"{key} {what}: venue {venue!r}, Keel {keel!r} (beyond tolerance){note}",
        **{field: key},
    )
