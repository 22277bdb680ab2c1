"""The book risk keeps: every strategy's position per market, the orders risk has working,
their net per market, and the gross exposures the rails compare against caps.

A signal asks for the difference between its target and what its book holds plus what is
working for it; the net per market (all books, working orders included) is what the caps
see, so an order in flight counts before it fills.
"""

from __future__ import annotations

from collections.abc import Callable

from contracts.events import Event, ExecutionReport, OrderCommand
from contracts.keys import BookId, InstrumentId
from contracts.subjects import symbol_token
from services.risk.state import RiskState, Working

EPS = 1e-12
FINAL = frozenset(("filled", "canceled", "rejected", "expired"))


class Book:
    """Positions, working orders and net exposure in ``RiskState``; ``gross`` and
    ``open_markets`` are computed once per decision (the book does not move while one
    signal is decided: call ``new_decision`` first)."""

    def __init__(self, state: RiskState) -> None:
        self.positions = state.positions
        self.working = state.working
        self.net = state.net
        self.prices = state.prices
        self.orders = state.orders
        self.cancels = state.cancels
        self._by_book: dict[BookId, list[str]] = {}
        for order_id, w in self.working.items():
            self._by_book.setdefault(w.book, []).append(order_id)
        self._gross: tuple[str, tuple[float, float]] | None = None
        self._open: tuple[InstrumentId, list[InstrumentId]] | None = None

    def new_decision(self) -> None:
        self._gross = self._open = None

    def held(self, book: BookId) -> float:
        """The book's position plus its working orders."""
        ids = self._by_book.get(book)
        position = self.positions.get(book, 0.0)
        if not ids:
            return position + 0  # a -0.0 position holds 0.0
        working = self.working
        return position + sum(working[i].remaining for i in ids)

    # --- orders ---------------------------------------------------------------------------

    def place(
        self,
        book: BookId,
        delta: float,
        now: int,
        model_tag: str = "",
        entry: bool = False,
        signal_ts: int | None = None,
    ) -> OrderCommand:
        """A market order for ``delta``, working from now on. Its id is
        ``<strategy>-<symbol token>-<signal ts, else now>-<n-th order of the book>``; the id
        names no venue, so n skips past one the strategy's order in the symbol on another venue
        is working under (a flatten places both at the same time)."""
        strategy, market = book.strategy, book.instrument
        symbol = market.symbol
        stem = f"{strategy}-{symbol_token(symbol)}-{now if signal_ts is None else signal_ts}-"
        count = self.orders.get(book, 0) + 1
        while f"{stem}{count}" in self.working:
            count += 1
        self.orders[book] = count
        order_id = f"{stem}{count}"
        self.working[order_id] = Working(book, delta, entry)
        self._by_book.setdefault(book, []).append(order_id)
        self.net[market] = self.net.get(market, 0.0) + delta
        return OrderCommand(
            ts=now,
            action="new",
            client_order_id=order_id,
            strategy=strategy,
            venue=market.venue,
            symbol=symbol,
            side="buy" if delta > 0 else "sell",
            qty=abs(delta),
            model_tag=model_tag,
        )

    def cancel(self, order_id: str, w: Working, now: int) -> OrderCommand:
        self.cancels[order_id] = True
        book = w.book
        return OrderCommand(
            ts=now,
            action="cancel",
            client_order_id=order_id,
            strategy=book.strategy,
            venue=book.venue,
            symbol=book.symbol,
            side="buy" if w.remaining > 0 else "sell",
            qty=abs(w.remaining),
        )

    def cancel_entries(self, now: int) -> list[Event]:
        """Cancel every working order that grew exposure when placed."""
        cancels = self.cancels
        return [
            self.cancel(order_id, w, now)
            for order_id, w in self.working.items()
            if w.entry and order_id not in cancels and abs(w.remaining) > EPS
        ]

    def flatten(self, now: int, markets: Callable[[InstrumentId], bool]) -> list[Event]:
        """Cancel every working order and close every position in the markets selected
        (per book, so the closing fills are attributed to their owners)."""
        out: list[Event] = [
            self.cancel(order_id, w, now)
            for order_id, w in self.working.items()
            if markets(w.book.instrument)
            and order_id not in self.cancels
            and abs(w.remaining) > EPS
        ]
        for book, qty in list(self.positions.items()):
            if abs(qty) > EPS and markets(book.instrument):
                out.append(self.place(book, -qty, now))
        return out

    def apply(self, report: ExecutionReport, book: BookId) -> bool:
        """Book a report's fill and settle its order once final. Returns whether it is the
        venue refusing a cancel risk sent: the order still stands, and the refusal is no
        venue error."""
        order_id = report.client_order_id
        signed = report.fill_qty if report.side == "buy" else -report.fill_qty
        working = self.working.get(order_id)
        if report.fill_qty:
            self.positions[book] = self.positions.get(book, 0.0) + signed
            if working is None:
                market = book.instrument
                self.net[market] = self.net.get(market, 0.0) + signed
        status = report.status
        refused = status == "rejected" and order_id in self.cancels
        if working is None:
            self.cancels.pop(order_id, None)
            return refused
        working.remaining -= signed
        if refused:
            del self.cancels[order_id]
        elif status in FINAL:
            del self.working[order_id]
            self.cancels.pop(order_id, None)
            ids = self._by_book.get(working.book)
            if ids is not None:
                ids.remove(order_id)
                if not ids:
                    del self._by_book[working.book]
            if working.remaining:
                market = working.book.instrument
                self.net[market] = self.net.get(market, 0.0) - working.remaining
        return refused

    # --- exposure -------------------------------------------------------------------------

    def gross(self, venue: str) -> tuple[float, float]:
        """Gross exposure (sum of |net| x price) on ``venue`` and in total."""
        memo = self._gross
        if memo is not None and memo[0] == venue:
            return memo[1]
        prices = self.prices
        on_venue = total = 0.0
        for market, qty in self.net.items():
            if -EPS <= qty <= EPS:
                continue
            price = prices.get(market)
            if price is None:
                continue
            value = abs(qty) * price
            total += value
            if market.venue == venue:
                on_venue += value
        self._gross = (venue, (on_venue, total))
        return on_venue, total

    def exposure(self, strategy: str, exclude: BookId) -> float:
        """``strategy``'s gross exposure (sum of |position + working| x price) in every
        market but ``exclude``'s; a market without a price yet counts nothing."""
        books = {b for b in self.positions if b.strategy == strategy}
        books.update(b for b in self._by_book if b.strategy == strategy)
        books.discard(exclude)
        total = 0.0
        for book in books:
            price = self.prices.get(book.instrument)
            if price is not None:
                total += abs(self.held(book)) * price
        return total

    def open_markets(self, exclude: InstrumentId) -> list[InstrumentId]:
        """Markets with a net position or working orders, ``exclude`` aside."""
        memo = self._open
        if memo is not None and memo[0] == exclude:
            return memo[1]
        held = [m for m, q in self.net.items() if (q > EPS or q < -EPS) and m != exclude]
        self._open = (exclude, held)
        return held
