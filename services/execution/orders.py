"""The order state machine: the lifecycle every order of the order manager follows.

```
new -> accepted | rejected
accepted -> accepted (amended) | partially_filled | filled | canceled | rejected | expired
partially_filled -> partially_filled (another fill, or amended) | filled | canceled | expired
filled, canceled, rejected, expired: final
```

``accepted -> rejected`` is the venue refusing an order it first acknowledged (the paper
venue's stale order). The self-transitions are an amendment (new quantity or price, the
status does not change) and a further partial fill. ``docs/orders.md`` draws the diagram.

A status that is not in the table for the current one is an illegal transition: the order
manager refuses it (the order keeps its state) and reports it as a dead letter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from contracts.events import ExecutionReport

OrderStatus = Literal[
    "new", "accepted", "partially_filled", "filled", "canceled", "rejected", "expired"
]
STATUSES: tuple[OrderStatus, ...] = get_args(OrderStatus)
FINAL: frozenset[str] = frozenset({"filled", "canceled", "rejected", "expired"})
WORKING: frozenset[str] = frozenset({"accepted", "partially_filled"})

TRANSITIONS: dict[str, frozenset[str]] = {
    "new": frozenset({"accepted", "rejected"}),
    "accepted": frozenset(
        {"accepted", "partially_filled", "filled", "canceled", "rejected", "expired"}
    ),
    "partially_filled": frozenset({"partially_filled", "filled", "canceled", "expired"}),
    "filled": frozenset(),
    "canceled": frozenset(),
    "rejected": frozenset(),
    "expired": frozenset(),
}


class IllegalTransition(ValueError):
    """A status change the state machine does not allow."""


def allowed(before: str, after: str) -> bool:
    """Whether an order in ``before`` may move to ``after``."""
    return after in TRANSITIONS.get(before, frozenset())


def advance(before: str, after: str) -> str:
    """``after`` if the transition is legal, else ``IllegalTransition``."""
    if after not in TRANSITIONS.get(before, frozenset()):
        raise IllegalTransition(f"illegal transition {before} -> {after}")
    return after


def is_cancel_reject(report: ExecutionReport) -> bool:
    """A ``rejected`` report that refuses a cancel (of an unknown or finished order) rather
    than the order itself: it carries no venue order id and leaves the order as it was."""
    return (
        report.status == "rejected"
        and not report.venue_order_id
        and report.reason.startswith("cancel of")
    )


def check_reports(reports: Iterable[ExecutionReport], dust: float = 1e-9) -> list[str]:
    """Replay reports through the state machine, per client order id, and list every
    violation: an illegal transition, a cumulative quantity that falls or passes the order
    quantity, fills that do not add up to ``cum_qty``, or a report after the end.

    Cancel rejects (``is_cancel_reject``) are skipped: they answer a cancel, not the order.
    The check the property tests run over whole sessions."""
    state: dict[str, tuple[str, float, float]] = {}  # id -> (status, cum_qty, sum of fills)
    errors: list[str] = []
    for r in reports:
        if is_cancel_reject(r):
            continue
        before, cum, filled = state.get(r.client_order_id, ("new", 0.0, 0.0))
        if not allowed(before, r.status):
            errors.append(f"{r.client_order_id}: illegal transition {before} -> {r.status}")
            continue
        filled += r.fill_qty
        tol = dust * max(1.0, r.order_qty)
        if r.cum_qty < cum - tol:
            errors.append(f"{r.client_order_id}: cum_qty fell from {cum} to {r.cum_qty}")
        if r.cum_qty > r.order_qty + tol:
            errors.append(f"{r.client_order_id}: cum_qty {r.cum_qty} > order_qty {r.order_qty}")
        if abs(filled - r.cum_qty) > tol:
            errors.append(f"{r.client_order_id}: fills add up to {filled}, cum_qty {r.cum_qty}")
        if r.status == "filled" and abs(r.cum_qty - r.order_qty) > tol:
            errors.append(f"{r.client_order_id}: filled at {r.cum_qty} of {r.order_qty}")
        state[r.client_order_id] = (r.status, r.cum_qty, filled)
    return errors
