"""The order manager: order lifecycle, brackets, OCO, trailing stops, expiry and the stop
validator, in front of a venue (the paper venue today, a real venue adapter later).

A pure decider like the venue it wraps: ``decide(event, now)`` takes order commands and bars
and returns execution reports; all state is msgspec structs, so ``snapshot()``/``restore()``
carry open brackets and trailing stops across a restart. ``docs/orders.md`` is the reference;
in short:

- every order follows the state machine of ``services/execution/orders.py``; a repeated
  ``client_order_id`` is never executed twice (refused with a dead letter); illegal commands
  and illegal venue reports are refused and reported the same way;
- plain orders pass through untouched: the venue's own reports come out byte for byte, so a
  run of plain orders gives the results it gave before the order manager existed;
- ``take_profit``/``stop_loss`` make a ``new`` order a bracket entry: when it fills, a
  take-profit limit and a protective stop (an OCO pair) are placed for the filled quantity,
  grown by further entry fills, shrunk by each other's fills, canceled when the position
  they protect is gone. Bracket legs are reduce-only;
- ``trail_pct``/``trail_atr`` make the stop trail the best price since activation, moved
  after each bar's fills and never loosened; ``expire_at`` expires an order (GTD);
- the stop validator places a protective stop on positions of strategies listed in
  ``[orders] require_stop`` that lack one, and re-places a bracket stop that was removed.

The venue is asked only ``new`` and ``cancel``: an amendment is a cancel/replace of the
venue leg (the order keeps its ``client_order_id`` and cumulative quantity).
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import UNSET

from contracts.codec import encode
from contracts.events import Bar, DeadLetter, Event, ExecutionReport, OrderCommand, RiskAlert
from contracts.subjects import subject_for, symbol_token
from services.execution.orders import WORKING, allowed
from services.runtime.decider import Decider

DUST = 1e-9  # relative quantity tolerance
MAX_ATR_PERIOD = 10_000

LegKind = Literal["order", "take_profit", "stop_loss"]


class OrdersConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[orders]`` section: the stop validator's rule and the order manager's ATR.

    ``require_stop``: strategies whose positions must carry a protective stop (``"*"``:
    every strategy); the validator places it ``stop_pct`` percent or ``stop_atr`` ATRs from
    the position's average entry price. ``atr_period`` > 0 keeps a Wilder ATR of each
    symbol's bars (needed by ``stop_atr`` and by ``trail_atr`` orders that carry no ``atr``).
    ``keep_done``: finished client order ids remembered to refuse duplicates.
    ``tighten_fraction``: on risk's ``tighten_stops`` alert (a soft breach) each working
    protective stop moves this fraction of its distance toward the last close."""

    require_stop: tuple[str, ...] = ()
    stop_pct: float | None = None
    stop_atr: float | None = None
    atr_period: int = 0
    keep_done: int = 4096
    tighten_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.tighten_fraction <= 1:
            raise ValueError("tighten_fraction must be within (0, 1]")
        if self.stop_pct is not None and not 0 < self.stop_pct < 100:
            raise ValueError("stop_pct must be within (0, 100)")
        if self.stop_atr is not None and not self.stop_atr > 0:
            raise ValueError("stop_atr must be > 0")
        if self.stop_pct is not None and self.stop_atr is not None:
            raise ValueError("give stop_pct or stop_atr, not both")
        if type(self.atr_period) is not int or not 0 <= self.atr_period <= MAX_ATR_PERIOD:
            raise ValueError(f"atr_period must be an integer within [0, {MAX_ATR_PERIOD}]")
        if self.stop_atr is not None and not self.atr_period:
            raise ValueError("stop_atr needs atr_period > 0")
        if self.require_stop and self.stop_pct is None and self.stop_atr is None:
            raise ValueError("require_stop needs stop_pct or stop_atr")
        if type(self.keep_done) is not int or self.keep_done < 0:
            raise ValueError("keep_done must be an integer >= 0")

    def requires_stop(self, strategy: str) -> bool:
        return "*" in self.require_stop or strategy in self.require_stop


class Trail(msgspec.Struct):
    """A trailing stop: ``best`` is the best price since ``since`` (highest high for a stop
    that sells, lowest low for one that buys; 0 = none yet); the distance is ``pct`` percent
    of it, or ``mult`` times ``atr`` (0: the order manager's ATR of the symbol)."""

    sell: bool
    pct: float = 0.0
    mult: float = 0.0
    atr: float = 0.0
    best: float = 0.0
    since: int = 0


class Order(msgspec.Struct):
    """One order of the order manager. ``qty`` is the current total (an amendment changes
    it); ``leg_base`` is what earlier venue legs filled; ``managed`` orders get reports built
    here, plain ones pass the venue's reports through unchanged."""

    cmd: OrderCommand
    qty: float
    status: str = "new"
    cum_qty: float = 0.0
    venue_order_id: str = ""
    stop_price: float | None = None
    limit_price: float | None = None
    kind: LegKind = "order"
    group: str = ""  # bracket entry: its own group; leg: the group it protects
    oco: str = ""  # explicit OCO group, scoped by strategy
    leg_base: float = 0.0
    leg_live: bool = False
    managed: bool = False
    trail: Trail | None = None  # a trailing stop order (bracket legs trail through the group)
    expire_at: int = 0


