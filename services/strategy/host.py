"""Adapts a strategy (bars in, signals out) to the worker's decider contract.

Bars go to ``on_bar``; any other event (the external events an event-driven strategy names
in ``external``) goes to ``on_event`` when the strategy has one.
"""

from __future__ import annotations

from collections.abc import Sequence

from contracts.events import Bar, Event
from contracts.subjects import bars_of_symbol, external_filters
from services.runtime.role import Input, Role
from strategies.registry import Strategy


class StrategyDecider:
    snapshot_version = 1

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self._on_bar = strategy.on_bar
        self._on_event = getattr(strategy, "on_event", None)

    def decide(self, event: Event, now: int) -> Sequence[Event]:
        if type(event) is Bar:
            return self._on_bar(event)
        return self._on_event(event) if self._on_event is not None else ()

    def snapshot(self) -> bytes:
        return self.strategy.snapshot()

    def restore(self, data: bytes) -> None:
        self.strategy.restore(data)


def strategy_role(strategy: Strategy, symbols: Sequence[str]) -> Role:
    """One role per strategy instance; several instances split the symbols between them."""
    subjects = tuple(bars_of_symbol(s) for s in symbols) or ("md.bar.>",)
    inputs = (Input("MARKET", subjects),)
    kinds = getattr(strategy, "external", ())
    if kinds:  # an event-driven strategy: its external events too, split by symbol alike
        inputs += (Input("EXTERNAL", external_filters(tuple(kinds), tuple(symbols))),)
    return Role(f"strategy-{strategy.name}", inputs, StrategyDecider(strategy))
