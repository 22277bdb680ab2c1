"""The leaderboard: how each strategy, model and venue traded, folded from the log's events
(docs/governance.md, "Leaderboard and metrics").

A **trade** is a round trip of one (strategy, model tag, venue, symbol): it opens when that
book's position leaves zero and closes when it is back at zero. A fill that flips the
position closes the trade with the part that reaches zero and opens the next one with the
rest (its fee split by quantity). Per-trade figures are never annualised.

Pure: events in, frozen records out; no clock, I/O or environment. The CLI
(``keel gov leaderboard``) folds a read of the log through it and the workers' metrics fold
their own published events through the same ``Standings``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import msgspec

from contracts.events import Event, ExecutionReport, StrategyPnL
from contracts.model_events import AllocationDecided, ModelRoster, ModelVariant, PromotionDecided

__all__ = [
    "BookPnL",
    "BudgetView",
    "ClosedTrade",
    "Figures",
    "Leaderboard",
    "PromotionView",
    "Row",
    "Scope",
    "Standings",
    "WeightView",
]

Scope = Literal["strategy", "model", "venue"]
FLAT_TOLERANCE = 1e-9
"""A position within this fraction of the quantities involved is flat (float residue)."""


class ClosedTrade(msgspec.Struct, frozen=True):
    """One round trip. ``pnl`` is net of the fees of its fills; ``ret = pnl / notional``,
    ``notional`` being what its opening and adding fills cost (quantity x price x contract
    size)."""

    strategy: str
    model: str
    venue: str
    symbol: str
    opened_at: int
    closed_at: int
    pnl: float
    fees: float
    notional: float
    ret: float


class Figures(msgspec.Struct, frozen=True):
    """A group's closed trades, in the order they closed. ``None``: not defined yet
    (Sharpe needs two trades with spread, Sortino a losing trade)."""

    trades: int
    pnl: float
    fees: float
    sharpe: float | None
    sortino: float | None
    win_rate: float | None
    max_drawdown: float


class Row(msgspec.Struct, frozen=True):
    """One line of the board: ``scope`` says which of strategy, model and venue it groups
    by (the others are empty)."""

    scope: Scope
    strategy: str
    model: str
    venue: str
    figures: Figures


class WeightView(msgspec.Struct, frozen=True):
    """A variant's routing weight from the latest ``ModelRoster`` (``source`` roster) or,
    before any, the configured variants (``source`` config; ``at`` 0)."""

    strategy: str
    model: str
    weight: float
    share: float  # weight / the strategy's total weight, before the router's canary cap
    canary: bool
    source: Literal["roster", "config"]
    at: int
    reason: str


class BudgetView(msgspec.Struct, frozen=True):
    strategy: str
    model: str
    weight: float
    canary: bool
    bound: str
    at: int
    reason: str


class PromotionView(msgspec.Struct, frozen=True):
    strategy: str
    current: str
    canary: str
    decision: str
    statistic: float  # log of the mixture likelihood ratio
    threshold: float  # log(1 / alpha)
    at: int
    reason: str


class BookPnL(msgspec.Struct, frozen=True):
    """The latest ``pf.pnl`` attribution of a strategy (``model`` empty) or one of its model
    tags: realized + unrealized - fees - funding, in the portfolio's base currency."""

    strategy: str
    model: str
    pnl: float
    realized: float
    unrealized: float
    at: int


class Leaderboard(msgspec.Struct, frozen=True):
    rows: tuple[Row, ...]
    weights: tuple[WeightView, ...]
    budgets: tuple[BudgetView, ...]
    promotions: tuple[PromotionView, ...]
    books: tuple[BookPnL, ...]
    open_trades: int
    reports: int