class Group(msgspec.Struct):
    """What protects one part of a position: a bracket (entry ``entry``) or a stop the
    validator placed (``protect``). ``open`` is the quantity it protects, ``cost`` its entry
    value; ``take_profit``/``stop_loss`` the legs' prices (0 = no such leg); ``tp_id``/
    ``sl_id`` the working legs; ``tp_off``/``sl_off``: the leg was canceled from outside and
    is not re-placed (the validator may re-place a stop)."""

    id: str
    strategy: str
    venue: str
    symbol: str
    long: bool
    model_tag: str = ""
    entry: str = ""
    protect: bool = False
    open: float = 0.0
    cost: float = 0.0
    take_profit: float = 0.0
    stop_loss: float = 0.0
    trail: Trail | None = None
    tp_id: str = ""
    sl_id: str = ""
    tp_n: int = 0
    sl_n: int = 0
    tp_off: bool = False
    sl_off: bool = False
    filled_leg: str = ""  # the leg that filled last (named when its sibling is canceled)

    @property
    def key(self) -> str:
        return f"{self.strategy}|{self.venue}|{self.symbol}"

    @property
    def avg(self) -> float:
        return self.cost / self.open if self.open > 0 else 0.0


class Position(msgspec.Struct):
    """A strategy's position on one market as its own fills made it: ``qty`` signed,
    ``cost`` = |qty| x average entry price."""

    strategy: str
    venue: str
    symbol: str
    qty: float = 0.0
    cost: float = 0.0

    @property
    def avg(self) -> float:
        return self.cost / abs(self.qty) if self.qty else 0.0


class Atr(msgspec.Struct, array_like=True):
    """Wilder's ATR of one symbol's bars of one interval: ``value`` is the running sum of
    true ranges until ``count`` reaches the period, then the average."""

    interval: str
    prev_close: float
    value: float
    count: int


class OmsState(msgspec.Struct):
    orders: dict[str, Order] = msgspec.field(default_factory=dict)  # not final
    done: dict[str, str] = msgspec.field(default_factory=dict)  # finished id -> status
    groups: dict[str, Group] = msgspec.field(default_factory=dict)
    positions: dict[str, Position] = msgspec.field(default_factory=dict)
    atr: dict[str, Atr] = msgspec.field(default_factory=dict)
    oco: dict[str, list[str]] = msgspec.field(default_factory=dict)
    trailing: list[str] = msgspec.field(default_factory=list)
    expiring: list[str] = msgspec.field(default_factory=list)
    closes: dict[str, float] = msgspec.field(default_factory=dict)  # venue|symbol -> last close


class OmsSnapshot(msgspec.Struct):
    venue_state: bytes
    oms: OmsState


def _key(strategy: str, venue: str, symbol: str) -> str:
    return f"{strategy}|{venue}|{symbol}"


def _num(value: float) -> str:
    return f"{value:.10g}"


