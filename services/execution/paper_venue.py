"""The simulated (paper) venue: fills orders against bars by exact, documented rules.

Which bar fills an order depends only on event times, never on when the order happened to
arrive, so a live paper session and its replay give the same fills:
- market, ``fill="next_open"``: the open of the first bar that opens at or after the order
  time; ``fill="close"``: the close of the bar that closed at the order time (the bar the
  signal was decided on), else as ``next_open``;
- limit: on the first bar from the order time on whose range reaches the limit, at the
  limit price (buy when low <= limit, sell when high >= limit);
- stop: on the first bar whose range reaches the stop, at the stop price, or at the open
  when the bar gaps through it.
Slippage moves market and stop fills against the taker by ``slippage_bps``; the fee is
``fee_bps`` of the fill notional. IOC and FOK orders that cannot fill on their first
eligible bar are canceled; GTC orders wait. An order older than every bar the venue still
keeps (the last ``HISTORY`` per symbol) is rejected as stale rather than filled at a price
from the wrong bar.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from contracts.events import Bar, Event, ExecStatus, ExecutionReport, OrderCommand

HISTORY = 1024


class PaperVenueConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    fill: Literal["next_open", "close"] = "next_open"
    fee_bps: float = 10.0
    slippage_bps: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.fee_bps <= 1000:
            raise ValueError("fee_bps must be within [0, 1000]")
        if not 0 <= self.slippage_bps <= 1000:
            raise ValueError("slippage_bps must be within [0, 1000]")


class _BarPrices(msgspec.Struct, array_like=True):
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float


class _Pending(msgspec.Struct):
    order: OrderCommand
    venue_order_id: str


class PaperVenueState(msgspec.Struct):
    bars: dict[str, list[_BarPrices]] = msgspec.field(default_factory=dict)
    pending: list[_Pending] = msgspec.field(default_factory=list)
    next_id: int = 1


class PaperVenue:
    def __init__(self, config: PaperVenueConfig) -> None:
        self.config = config
        self.state = PaperVenueState()

    def decide(self, event: Event, now: int) -> list[Event]:
        match event:
            case OrderCommand(action="new"):
                return self._on_new(event, now)
            case OrderCommand(action="cancel"):
                return self._on_cancel(event, now)
            case Bar():
                return self._on_bar(event)
        return []

    def _on_new(self, order: OrderCommand, now: int) -> list[Event]:
        if any(p.order.client_order_id == order.client_order_id for p in self.state.pending):
            return [_report(order, "rejected", now, "", reason="duplicate client_order_id")]
        pending = _Pending(order, f"paper-{self.state.next_id}")
        self.state.next_id += 1
        reports: list[Event] = [_report(order, "accepted", now, pending.venue_order_id)]
        history = self.state.bars.get(_key(order.venue, order.symbol), [])
        if len(history) == HISTORY and history[0].open_time > order.ts:
            reason = f"stale order: older than the last {HISTORY} bars the venue keeps"
            return [
                *reports,
                _report(order, "rejected", now, pending.venue_order_id, reason=reason),
            ]
        for bar in history:
            if self._eligible(order, bar):
                outcome = self._match(pending, bar)
                if outcome is not None:
                    return [*reports, outcome]
        self.state.pending.append(pending)
        return reports

    def _on_cancel(self, order: OrderCommand, now: int) -> list[Event]:
        for pending in self.state.pending:
            if pending.order.client_order_id == order.client_order_id:
                self.state.pending.remove(pending)
                return [_report(pending.order, "canceled", now, pending.venue_order_id)]
        return [_report(order, "rejected", now, "", reason="cancel of an unknown order")]

    def _on_bar(self, bar: Bar) -> list[Event]:
        key = _key(bar.venue, bar.symbol)
        prices = _BarPrices(bar.open_time, bar.close_time, bar.open, bar.high, bar.low, bar.close)
        history = self.state.bars.setdefault(key, [])
        history.append(prices)
        del history[:-HISTORY]
        reports: list[Event] = []
        for pending in list(self.state.pending):
            order = pending.order
            if _key(order.venue, order.symbol) != key or not self._eligible(order, prices):
                continue
            outcome = self._match(pending, prices)
            if outcome is not None:
                self.state.pending.remove(pending)
                reports.append(outcome)
        return reports

    def _fills_at_close(self, order: OrderCommand, bar: _BarPrices) -> bool:
        return (
            self.config.fill == "close"
            and order.order_type == "market"
            and bar.close_time == order.ts
        )

    def _eligible(self, order: OrderCommand, bar: _BarPrices) -> bool:
        """Bars that may fill the order: from its time on, or the bar it was decided on."""
        return bar.open_time >= order.ts or self._fills_at_close(order, bar)

    def _match(self, pending: _Pending, bar: _BarPrices) -> ExecutionReport | None:
        """The fill (or IOC/FOK cancel) this bar gives the order, or None to keep waiting.

        The report's time is the bar's close, whichever input (order or bar) came last.
        """
        order = pending.order
        now = bar.close_time
        buy = order.side == "buy"
        price: float | None = None
        if order.order_type == "market":
            price = bar.close if self._fills_at_close(order, bar) else bar.open
        elif order.order_type == "limit":
            limit = order.limit_price or 0.0
            if (buy and bar.low <= limit) or (not buy and bar.high >= limit):
                return self._fill(pending, limit, now, slip=False)
        else:
            stop = order.stop_price or 0.0
            if buy and bar.high >= stop:
                price = max(bar.open, stop)
            elif not buy and bar.low <= stop:
                price = min(bar.open, stop)
        if price is not None:
            return self._fill(pending, price, now)
        if order.time_in_force in ("IOC", "FOK"):
            return _report(order, "canceled", now, pending.venue_order_id, reason="not fillable")
        return None

    def _fill(
        self, pending: _Pending, price: float, now: int, slip: bool = True
    ) -> ExecutionReport:
        order = pending.order
        if slip:
            sign = 1.0 if order.side == "buy" else -1.0
            price *= 1.0 + sign * self.config.slippage_bps / 10_000.0
        fee = price * order.qty * self.config.fee_bps / 10_000.0
        return _report(
            order,
            "filled",
            now,
            pending.venue_order_id,
            fill_price=price,
            fill_qty=order.qty,
            fee=fee,
        )

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=PaperVenueState)


def _key(venue: str, symbol: str) -> str:
    return f"{venue}|{symbol}"


def _report(
    order: OrderCommand,
    status: ExecStatus,
    now: int,
    venue_order_id: str,
    fill_price: float = 0.0,
    fill_qty: float = 0.0,
    fee: float = 0.0,
    reason: str = "",
) -> ExecutionReport:
    return ExecutionReport(
        ts=now,
        status=status,
        client_order_id=order.client_order_id,
        strategy=order.strategy,
        venue=order.venue,
        symbol=order.symbol,
        side=order.side,
        order_qty=order.qty,
        venue_order_id=venue_order_id,
        fill_price=fill_price,
        fill_qty=fill_qty,
        cum_qty=fill_qty,
        fee=fee,
        model_tag=order.model_tag,
        reason=reason,
    )
