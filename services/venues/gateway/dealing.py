"""Submits, cancels, amendments and queries of one venue's legs, each answer recorded first.

Every exchange answer becomes a ``VenueAnswer`` stored in the log (``record``) before the
gateway does anything with it. An exception is classified (``ccxt_orders.classify``): a
refusal is ``rejected`` with the exchange's own words; anything whose outcome nobody knows
(a timeout, a dropped connection, a 5xx) is ``unknown`` and a query by client id settles it
later; the fate rule (``services/venues/order_fate.py``) decides when queries keep missing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import ccxt
import msgspec

from contracts.envelope import Envelope
from contracts.venue_events import AnswerSource, VenueAnswer, VenueOrder
from services.runtime.clock import Clock
from services.venues.ccxt_exchange import Redactor
from services.venues.gateway.answers import (
    base_answer,
    client_id_of,
    order_answer,
    order_ids,
    trade_answer,
)
from services.venues.gateway.ccxt_orders import (
    OrderCalls,
    classify,
    exchange_reason,
    replace_failure,
)
from services.venues.gateway.config import GatewayConfig
from services.venues.gateway.legs import Leg, LegBook
from services.venues.journal import VenueJournal
from services.venues.order_fate import FateRule

log = logging.getLogger("keel.gateway")
Record = Callable[[VenueAnswer, Envelope], Awaitable[bool]]
TRADES_MARGIN_MS = 60_000


def has_fee(trade: Mapping[str, Any]) -> bool:
    """Whether ccxt parsed the trade's fee (Kraken Futures' order answers carry none)."""
    fee = trade.get("fee")
    return isinstance(fee, Mapping) and fee.get("cost") is not None


class Dealer:
    def __init__(
        self,
        calls: OrderCalls,
        book: LegBook,
        record: Record,
        clock: Clock,
        redactor: Redactor,
        config: GatewayConfig,
        journal: VenueJournal,
    ) -> None:
        self.calls = calls
        self.journal = journal
        self.rule = FateRule(config.unknown_queries, config.unknown_within_s, config.unknown_then)
        self.book = book
        self.record = record
        self.clock = clock
        self.redactor = redactor
        self.config = config
        self.lock = asyncio.Lock()
        self.orphans: dict[str, tuple[Mapping[str, Any], AnswerSource]] = {}
        """Trades seen before their order's id was known, by trade id."""

    # -- answers ---------------------------------------------------------------------------

    async def order_state(self, leg: Leg, order: Mapping[str, Any], source: AnswerSource) -> None:
        """Record what the exchange says of ``leg``'s order: a first acceptance, an end,
        and any fills it carries; then the trades that were waiting for its id."""
        self.book.link(leg, order_ids(order))
        answer = order_answer(order, leg.order, source, self.clock.now_ns())
        known = self.journal.leg(leg.order.venue_client_id)
        news = (
            answer.kind != "accepted"
            or leg.state in ("sent", "unknown")
            or (answer.venue_order_id and not leg.venue_order_id)
            # a query that found a leg in doubt settles the doubt (a filled order whose
            # trades IB no longer lists, from before its day boundary, was else asked forever)
            or (source == "query" and known is not None and known.in_doubt())
        )
        if news and leg.state != "done":
            await self.record(answer, leg.envelope)
        for trade in order.get("trades") or ():
            if has_fee(trade):  # else the stream or a poll gives the trade whole
                await self.trade(trade, source)
        await self._adopt_orphans(leg)

    async def _adopt_orphans(self, leg: Leg) -> None:
        """The trades that waited for this leg's exchange order id (a stream snapshot's,
        which name no client id), recorded before any REST copy, which may lack the fee."""
        if not leg.venue_order_id:
            return
        waiting = [
            (t, s)
            for t, s in self.orphans.values()
            if self.book.of_venue_order(str(t.get("order"))) is leg
        ]
        for trade, was in waiting:
            self.orphans.pop(str(trade.get("id")), None)
            await self.trade(trade, was)

    def leg_of(self, item: Mapping[str, Any]) -> Leg | None:
        """The leg a ccxt order or trade is about: by client id, else by the exchange's
        order id (a trade's ``order``; an order's own ``id``, told by its ``status``)."""
        cid = client_id_of(item)
        leg = self.book.legs.get(cid) if cid else None
        if leg is None and item.get("order") is not None:
            leg = self.book.of_venue_order(str(item["order"]))
        if leg is None and "status" in item and item.get("id") is not None:
            leg = self.book.of_venue_order(str(item["id"]))
        return leg

    async def trade(self, trade: Mapping[str, Any], source: AnswerSource) -> None:
        """One venue trade: a fill of its leg (once: the leg's trade ids and the event id
        dedupe); a trade of an order not yet known waits for it (reconciliation reports
        one that never becomes known)."""
        leg = self.leg_of(trade)
        trade_id = str(trade.get("id") or "")
        if leg is None:
            if trade_id:
                self.orphans[trade_id] = (trade, source)
            return
        if trade_id in leg.trades:
            return
        answer = trade_answer(trade, leg.order, source, self.clock.now_ns())
        if answer is not None:
            await self.record(answer, leg.envelope)

    async def failed(
        self, leg: Leg, exc: BaseException, source: AnswerSource, cause: Envelope
    ) -> None:
        reason = exchange_reason(exc, self.redactor, self.calls.id)
        if isinstance(exc, ccxt.DuplicateOrderId) or classify(exc) != "rejected":
            log.warning(
                "%s %s: outcome unknown (%s): a query settles it",
                source,
                leg.order.venue_client_id,
                reason,
            )
            leg.state = "unknown" if source == "submit" else leg.state
            kind = "unknown"
        else:
            kind = "rejected"
        now = self.clock.now_ns()
        answer = base_answer(
            leg.order, kind, source, now, reason=reason, venue_order_id=leg.venue_order_id
        )
        await self.record(answer, cause)

    def unknown(self, leg: Leg, source: AnswerSource, reason: str) -> VenueAnswer:
        """A fact of Keel's own: the outcome is not known (or a query did not find it)."""
        return base_answer(
            leg.order,
            "unknown",
            source,
            self.clock.now_ns(),
            reason=reason,
            venue_order_id=leg.venue_order_id,
        )

    # -- actions ---------------------------------------------------------------------------

    async def submit(self, leg: Leg, cause: Envelope | None = None) -> None:
        async with self.lock:
            try:
                placed = await self.calls.submit(leg.order)
            except Exception as exc:
                await self.failed(leg, exc, "submit", cause or leg.envelope)
                return
            await self.order_state(leg, placed, "submit")

    async def reject(
        self, order: VenueOrder, reason: str, source: AnswerSource, cause: Envelope
    ) -> None:
        """Keel's own refusal (a halted venue, a cancel of no open leg), said like the
        exchange's."""
        answer = base_answer(order, "rejected", source, self.clock.now_ns(), reason=reason)
        await self.record(answer, cause)

    async def cancel(self, leg: Leg, cause: Envelope) -> None:
        """Cancel by client id; an exchange that says it has no such order gets the cancel
        rejected with its words, then a query tells what became of the order."""
        async with self.lock:
            await self._cancel(leg, cause)

    async def _cancel(self, leg: Leg, cause: Envelope) -> None:
        try:
            got = await self.calls.cancel(leg.order, leg.venue_order_id)
        except ccxt.OrderNotFound as exc:
            await self.failed(leg, exc, "cancel", cause)
            await self._query(leg)
            return
        except Exception as exc:
            await self.failed(leg, exc, "cancel", cause)
            return
        if str(got.get("status") or "") in ("canceled", "cancelled", "expired"):
            answer = order_answer(got, leg.order, "cancel", self.clock.now_ns())
            await self.record(answer, cause)
        else:  # ccxt got no state back (Kraken: a count): the query says it
            await self._query(leg)

    async def amend(self, new: Leg, old: Leg | None, cause: Envelope) -> None:
        """Replace ``old`` by ``new`` with the position never left unprotected where the
        venue allows it. A protective or reduce-only leg that holds nothing while it waits
        (a contract market's, a Bybit conditional order) is placed before the old one is
        canceled; on spot otherwise (each order locks what it sells) Binance replaces it in
        one request, other venues cancel it and place the new one as soon as the cancel is
        confirmed. An entry is canceled first (never two live entries). An amendment of a
        leg in place (``replaces`` = its own client id: Kraken spot's stops) edits the one
        order on the exchange, so no moment passes without it."""
        async with self.lock:
            if new.order.replaces == new.order.venue_client_id:
                if not self.book.handled(cause.event_id):
                    await self._edit(new, cause)
                return
            if old is None or not old.open:
                await self._place(new)
                return
            protective = new.order.protective or new.order.reduce_only
            if protective and not self.calls.locks_balance(new.order):
                await self._place(new)
                if new.state == "working":
                    await self._cancel(old, cause)
                return
            if protective and self.calls.replaces_at_once(new.order):
                await self._replace(new, old, cause)
                return
            await self._cancel(old, cause)
            if old.state != "done":
                await self._refuse(new, "the replaced leg is not canceled yet: " + old.state)
            elif old.filled >= old.order.qty * (1 - 1e-9):
                await self._refuse(new, "the replaced leg filled")
            else:
                await self._place(new)

    async def _edit(self, leg: Leg, cause: Envelope) -> None:
        """One in-place amendment (Kraken ``AmendOrder``), answered as ``amend`` on the same
        leg: ``accepted`` with the new values (the exchange's answer carries no state), its
        refusal ``rejected`` (the order keeps its values), a lost answer ``unknown`` (a
        query tells which values the order has: ``_settle_amend``)."""
        if not leg.open:
            now = self.clock.now_ns()
            reason = "the order is no longer open: " + leg.state
            await self.record(
                base_answer(leg.order, "rejected", "amend", now, reason=reason), cause
            )
            return
        try:
            await self.calls.edit(leg.order)
        except Exception as exc:
            await self.failed(leg, exc, "amend", cause)
            return
        await self._amended(leg, cause)

    async def _amended(self, leg: Leg, cause: Envelope) -> None:
        answer = base_answer(
            leg.order,
            "accepted",
            "amend",
            self.clock.now_ns(),
            venue_order_id=leg.venue_order_id,
            cum_qty=leg.cum_qty,
        )
        await self.record(answer, cause)

    async def _settle_amend(self, leg: Leg, pending: Envelope) -> None:
        """An in-place amendment with no answer (a timeout, or the gateway stopped before
        the exchange answered): once its request is surely over, a query by client id says
        whether the order already carries the new values (then it is ``accepted``); else it
        is sent again (the same values: doing it twice changes nothing)."""
        now = self.clock.now_ns()
        if now - pending.event_time < self.rule.offset_ns(1):
            return
        try:
            found = await self.calls.find(leg.order)
        except Exception as exc:
            log.warning(
                "query %s failed: %s",
                leg.order.venue_client_id,
                exchange_reason(exc, self.redactor, self.calls.id),
            )
            return
        if found is None:
            await self.record(self.unknown(leg, "query", "not found by client id"), leg.envelope)
            return
        seen = order_answer(found, leg.order, "query", now)
        if seen.kind != "accepted":
            await self.order_state(leg, found, "query")
            return
        await self.record(seen, leg.envelope)  # found: the journal's doubt is over
        if self.calls.carries(found, leg.order):
            await self._amended(leg, pending)
        else:
            await self._edit(leg, pending)

    async def _refuse(self, leg: Leg, reason: str) -> None:
        answer = base_answer(leg.order, "rejected", "amend", self.clock.now_ns(), reason=reason)
        await self.record(answer, leg.envelope)

    async def _replace(self, new: Leg, old: Leg, cause: Envelope) -> None:
        """One cancel-replace request: both answers recorded from the exchange's; a refusal
        says which half failed (the old leg's fate asked by a query when its cancel failed);
        an outcome nobody knows leaves both legs to queries."""
        try:
            canceled, placed = await self.calls.replace(old.order, new.order)
        except Exception as exc:
            failure = replace_failure(exc, self.redactor)
            if failure is None:
                await self.failed(new, exc, "submit", new.envelope)
                await self._query(old)
                return
            if failure.canceled:
                now = self.clock.now_ns()
                gone = base_answer(old.order, "canceled", "cancel", now, reason=failure.reason)
                gone = msgspec.structs.replace(gone, venue_order_id=old.venue_order_id)
                await self.record(gone, cause)
            else:
                await self._query(old)
            now = self.clock.now_ns()
            await self.record(
                base_answer(new.order, "rejected", "submit", now, reason=failure.reason),
                new.envelope,
            )
            return
        await self.record(order_answer(canceled, old.order, "cancel", self.clock.now_ns()), cause)
        await self.order_state(new, placed, "submit")

    async def _place(self, leg: Leg) -> None:
        try:
            placed = await self.calls.submit(leg.order)
        except Exception as exc:
            await self.failed(leg, exc, "submit", leg.envelope)
            return
        await self.order_state(leg, placed, "submit")

    # -- settling --------------------------------------------------------------------------

    async def query(self, leg: Leg) -> bool | None:
        async with self.lock:
            return await self._query(leg)

    async def _query(self, leg: Leg) -> bool | None:
        """Look ``leg`` up by client id: its real state and fills when found; None when the
        query failed (nothing is concluded from a failed query)."""
        try:
            found = await self.calls.find(leg.order)
        except Exception as exc:
            log.warning(
                "query %s failed: %s",
                leg.order.venue_client_id,
                exchange_reason(exc, self.redactor, self.calls.id),
            )
            return None
        if found is None:
            await self.record(self.unknown(leg, "query", "not found by client id"), leg.envelope)
            return False
        if found.get("id") and not leg.venue_order_id:
            leg.venue_order_id = str(found["id"])
        self.book.link(leg, order_ids(found))
        await self._adopt_orphans(leg)
        filled = float(found.get("filled") or 0.0)
        if filled > leg.filled:
            await self._trades_of(leg, "query")
        await self.order_state(leg, found, "query")
        return True

    async def _trades_of(self, leg: Leg, source: AnswerSource) -> None:
        since = leg.envelope.event_time // 1_000_000 - TRADES_MARGIN_MS
        try:
            trades = await self.calls.trades(leg.order.symbol, since)
        except Exception as exc:
            log.warning(
                "trades of %s failed: %s",
                leg.order.symbol,
                exchange_reason(exc, self.redactor, self.calls.id),
            )
            return
        for trade in trades:
            if self.book.of_venue_order(str(trade.get("order") or "")) is leg:
                await self.trade(trade, source)

    async def settle(self, leg: Leg) -> None:
        """One step for an unsettled leg, as the fate rule says on the journal's queries:
        query, resubmit with the same id, or give up (``missing``); a cancel not yet
        confirmed is asked again once a query shows the order still open."""
        async with self.lock:
            if leg.amend is not None and leg.open and leg.state == "working":
                await self._settle_amend(leg, leg.amend)
                return
            known = self.journal.leg(leg.order.venue_client_id)
            if known is None or not known.in_doubt():
                await self._settle_cancel(leg)
                return
            verdict = self.rule.decide(known, known.queries, self.clock.now_ns())
            if verdict == "query":
                await self._query(leg)
            elif verdict == "resubmit":
                await self._place(leg)
            elif verdict == "fail":
                misses = sum(1 for q in known.queries if not q.found)
                reason = f"not found by {misses} queries over {self.rule.within_s:g} s"
                answer = base_answer(
                    leg.order, "missing", "query", self.clock.now_ns(), reason=reason
                )
                await self.record(answer, leg.envelope)

    async def _settle_cancel(self, leg: Leg) -> None:
        """A cancel not confirmed: asked again while a query shows the order open, spaced
        like the fate rule's queries; after that many misses it is left to reconciliation
        (which reports an order Keel holds as working that the venue does not list)."""
        if leg.cancel is None or not leg.open:
            return
        now = self.clock.now_ns()
        if now - leg.cancel_queried_ns < self.rule.offset_ns(1):
            return
        leg.cancel_queried_ns = now
        found = await self._query(leg)
        if found and leg.open:
            await self._cancel(leg, leg.cancel)
        elif found is False:
            leg.cancel_misses += 1
            if leg.cancel_misses >= self.rule.queries:
                leg.cancel = None

    def _fee_to_come(self, trade: Mapping[str, Any]) -> bool:
        """Kraken Futures' REST trades carry ccxt's estimate of the fee (the market's rate
        times the cost), not what the venue charged: only its private stream says that. A
        trade younger than twice ``poll_after_s`` is left to the stream; an older one, the
        stream still silent, is taken with the estimate (docs/venues.md, Kraken Futures)."""
        if not self.calls.rest_fills_lack_fee:
            return False
        stamp = trade.get("timestamp")
        if not isinstance(stamp, int | float):
            return False
        age_ns = self.clock.now_ns() - int(stamp) * 1_000_000
        return age_ns < 2 * self.config.poll_after_s * 1e9

    async def poll(self, legs: list[Leg]) -> None:
        """The private stream's stand-in: recent trades of each symbol with open legs, then
        each open leg's state."""
        async with self.lock:
            symbols = sorted({leg.order.symbol for leg in legs})
            for symbol in symbols:
                mine = [leg for leg in legs if leg.order.symbol == symbol]
                since = min(leg.envelope.event_time for leg in mine) // 1_000_000 - TRADES_MARGIN_MS
                try:
                    trades = await self.calls.trades(symbol, since)
                except Exception as exc:
                    log.warning(
                        "poll trades %s: %s",
                        symbol,
                        exchange_reason(exc, self.redactor, self.calls.id),
                    )
                    continue
                for trade in trades:
                    if not self._fee_to_come(trade):
                        await self.trade(trade, "poll")
            for leg in legs:
                if leg.open and leg.state == "working":
                    await self._query(leg)