class OrderManager:
    """The execution role's decider: the order manager in front of ``venue``."""

    def __init__(
        self, venue: Decider, config: OrdersConfig | None = None, worker: str = "execution"
    ) -> None:
        self.venue = venue
        self._venue_decide = venue.decide
        self.config = config or OrdersConfig()
        self.state = OmsState()
        self._worker = worker
        self._atr_n = self.config.atr_period
        self._validating = bool(self.config.require_stop)
        self._clock = 0  # time of the order manager's own actions in this call
        self._why = ""  # reason for the report of the venue leg being placed
        self._external = False  # a cancel that came from a command (not from the OMS)
        self._touched: dict[str, None] = {}  # position keys whose groups need a sync
        # Venue legs the order manager canceled while the venue's reports of the same call
        # were still being handled: what the venue said about them afterwards is moot.
        self._killed: set[str] = set()

    # --- decider --------------------------------------------------------------------------

    def decide(self, event: Event, now: int) -> list[Event]:
        kind = type(event)
        if kind is Bar:
            if self._atr_n:
                self._atr_update(event)  # type: ignore[arg-type]
            st = self.state
            if not st.orders and not (self._validating and st.positions):
                # Nothing working: the venue only records the bar (the hot path of a replay).
                return self._venue_decide(event, now)  # type: ignore[return-value]
            self._killed.clear()
            return self._on_bar(event, now)  # type: ignore[arg-type]
        self._killed.clear()
        if kind is OrderCommand:
            action = event.action  # type: ignore[attr-defined]
            self._clock = now
            if action == "new":
                return self._on_new(event, now)  # type: ignore[arg-type]
            if action == "cancel":
                return self._on_cancel(event, now)  # type: ignore[arg-type]
            return self._on_amend(event, now)  # type: ignore[arg-type]
        if kind is RiskAlert:
            return self._tighten(event, now) if event.action == "tighten_stops" else []  # type: ignore[attr-defined]
        return list(self.venue.decide(event, now))

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(OmsSnapshot(self.venue.snapshot(), self.state))

    def restore(self, data: bytes) -> None:
        try:
            snap = msgspec.msgpack.decode(data, type=OmsSnapshot)
        except (msgspec.ValidationError, msgspec.DecodeError):
            # A snapshot from before the order manager: the venue's state alone. Orders it
            # holds are unknown here and their reports pass through.
            self.venue.restore(data)
            self.state = OmsState()
            return
        self.venue.restore(snap.venue_state)
        self.state = snap.oms

    # --- bars -----------------------------------------------------------------------------

    def _on_bar(self, bar: Bar, now: int) -> list[Event]:
        st = self.state
        self._clock = bar.close_time
        st.closes[f"{bar.venue}|{bar.symbol}"] = bar.close
        out: list[Event] = []
        if st.expiring:
            self._expire(bar, out)
        reports = self.venue.decide(bar, now)
        if reports:
            self._from_venue(reports, out, bar)
        self._sync(out)
        if st.trailing:
            self._trail(bar, out)
        if self._validating:
            self._validate(bar, out)
        self._sync(out)
        return out

    def _expire(self, bar: Bar, out: list[Event]) -> None:
        st = self.state
        close = bar.close_time
        for oid in list(st.expiring):
            rec = st.orders.get(oid)
            if rec is None:
                st.expiring.remove(oid)
                continue
            cmd = rec.cmd
            if close > rec.expire_at and cmd.symbol == bar.symbol and cmd.venue == bar.venue:
                self._kill_leg(rec, rec.expire_at)
                reason = f"good till {rec.expire_at}: expired"
                self._finish(rec, "expired", rec.expire_at, out, reason)

    def _trail(self, bar: Bar, out: list[Event]) -> None:
        st = self.state
        for oid in list(st.trailing):
            rec = st.orders.get(oid)
            if rec is None or rec.status not in WORKING:
                st.trailing.remove(oid)
                continue
            cmd = rec.cmd
            if cmd.symbol != bar.symbol or cmd.venue != bar.venue or rec.cum_qty > 0:
                continue
            group = st.groups.get(rec.group) if rec.kind == "stop_loss" else None
            trail = group.trail if group is not None else rec.trail
            if trail is None or bar.open_time < trail.since or rec.stop_price is None:
                continue
            if trail.sell:
                trail.best = bar.high if not trail.best else max(trail.best, bar.high)
            else:
                trail.best = bar.low if not trail.best else min(trail.best, bar.low)
            stop = self._trail_stop(trail, cmd.venue, cmd.symbol)
            old = rec.stop_price
            if stop is None or not (stop > old if trail.sell else stop < old):
                continue
            rec.stop_price = stop
            if group is not None:
                group.stop_loss = stop
            why = f"amended: trailing stop {_num(old)} -> {_num(stop)} (best {_num(trail.best)})"
            self._replace(rec, out, why)

    def _tighten(self, alert: RiskAlert, now: int) -> list[Event]:
        """A soft breach: every working protective stop (of the alert's market, or all) moves
        ``tighten_fraction`` of the way to the last close; never loosened, never past it."""
        st = self.state
        self._clock = now
        out: list[Event] = []
        fraction = self.config.tighten_fraction
        for rec in list(st.orders.values()):
            cmd = rec.cmd
            if rec.kind != "stop_loss" or rec.status not in WORKING or rec.cum_qty > 0:
                continue
            if alert.symbol and (cmd.symbol != alert.symbol or cmd.venue != alert.venue):
                continue
            close = st.closes.get(f"{cmd.venue}|{cmd.symbol}")
            old = rec.stop_price
            if close is None or old is None:
                continue
            stop = old + fraction * (close - old)
            if not (stop > old if cmd.side == "sell" else stop < old):
                continue
            rec.stop_price = stop
            group = st.groups.get(rec.group)
            if group is not None:
                group.stop_loss = stop
            why = f"amended: stop tightened {_num(old)} -> {_num(stop)} ({alert.rule})"
            self._replace(rec, out, why)
        self._sync(out)
        return out

    def _trail_stop(self, trail: Trail, venue: str, symbol: str) -> float | None:
        """The stop the trail asks for now (None: no best price or no ATR yet)."""
        if not trail.best:
            return None
        if trail.pct:
            distance = trail.best * trail.pct / 100.0
        else:
            atr = trail.atr or self._atr(venue, symbol)
            if atr is None:
                return None
            distance = trail.mult * atr
        return trail.best - distance if trail.sell else trail.best + distance

    # --- the stop validator ---------------------------------------------------------------

    def _validate(self, bar: Bar, out: list[Event]) -> None:
        st = self.state
        config = self.config
        for key, pos in st.positions.items():
            if pos.symbol != bar.symbol or pos.venue != bar.venue or not pos.qty:
                continue
            if not config.requires_stop(pos.strategy):
                continue
            long = pos.qty > 0
            groups = [g for g in st.groups.values() if g.long == long and g.key == key]
            for group in groups:
                if group.open <= 0 or self._working(group.sl_id):
                    continue
                if not group.stop_loss:
                    stop = self._rule_stop(long, group.avg, pos.venue, pos.symbol)
                    if stop is None:
                        continue
                    group.stop_loss = stop
                group.sl_off = False
                self._touched[key] = None
            size = abs(pos.qty)
            uncovered = size - sum(g.open for g in groups)
            if uncovered <= DUST * size:
                continue
            protect = next((g for g in groups if g.protect), None)
            if protect is None:
                stop = self._rule_stop(long, pos.avg, pos.venue, pos.symbol)
                if stop is None:
                    continue
                gid = f"{pos.strategy}-{symbol_token(pos.symbol)}-protect-{bar.close_time}"
                protect = st.groups[gid] = Group(
                    gid, pos.strategy, pos.venue, pos.symbol, long, protect=True, stop_loss=stop
                )
            protect.open += uncovered
            protect.cost += uncovered * pos.avg
            self._touched[key] = None

    def _rule_stop(self, long: bool, price: float, venue: str, symbol: str) -> float | None:
        if price <= 0:
            return None
        config = self.config
        if config.stop_pct is not None:
            distance = price * config.stop_pct / 100.0
        else:
            atr = self._atr(venue, symbol)
            if atr is None or config.stop_atr is None:
                return None
            distance = config.stop_atr * atr
        stop = price - distance if long else price + distance
        return stop if stop > 0 else None

    # --- ATR ------------------------------------------------------------------------------

    def _atr_update(self, bar: Bar) -> None:
        key = f"{bar.venue}|{bar.symbol}"
        atr = self.state.atr.get(key)
        if atr is None:
            self.state.atr[key] = Atr(bar.interval, bar.close, bar.high - bar.low, 1)
            return
        if atr.interval != bar.interval:
            return  # one interval per symbol: the first one seen
        prev = atr.prev_close
        tr = max(bar.high - bar.low, abs(bar.high - prev), abs(bar.low - prev))
        n = self._atr_n
        if atr.count < n:
            atr.value += tr
            atr.count += 1
            if atr.count == n:
                atr.value /= n
        else:
            atr.value = (atr.value * (n - 1) + tr) / n
        atr.prev_close = bar.close

    def _atr(self, venue: str, symbol: str) -> float | None:
        """The order manager's ATR of a symbol; None until ``atr_period`` bars were seen."""
        atr = self.state.atr.get(f"{venue}|{symbol}")
        if atr is None or not self._atr_n or atr.count < self._atr_n:
            return None
        return atr.value

    # --- commands -------------------------------------------------------------------------

    def _on_new(self, cmd: OrderCommand, now: int) -> list[Event]:
        st = self.state
        oid = cmd.client_order_id
        known = st.orders.get(oid)
        status = known.status if known is not None else st.done.get(oid)
        if status is not None:
            return [self._refuse(cmd, f"duplicate client_order_id ({status}): not executed again")]
        why = self._invalid(cmd)
        if why:
            self._remember(oid, "rejected")
            return [_rejected(cmd, now, why)]
        rec = Order(cmd, cmd.qty, stop_price=cmd.stop_price, limit_price=cmd.limit_price)
        if cmd.oco_group:
            rec.oco = f"{cmd.strategy}|{cmd.oco_group}"
            st.oco.setdefault(rec.oco, []).append(oid)
        trail = self._new_trail(cmd)
        if cmd.take_profit or cmd.stop_loss or (trail is not None and cmd.order_type != "stop"):
            if trail is not None:
                trail.sell = cmd.side == "buy"  # the protective leg closes the entry
            rec.group = oid
            st.groups[oid] = Group(
                oid,
                cmd.strategy,
                cmd.venue,
                cmd.symbol,
                cmd.side == "buy",
                model_tag=cmd.model_tag,
                entry=oid,
                take_profit=cmd.take_profit or 0.0,  # type: ignore[arg-type]
                stop_loss=cmd.stop_loss or 0.0,  # type: ignore[arg-type]
                trail=trail,
            )
        elif trail is not None:
            trail.since = cmd.ts
            rec.trail = trail
            st.trailing.append(oid)
        if cmd.expire_at:
            rec.expire_at = cmd.expire_at  # type: ignore[assignment]
            st.expiring.append(oid)
        st.orders[oid] = rec
        out: list[Event] = []
        self._from_venue(self.venue.decide(cmd, now), out)
        self._sync(out)
        return out

    def _invalid(self, cmd: OrderCommand) -> str:
        """Why a new order is rejected before it reaches the venue ('' when it is fine)."""
        if cmd.expire_at and cmd.expire_at <= cmd.ts:  # type: ignore[operator]
            return "expire_at is not after the order time"
        tp, sl = cmd.take_profit, cmd.stop_loss
        buy = cmd.side == "buy"
        if tp and sl and (tp <= sl if buy else tp >= sl):  # type: ignore[operator]
            side = "above" if buy else "below"
            return f"take_profit {_num(tp)} must be {side} stop_loss {_num(sl)} for a {cmd.side}"  # type: ignore[arg-type]
        if cmd.trail_atr and not cmd.atr and self._atr(cmd.venue, cmd.symbol) is None:
            return "trail_atr needs atr on the order, or [orders] atr_period and that many bars"
        return ""

    def _new_trail(self, cmd: OrderCommand) -> Trail | None:
        if cmd.trail_pct:
            return Trail(sell=cmd.side == "sell", pct=cmd.trail_pct)  # type: ignore[arg-type]
        if cmd.trail_atr:
            return Trail(
                sell=cmd.side == "sell",
                mult=cmd.trail_atr,  # type: ignore[arg-type]
                atr=cmd.atr or 0.0,  # type: ignore[arg-type]
            )
        return None

    def _on_cancel(self, cmd: OrderCommand, now: int) -> list[Event]:
        rec = self.state.orders.get(cmd.client_order_id)
        if rec is None or rec.status not in WORKING:
            # Unknown or finished: the venue refuses it as it always did.
            return list(self.venue.decide(cmd, now))
        out: list[Event] = []
        self._external = True
        try:
            if rec.leg_live:
                self._from_venue(self.venue.decide(cmd, now), out)
            else:
                self._finish(rec, "canceled", now, out, "canceled")
        finally:
            self._external = False
        self._sync(out)
        return out

    def _on_amend(self, cmd: OrderCommand, now: int) -> list[Event]:
        st = self.state
        rec = st.orders.get(cmd.client_order_id)
        if rec is None or rec.status not in WORKING:
            return [self._refuse(cmd, "amend of an unknown or finished order")]
        old = rec.cmd
        if (cmd.strategy, cmd.venue, cmd.symbol, cmd.side) != (
            old.strategy,
            old.venue,
            old.symbol,
            old.side,
        ):
            return [self._refuse(cmd, "amend must keep strategy, venue, symbol and side")]
        if cmd.qty <= rec.cum_qty + DUST * rec.qty:
            return [
                self._refuse(cmd, f"amend qty {_num(cmd.qty)} is not above filled {rec.cum_qty}")
            ]
        if rec.kind != "order" and abs(cmd.qty - rec.qty) > DUST * rec.qty:
            return [self._refuse(cmd, "bracket legs are sized by the order manager: amend price")]
        changes: list[str] = []
        if abs(cmd.qty - rec.qty) > DUST * rec.qty:
            changes.append(f"qty {_num(rec.qty)} -> {_num(cmd.qty)}")
            rec.qty = cmd.qty
        limit, stop = cmd.limit_price, cmd.stop_price
        if limit is not None and rec.limit_price is not None and limit != rec.limit_price:
            changes.append(f"limit {_num(rec.limit_price)} -> {_num(limit)}")
            rec.limit_price = limit
        if stop is not None and rec.stop_price is not None and stop != rec.stop_price:
            changes.append(f"stop {_num(rec.stop_price)} -> {_num(stop)}")
            rec.stop_price = stop
        if not changes:
            return []
        group = st.groups.get(rec.group) if rec.kind != "order" else None
        if group is not None:
            if rec.kind == "stop_loss" and rec.stop_price is not None:
                group.stop_loss = rec.stop_price
            elif rec.kind == "take_profit" and rec.limit_price is not None:
                group.take_profit = rec.limit_price
        out: list[Event] = []
        self._replace(rec, out, "amended: " + ", ".join(changes))
        if rec.kind == "order":
            self._touched[_key(old.strategy, old.venue, old.symbol)] = None
        self._sync(out)
        return out

    # --- venue reports --------------------------------------------------------------------

    def _from_venue(self, reports: list[Event], out: list[Event], bar: Bar | None = None) -> None:
        st = self.state
        void: set[int] = set()
        if bar is not None and len(reports) > 1 and (st.groups or st.oco):
            void = self._resolve_oco(reports, bar)
        killed = self._killed
        for report in reports:
            if type(report) is not ExecutionReport:
                out.append(report)
            elif (not void or id(report) not in void) and (
                not killed or report.venue_order_id not in killed
            ):
                self._apply(report, out)

    def _apply(self, r: ExecutionReport, out: list[Event]) -> None:
        st = self.state
        rec = st.orders.get(r.client_order_id)
        if rec is None:
            if r.client_order_id in st.done:
                out.append(self._refuse(r, "report for a finished order"))
            else:
                out.append(r)  # not ours: an order restored from an older snapshot
            return
        if r.ts > self._clock:
            self._clock = r.ts
        status = r.status
        if status == "accepted":
            rec.venue_order_id = r.venue_order_id
            rec.leg_live = True
            if rec.status == "new":
                rec.status = "accepted"
                out.append(
                    self._report(rec, "accepted", r.ts, reason=self._why) if rec.managed else r
                )
                if rec.kind == "order" and st.groups:
                    self._touched[_key(rec.cmd.strategy, rec.cmd.venue, rec.cmd.symbol)] = None
            else:  # the new leg of an amendment
                out.append(self._report(rec, rec.status, r.ts, reason=self._why))
            return
        if status == "partially_filled" or status == "filled":
            if rec.status not in WORKING:
                out.append(self._refuse(r, f"illegal transition {rec.status} -> {status}"))
                return
            self._fill(rec, r, out)
            return
        if status == "canceled" or status == "rejected" or status == "expired":
            if not allowed(rec.status, status):
                out.append(self._refuse(r, f"illegal transition {rec.status} -> {status}"))
                return
            rec.leg_live = False
            report = r if not rec.managed else None
            self._finish(rec, status, r.ts, out, r.reason, report)
            return
        out.append(self._refuse(r, f"unknown status {status}"))

    def _fill(self, rec: Order, r: ExecutionReport, out: list[Event]) -> None:
        final = r.status == "filled"
        if final:
            rec.leg_live = False
        cmd = rec.cmd
        key = _key(cmd.strategy, cmd.venue, cmd.symbol)
        fill = r.fill_qty
        group = self.state.groups.get(rec.group) if rec.group else None
        if rec.kind != "order":
            # A bracket leg is reduce-only: never more than the position it protects.
            pos = self.state.positions.get(key)
            held = 0.0 if pos is None else (pos.qty if cmd.side == "sell" else -pos.qty)
            if fill > held + DUST * rec.qty:
                self._reduce_only(rec, r, max(held, 0.0), out)
                return
        cum = rec.qty if final else rec.leg_base + r.cum_qty
        rec.cum_qty = cum
        rec.status = "filled" if final else "partially_filled"
        if rec.managed:
            report = msgspec.structs.replace(r, order_qty=rec.qty, cum_qty=cum)
            report = self._decorate(rec, report)
        else:
            report = r
        out.append(report)
        self._position(key, cmd, fill, r.fill_price)
        if group is not None:
            if rec.kind == "order":
                group.open += fill
                group.cost += fill * r.fill_price
                if group.trail is not None and not group.trail.since:
                    group.trail.since = r.ts
                    group.trail.best = r.fill_price
            else:
                taken = min(fill, group.open)
                group.cost -= taken * group.avg
                group.open -= taken
                group.filled_leg = cmd.client_order_id
        if self.state.groups:
            self._touched[key] = None
        if final:
            self._close(rec)
        if rec.oco:
            self._oco_fill(rec, r.ts, out)

    def _reduce_only(self, rec: Order, r: ExecutionReport, held: float, out: list[Event]) -> None:
        """A leg's fill beyond the position: only ``held`` is applied, the leg is canceled."""
        cmd = rec.cmd
        if held > DUST * rec.qty:
            rec.cum_qty += held
            rec.status = "partially_filled"
            fee = r.fee * held / r.fill_qty if r.fill_qty else 0.0
            report = msgspec.structs.replace(
                r,
                status="partially_filled",
                order_qty=rec.qty,
                fill_qty=held,
                cum_qty=rec.cum_qty,
                fee=fee,
            )
            out.append(self._decorate(rec, report))
            self._position(_key(cmd.strategy, cmd.venue, cmd.symbol), cmd, held, r.fill_price)
            group = self.state.groups.get(rec.group)
            if group is not None:
                taken = min(held, group.open)
                group.cost -= taken * group.avg
                group.open -= taken
        if r.status == "filled":
            rec.leg_live = False
        self._touched[_key(cmd.strategy, cmd.venue, cmd.symbol)] = None
        self._kill_leg(rec, r.ts)
        self._finish(rec, "canceled", r.ts, out, "reduce-only: the position is closed")

    def _position(self, key: str, cmd: OrderCommand, fill: float, price: float) -> None:
        pos = self.state.positions.get(key)
        if pos is None:
            pos = self.state.positions[key] = Position(cmd.strategy, cmd.venue, cmd.symbol)
        before = pos.qty
        signed = fill if cmd.side == "buy" else -fill
        after = before + signed
        if not before or (before > 0) == (signed > 0):
            pos.cost += fill * price
        elif abs(after) <= DUST * abs(before) or (after > 0) == (before > 0):
            pos.cost *= abs(after) / abs(before)  # a reduction keeps the average
        else:
            pos.cost = abs(after) * price  # flipped: the rest opened at this price
        if abs(after) <= DUST * max(abs(before), fill):
            after = 0.0
            pos.cost = 0.0
        pos.qty = after

    def _resolve_oco(self, reports: list[Event], bar: Bar) -> set[int]:
        """Members of one OCO group that all filled on this bar: a bar does not tell which
        traded first. The one the bar opened through did; otherwise a stop (the worse case
        for the position); otherwise the first. The others' fills on this bar are void."""
        st = self.state
        fills: dict[str, list[tuple[Order, ExecutionReport]]] = {}
        for r in reports:
            if type(r) is not ExecutionReport or not r.fill_qty:
                continue
            rec = st.orders.get(r.client_order_id)
            if rec is None:
                continue
            oco = rec.oco or (rec.group if rec.kind != "order" else "")
            if oco:
                fills.setdefault(oco, []).append((rec, r))
        void: set[int] = set()
        for items in fills.values():
            members: list[Order] = []
            for rec, _ in items:
                if not any(rec is m for m in members):
                    members.append(rec)
            if len(members) < 2:
                continue
            gapped = [m for m in members if _gapped(m, bar)]
            if len(gapped) == 1:
                winner = gapped[0]
            else:
                pool = gapped or members
                stops = [m for m in pool if m.cmd.order_type in ("stop", "stop_limit")]
                winner = (stops or pool)[0]
            for rec, r in items:
                if rec is winner:
                    continue
                void.add(id(r))
                if r.status == "filled":
                    rec.leg_live = False
            for rec in members:
                if rec is not winner and rec.leg_live:
                    self._kill_leg(rec, bar.close_time)
        return void

    def _oco_fill(self, rec: Order, ts: int, out: list[Event]) -> None:
        st = self.state
        oid = rec.cmd.client_order_id
        for other_id in list(st.oco.get(rec.oco, ())):
            other = st.orders.get(other_id)
            if other_id == oid or other is None or other.status not in WORKING:
                continue
            self._kill_leg(other, ts)
            self._finish(other, "canceled", ts, out, f"OCO: {oid} filled")

    # --- groups ---------------------------------------------------------------------------

    def _sync(self, out: list[Event]) -> None:
        """Size every touched position's bracket legs to what they protect."""
        while self._touched:
            key = next(iter(self._touched))
            del self._touched[key]
            if self.state.groups:
                self._sync_key(key, out)

    def _sync_key(self, key: str, out: list[Event]) -> None:
        st = self.state
        groups = [g for g in st.groups.values() if g.key == key]
        if not groups:
            return
        pos = st.positions.get(key)
        qty = pos.qty if pos is not None else 0.0
        for group in groups:
            if group.open and (not qty or (qty > 0) != group.long):
                group.open = group.cost = 0.0
                group.filled_leg = ""
        # Fills from outside the groups that reduce the position reduce the newest first.
        excess = sum(g.open for g in groups) - abs(qty)
        for group in reversed(groups):
            if excess <= DUST * abs(qty):
                break
            if group.open:
                cut = min(group.open, excess)
                group.cost -= cut * group.avg
                group.open -= cut
                group.filled_leg = ""
                excess -= cut
        # Working market orders that close the position will fill first: cover the rest.
        closing = 0.0
        if qty:
            closing_side = "sell" if qty > 0 else "buy"
            for rec in st.orders.values():
                cmd = rec.cmd
                if (
                    rec.kind == "order"
                    and cmd.order_type == "market"
                    and cmd.side == closing_side
                    and _key(cmd.strategy, cmd.venue, cmd.symbol) == key
                ):
                    closing += rec.qty - rec.cum_qty
        cover = max(0.0, abs(qty) - closing)
        for group in groups:
            share = min(group.open, cover)
            cover -= share
            if share <= DUST * max(group.open, 1e-300):
                share = 0.0
            self._leg(group, "take_profit", share, out)
            self._leg(group, "stop_loss", share, out)
            entry = st.orders.get(group.entry) if group.entry else None
            if group.open <= DUST * max(abs(qty), 1e-300) and entry is None:
                del st.groups[group.id]

    def _leg(self, group: Group, kind: LegKind, qty: float, out: list[Event]) -> None:
        st = self.state
        tp = kind == "take_profit"
        price = group.take_profit if tp else group.stop_loss
        if not price and not tp and group.trail is not None and group.open and group.trail.since:
            price = self._first_trail_stop(group)
            group.stop_loss = price
        oid = group.tp_id if tp else group.sl_id
        rec = st.orders.get(oid) if oid else None
        if rec is not None and rec.status not in WORKING:
            rec = None
        if not qty or not price:
            if rec is not None:
                self._kill_leg(rec, self._clock)
                if group.open:
                    reason = "reduce-only: working market orders close the position"
                elif group.filled_leg:
                    reason = f"OCO: {group.filled_leg} filled"
                else:
                    reason = "reduce-only: the position is closed"
                self._finish(rec, "canceled", self._clock, out, reason)
            return
        if rec is None:
            if group.tp_off if tp else group.sl_off:
                return
            self._place_leg(group, kind, qty, price, out)
            return
        target = rec.cum_qty + qty
        current = rec.limit_price if tp else rec.stop_price
        if abs(target - rec.qty) <= DUST * target and current == price and rec.leg_live:
            return
        changes = []
        if abs(target - rec.qty) > DUST * target:
            changes.append(f"qty {_num(rec.qty)} -> {_num(target)}")
        if current != price and current is not None:
            changes.append(f"{'limit' if tp else 'stop'} {_num(current)} -> {_num(price)}")
        rec.qty = target
        if tp:
            rec.limit_price = price
        else:
            rec.stop_price = price
        self._replace(rec, out, "amended: " + (", ".join(changes) or "re-placed"))

    def _first_trail_stop(self, group: Group) -> float:
        trail = group.trail
        assert trail is not None
        stop = self._trail_stop(trail, group.venue, group.symbol)
        return stop if stop is not None and stop > 0 else 0.0

    def _place_leg(
        self, group: Group, kind: LegKind, qty: float, price: float, out: list[Event]
    ) -> None:
        st = self.state
        tp = kind == "take_profit"
        while True:  # the next id of this leg no order has used
            if tp:
                group.tp_n += 1
                n = group.tp_n
            else:
                group.sl_n += 1
                n = group.sl_n
            oid = f"{group.id}.{'tp' if tp else 'sl'}{n if n > 1 else ''}"
            if oid not in st.orders and oid not in st.done:
                break
        cmd = OrderCommand(
            ts=self._clock,
            action="new",
            client_order_id=oid,
            strategy=group.strategy,
            venue=group.venue,
            symbol=group.symbol,
            side="sell" if group.long else "buy",
            qty=qty,
            order_type="limit" if tp else "stop",
            limit_price=price if tp else None,
            stop_price=None if tp else price,
            model_tag=group.model_tag,
        )
        rec = Order(
            cmd,
            qty,
            stop_price=cmd.stop_price,
            limit_price=cmd.limit_price,
            kind=kind,
            group=group.id,
            managed=True,
        )
        st.orders[oid] = rec
        if tp:
            group.tp_id = oid
        else:
            group.sl_id = oid
            if group.trail is not None:
                st.trailing.append(oid)
        what = "stop validator: protective stop" if group.protect else f"bracket {kind}"
        self._send(rec, cmd, out, what)

    # --- venue legs -----------------------------------------------------------------------

    def _send(self, rec: Order, leg: OrderCommand, out: list[Event], why: str) -> None:
        self._why = why
        try:
            self._from_venue(self.venue.decide(leg, self._clock), out)  # type: ignore[arg-type]
        finally:
            self._why = ""

    def _replace(self, rec: Order, out: list[Event], why: str) -> None:
        """Amend through the venue: cancel the working leg, place one for the rest."""
        self._kill_leg(rec, self._clock)
        rec.leg_base = rec.cum_qty
        rec.managed = True
        leg = msgspec.structs.replace(
            rec.cmd,
            ts=self._clock,
            qty=rec.qty - rec.cum_qty,
            limit_price=rec.limit_price,
            stop_price=rec.stop_price,
        )
        self._send(rec, leg, out, why)

    def _kill_leg(self, rec: Order, ts: int) -> None:
        """Cancel the venue leg; its report is the order manager's to give, not the venue's."""
        if not rec.leg_live:
            return
        cmd = rec.cmd
        cancel = OrderCommand(
            ts=ts,
            action="cancel",
            client_order_id=cmd.client_order_id,
            strategy=cmd.strategy,
            venue=cmd.venue,
            symbol=cmd.symbol,
            side=cmd.side,
            qty=cmd.qty,
        )
        self.venue.decide(cancel, ts)
        rec.leg_live = False
        self._killed.add(rec.venue_order_id)

    # --- lifecycle ------------------------------------------------------------------------

    def _finish(
        self,
        rec: Order,
        status: str,
        ts: int,
        out: list[Event],
        reason: str,
        report: ExecutionReport | None = None,
    ) -> None:
        if not allowed(rec.status, status):
            out.append(self._refuse(rec.cmd, f"illegal transition {rec.status} -> {status}"))
            return
        rec.status = status
        out.append(report if report is not None else self._report(rec, status, ts, reason=reason))
        cmd = rec.cmd
        if rec.kind != "order":
            group = self.state.groups.get(rec.group)
            if group is not None:
                external = self._external or status != "canceled"
                if rec.kind == "take_profit" and group.tp_id == cmd.client_order_id:
                    group.tp_id = ""
                    group.tp_off = group.tp_off or external
                elif rec.kind == "stop_loss" and group.sl_id == cmd.client_order_id:
                    group.sl_id = ""
                    group.sl_off = group.sl_off or external
        if self.state.groups:
            self._touched[_key(cmd.strategy, cmd.venue, cmd.symbol)] = None
        self._close(rec)

    def _close(self, rec: Order) -> None:
        """A final order leaves the working set; its id is remembered (idempotency)."""
        st = self.state
        oid = rec.cmd.client_order_id
        st.orders.pop(oid, None)
        self._remember(oid, rec.status)
        if rec.oco:
            members = st.oco.get(rec.oco)
            if members is not None:
                if oid in members:
                    members.remove(oid)
                if not members:
                    del st.oco[rec.oco]
        if rec.kind == "stop_loss" and rec.group:
            group = st.groups.get(rec.group)
            if group is not None and group.sl_id == oid:
                group.sl_id = ""
        elif rec.kind == "take_profit" and rec.group:
            group = st.groups.get(rec.group)
            if group is not None and group.tp_id == oid:
                group.tp_id = ""

    def _remember(self, oid: str, status: str) -> None:
        done = self.state.done
        done[oid] = status
        keep = self.config.keep_done
        while len(done) > keep:
            del done[next(iter(done))]

    def _working(self, oid: str) -> bool:
        rec = self.state.orders.get(oid) if oid else None
        return rec is not None and rec.status in WORKING

    # --- reports --------------------------------------------------------------------------

    def _report(self, rec: Order, status: str, ts: int, reason: str = "") -> ExecutionReport:
        cmd = rec.cmd
        report = ExecutionReport(
            ts=ts,
            status=status,  # type: ignore[arg-type]
            client_order_id=cmd.client_order_id,
            strategy=cmd.strategy,
            venue=cmd.venue,
            symbol=cmd.symbol,
            side=cmd.side,
            order_qty=rec.qty,
            venue_order_id=rec.venue_order_id,
            cum_qty=rec.cum_qty,
            model_tag=cmd.model_tag,
            reason=reason,
        )
        return self._decorate(rec, report)

    def _decorate(self, rec: Order, report: ExecutionReport) -> ExecutionReport:
        """A report the order manager builds names the prices working and the bracket."""
        return msgspec.structs.replace(
            report,
            parent_id=rec.group if rec.kind != "order" and rec.group else UNSET,
            stop_price=UNSET if rec.stop_price is None else rec.stop_price,
            limit_price=UNSET if rec.limit_price is None else rec.limit_price,
        )

    def _refuse(self, event: Event, reason: str) -> DeadLetter:
        """An illegal command or venue report: refused, kept as a dead letter."""
        return DeadLetter(
            ts=event.ts,
            worker=self._worker,
            subject=subject_for(event),
            reason=f"order manager: {reason}",
            payload=encode(event),
        )


def _gapped(rec: Order, bar: Bar) -> bool:
    """Whether the bar opened through the order's price (it traded at the open)."""
    buy = rec.cmd.side == "buy"
    kind = rec.cmd.order_type
    if kind == "limit" and rec.limit_price is not None:
        return bar.open <= rec.limit_price if buy else bar.open >= rec.limit_price
    if kind in ("stop", "stop_limit") and rec.stop_price is not None:
        return bar.open >= rec.stop_price if buy else bar.open <= rec.stop_price
    return kind == "market"


def _rejected(cmd: OrderCommand, now: int, reason: str) -> ExecutionReport:
    return ExecutionReport(
        ts=now,
        status="rejected",
        client_order_id=cmd.client_order_id,
        strategy=cmd.strategy,
        venue=cmd.venue,
        symbol=cmd.symbol,
        side=cmd.side,
        order_qty=cmd.qty,
        model_tag=cmd.model_tag,
        reason=reason,
    )
