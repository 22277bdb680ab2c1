"""Deterministic ids of venue legs and of the venue's answers (docs/reconciliation.md).

A leg's client id derives from the venue, Keel's order and the leg number, so a gateway that
restarts between submit and acknowledgement sends (and queries) the same id, and the
exchange's own duplicate check stands behind Keel's. An answer's event id derives from the
exchange fact it records, so the same trade seen on the private stream, by polling and by
reconciliation is one event (JetStream drops the copies by ``Nats-Msg-Id``).
"""

from __future__ import annotations

import hashlib

from contracts.envelope import content_id
from contracts.venue_events import VenueAnswer

MAX_LEGS = 1024
"""Legs searched when a client id is mapped back to its leg number: an order amended by
cancel/replace more often than this is not one Keel makes."""


def venue_client_id(venue: str, client_order_id: str, leg: int) -> str:
    """UUID-shaped (8-4-4-4-12 lowercase hex): the one form every supported exchange takes
    (Binance, Bybit, Kraken's long ``cl_ord_id``, Kraken Futures ``cliOrdId``)."""
    if leg < 0:
        raise ValueError("leg must be >= 0")
    digest = hashlib.sha256(f"{venue}\x1f{client_order_id}\x1f{leg}".encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def leg_number(venue: str, client_order_id: str, client_id: str) -> int | None:
    """The leg ``client_id`` is of Keel's order ``client_order_id``, or None when it is none
    of them (an external order that reuses a Keel order's name is still external)."""
    for leg in range(MAX_LEGS):
        if venue_client_id(venue, client_order_id, leg) == client_id:
            return leg
    return None


def _qty(value: float) -> str:
    return repr(float(value))


def answer_event_id(answer: VenueAnswer) -> str:
    """The event id (``Nats-Msg-Id``) of an answer: equal for the same exchange fact whatever
    the source that saw it, different for different facts.

    - ``fill``: the venue, the symbol and its trade id, nothing else (stream, poll and
      reconcile agree; Binance numbers trades per symbol).
    - ``accepted``: the leg and the order and filled quantities the exchange reported; an
      in-place amendment's acceptance also carries its answer time, since an amendment that
      only moves a price reports the same quantities.
    - ``canceled``/``expired``: the leg and its final filled quantity (an order ends once).
    - ``rejected``: the leg, the request refused (submit, cancel, amend) and the reason.
    - ``unknown``/``missing``: Keel's own observation (a timeout, a query that found nothing,
      the fate rule's verdict): the leg, the source and the gateway's time of it, so a
      re-published copy is dropped and a second timeout is a second fact.
    """
    kind = answer.kind
    if kind == "fill":
        return content_id("fill", answer.venue, answer.symbol, answer.trade_id)
    base = ("answer", answer.venue, answer.venue_client_id, kind)
    if kind == "accepted":
        stamp = answer.ts if answer.source == "amend" else 0
        return content_id(*base, _qty(answer.order_qty), _qty(answer.cum_qty), stamp)
    if kind in ("canceled", "expired"):
        return content_id(*base, _qty(answer.cum_qty))
    if kind == "rejected":
        return content_id(*base, answer.source, answer.reason)
    return content_id(*base, answer.source, answer.ts)
