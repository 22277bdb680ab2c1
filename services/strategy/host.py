"""Adapts a strategy (bars in, signals out) to the worker's decider contract."""

from __future__ import annotations

from collections.abc import Sequence

from contracts.events import Bar, Event
from contracts.subjects import bars_of_symbol
from services.runtime.role import Input, Role
from strategies.registry import Strategy


class StrategyDecider:
    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def decide(self, event: Event, now: int) -> Sequence[Event]:
        return self.strategy.on_bar(event) if isinstance(event, Bar) else ()

    def snapshot(self) -> bytes:
        return self.strategy.snapshot()

    def restore(self, data: bytes) -> None:
        self.strategy.restore(data)


def strategy_role(strategy: Strategy, symbols: Sequence[str]) -> Role:
    """One role per strategy instance; several instances split the symbols between them."""
    subjects = tuple(bars_of_symbol(s) for s in symbols) or ("md.bar.>",)
    return Role(
        f"strategy-{strategy.name}", (Input("MARKET", subjects),), StrategyDecider(strategy)
    )