class _Position:
    """One book's open round trip."""

    __slots__ = ("avg", "fees", "notional", "opened_at", "qty", "realized")

    def __init__(self) -> None:
        self.qty = 0.0
        self.avg = 0.0
        self.realized = 0.0
        self.fees = 0.0
        self.notional = 0.0
        self.opened_at = 0

    def open(self, signed: float, price: float, fee: float, size: float, at: int) -> None:
        self.qty, self.avg, self.realized = signed, price, 0.0
        self.fees, self.notional, self.opened_at = fee, abs(signed) * price * size, at

    def fill(
        self, signed: float, price: float, fee: float, size: float, at: int
    ) -> tuple[float, float, float, int] | None:
        """Apply a fill; a closed round trip comes back as (pnl, fees, notional, opened)."""
        qty = self.qty
        if qty == 0.0:
            self.open(signed, price, fee, size, at)
            return None
        if (qty > 0) == (signed > 0):
            total = abs(qty) + abs(signed)
            self.avg = (abs(qty) * self.avg + abs(signed) * price) / total
            self.qty = qty + signed
            self.fees += fee
            self.notional += abs(signed) * price * size
            return None
        closing = min(abs(signed), abs(qty))
        share = closing / abs(signed)
        self.realized += closing * (price - self.avg) * (1.0 if qty > 0 else -1.0) * size
        self.fees += fee * share
        rest = qty + math.copysign(closing, signed)
        if abs(rest) > FLAT_TOLERANCE * max(abs(qty), abs(signed)):
            self.qty = rest
            return None
        closed = (self.realized - self.fees, self.fees, self.notional, self.opened_at)
        remaining = abs(signed) - closing
        if remaining > FLAT_TOLERANCE * abs(signed):
            self.open(math.copysign(remaining, signed), price, fee * (1.0 - share), size, at)
        else:
            self.qty = 0.0
        return closed


class _Stats:
    """Running figures of a group: Welford's mean and variance of the returns, the downside
    second moment, and the drawdown of the cumulative net PnL."""

    __slots__ = ("cum", "down2", "fees", "m2", "max_dd", "mean", "n", "peak", "wins")

    def __init__(self) -> None:
        self.n = self.wins = 0
        self.mean = self.m2 = self.down2 = 0.0
        self.cum = self.peak = self.max_dd = self.fees = 0.0

    def add(self, trade: ClosedTrade) -> None:
        self.n += 1
        r = trade.ret
        delta = r - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (r - self.mean)
        if r < 0:
            self.down2 += r * r
        if trade.pnl > 0:
            self.wins += 1
        self.fees += trade.fees
        self.cum += trade.pnl
        self.peak = max(self.peak, self.cum)
        self.max_dd = max(self.max_dd, self.peak - self.cum)

    def figures(self) -> Figures:
        n = self.n
        std = math.sqrt(self.m2 / (n - 1)) if n >= 2 else 0.0
        downside = math.sqrt(self.down2 / n) if n else 0.0
        return Figures(
            trades=n,
            pnl=self.cum,
            fees=self.fees,
            sharpe=self.mean / std if std > 0 else None,
            sortino=self.mean / downside if downside > 0 else None,
            win_rate=self.wins / n if n else None,
            max_drawdown=self.max_dd,
        )


_Book = tuple[str, str, str, str]  # strategy, model tag, venue, symbol
_Group = tuple[Scope, str, str, str]  # scope, strategy, model, venue


