"""Risk's side of governance's allocator (``gov.alloc.<strategy>``, docs/risk.md, Budgets).

A strategy's budget is the sum of its models' weights: its variants share one book in risk
(only the routed variant's signal reaches it), so a cap per model tag would move with the
routing on every opportunity while the position stays the strategy's. The budget, times the
smallest playbook scale in force (``ScaleBudgets``), caps the strategy's gross exposure at
``budget x scale x equity``; an order that would pass the cap is cut to fit it, and refused
(rule ``budget``) when nothing of it fits. A strategy without an ``AllocationDecided`` yet,
or whose latest one has no budgets, has no cap. Sizing by equity scales by the budget too
(``engine``: one unit of ``pct_equity``, ``turtle`` or ``vol_target`` is sized from the
strategy's share of equity).
"""

from __future__ import annotations

import math

from contracts.event_base import Event
from contracts.keys import BookId
from contracts.model_events import AllocationDecided
from services.risk.book import EPS, Book
from services.risk.state import RiskState, StrategyBudget

RULE = "budget"
EQUITY_MODES = frozenset(("pct_equity", "turtle", "vol_target"))
"""Sizing modes whose unit is a share of equity: the budget scales them."""


class BudgetGate:
    def __init__(self, state: RiskState, book: Book) -> None:
        self.state = state
        self.budgets = state.budgets
        self.book = book

    def apply(self, event: AllocationDecided, now: int) -> list[Event]:
        """The latest decision per strategy holds; a late, older one changes nothing."""
        held = self.budgets.get(event.strategy)
        if held is not None and held.at > event.ts:
            return []
        if not event.budgets:
            self.budgets.pop(event.strategy, None)
        else:
            weight = math.fsum(b.weight for b in event.budgets)
            self.budgets[event.strategy] = StrategyBudget(weight, event.ts)
        return []

    def weight(self, strategy: str) -> float | None:
        budget = self.budgets.get(strategy)
        return budget.weight if budget is not None else None

    def fit(
        self,
        weight: float,
        factor: float,
        book: BookId,
        held: float,
        delta: float,
        price: float | None,
    ) -> tuple[float, str | None]:
        """``delta`` cut to keep the strategy within its cap, or (0, why) when no part of it
        fits. An order that does not grow the book's position always passes."""
        after = held + delta
        if abs(after) <= abs(held) + EPS:
            return delta, None
        strategy = book.strategy
        scaled = f"{weight:.4f}" + (f" x playbook scale {factor:g}" if factor != 1.0 else "")
        track = self.state.equity
        if track is None or track.equity <= 0.0:
            seen = "no equity snapshot yet" if track is None else f"equity {track.equity:.2f}"
            return 0.0, f"{strategy} has a budget of {scaled} of equity but {seen}"
        if not price:
            return 0.0, f"no price seen for {book.symbol} yet: cannot value it against a budget"
        cap = weight * factor * track.equity
        others = self.book.exposure(strategy, book)
        room = max(0.0, (cap - others) / price)  # the largest |after| the cap allows
        if abs(after) <= room * (1.0 + 1e-9):
            return delta, None
        fitted = math.copysign(room, after) - held
        if fitted * delta > 0.0 and abs(fitted) > EPS * max(1.0, abs(delta)):
            return fitted, None
        exposure = others + abs(after) * price
        return 0.0, (
            f"{strategy} exposure {exposure:.2f} (other markets {others:.2f}) would exceed "
            f"its budget {scaled} x equity {track.equity:.2f} = {cap:.2f}"
        )