class Standings:
    """The fold. ``observe`` takes any event and keeps what the board needs: fills (closed
    into trades), the latest roster, budget, promotion and attribution per strategy.
    ``configured`` names each strategy's configured variants (the weights before any
    roster); ``since`` (ns): trades that closed earlier are folded but not counted, so a
    position opened before it is still measured from its first fill."""

    def __init__(
        self,
        configured: Iterable[tuple[str, tuple[ModelVariant, ...]]] = (),
        since: int = 0,
    ) -> None:
        self.since = since
        self._configured = {strategy: variants for strategy, variants in configured if variants}
        self._sizes: dict[tuple[str, str], float] = {}
        self._positions: dict[_Book, _Position] = {}
        self._stats: dict[_Group, _Stats] = {}
        self._rosters: dict[str, ModelRoster] = {}
        self._budgets: dict[str, AllocationDecided] = {}
        self._promotions: dict[str, PromotionDecided] = {}
        self._books: dict[tuple[str, str], StrategyPnL] = {}
        self.reports = 0

    def size_of(self, venue: str, symbol: str, size: float) -> None:
        """An instrument's contract size (an ``Instrument`` event or ``[[instruments]]``)."""
        self._sizes[(venue, symbol)] = size if size > 0 else 1.0

    def observe(self, event: Event) -> ClosedTrade | None:
        match event:
            case ExecutionReport():
                self.reports += 1
                return self.fill(event) if event.fill_qty > 0 else None
            case ModelRoster():
                self._rosters[event.strategy] = event
            case AllocationDecided():
                self._budgets[event.strategy] = event
            case PromotionDecided():
                self._promotions[event.strategy] = event
            case StrategyPnL():
                self._books[(event.strategy, event.model_tag)] = event
        return None

    def fill(self, report: ExecutionReport) -> ClosedTrade | None:
        book = (report.strategy, report.model_tag, report.venue, report.symbol)
        position = self._positions.get(book)
        if position is None:
            position = self._positions[book] = _Position()
        signed = report.fill_qty if report.side == "buy" else -report.fill_qty
        size = self._sizes.get((report.venue, report.symbol), 1.0)
        closed = position.fill(signed, report.fill_price, report.fee, size, report.ts)
        if closed is None:
            return None
        pnl, fees, notional, opened = closed
        trade = ClosedTrade(
            strategy=report.strategy,
            model=report.model_tag,
            venue=report.venue,
            symbol=report.symbol,
            opened_at=opened,
            closed_at=report.ts,
            pnl=pnl,
            fees=fees,
            notional=notional,
            ret=pnl / notional if notional > 0 else 0.0,
        )
        if trade.closed_at < self.since:
            return trade
        for group in self.groups(trade):
            stats = self._stats.get(group)
            if stats is None:
                stats = self._stats[group] = _Stats()
            stats.add(trade)
        return trade

    @staticmethod
    def groups(trade: ClosedTrade) -> tuple[_Group, _Group, _Group]:
        return (
            ("strategy", trade.strategy, "", ""),
            ("model", trade.strategy, trade.model, ""),
            ("venue", "", "", trade.venue),
        )

    def figures(
        self, scope: Scope, strategy: str = "", model: str = "", venue: str = ""
    ) -> Figures:
        stats = self._stats.get((scope, strategy, model, venue))
        return (stats or _Stats()).figures()

    def board(self) -> Leaderboard:
        order = {"strategy": 0, "model": 1, "venue": 2}
        rows = tuple(
            Row(scope=scope, strategy=s, model=m, venue=v, figures=stats.figures())
            for (scope, s, m, v), stats in sorted(
                self._stats.items(), key=lambda item: (order[item[0][0]], *item[0][1:])
            )
        )
        return Leaderboard(
            rows=rows,
            weights=self.weights(),
            budgets=tuple(
                BudgetView(
                    strategy=b.key.strategy,
                    model=b.key.model,
                    weight=b.weight,
                    canary=b.is_canary,
                    bound=b.bound,
                    at=event.ts,
                    reason=b.reason,
                )
                for _, event in sorted(self._budgets.items())
                for b in event.budgets
            ),
            promotions=tuple(
                PromotionView(
                    strategy=p.strategy,
                    current=p.current,
                    canary=p.canary,
                    decision=p.evaluation.decision,
                    statistic=p.evaluation.sequential.log_ratio,
                    threshold=p.evaluation.sequential.log_threshold,
                    at=p.ts,
                    reason=p.evaluation.reason,
                )
                for _, p in sorted(self._promotions.items())
            ),
            books=tuple(
                BookPnL(
                    strategy=b.strategy,
                    model=b.model_tag,
                    pnl=b.pnl,
                    realized=b.realized_pnl,
                    unrealized=b.unrealized_pnl,
                    at=b.ts,
                )
                for _, b in sorted(self._books.items())
            ),
            open_trades=sum(1 for p in self._positions.values() if p.qty != 0.0),
            reports=self.reports,
        )

    def weights(self) -> tuple[WeightView, ...]:
        out: list[WeightView] = []
        for strategy in sorted(self._rosters.keys() | self._configured.keys()):
            roster = self._rosters.get(strategy)
            variants = roster.variants if roster else self._configured[strategy]
            total = sum(v.weight for v in variants)
            out.extend(
                WeightView(
                    strategy=strategy,
                    model=v.tag,
                    weight=v.weight,
                    share=v.weight / total if total > 0 else 0.0,
                    canary=v.canary,
                    source="roster" if roster else "config",
                    at=roster.ts if roster else 0,
                    reason=roster.reason if roster else "configured variants",
                )
                for v in variants
            )
        return tuple(out)
