"""Adapts a strategy (bars in, signals out) to the worker's decider contract.

Bars go to ``on_bar``; an ``EventStrategy`` gets every other event it subscribes to (the
external kinds it names in ``external``, and when ``tunable`` the ``ParamsTuned`` events
addressed to its instance) through ``on_event``. A plain strategy gets bars only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from contracts.events import Bar, Event
from contracts.subjects import bars_of_symbol, external_filters, name_token
from services.runtime.role import Input, Role
from strategies.registry import EventStrategy, Strategy


def _no_outputs(_event: Event) -> Sequence[Event]:
    return ()


class StrategyDecider:
    """Any strategy: bars to ``on_bar``, other events to an ``EventStrategy``'s ``on_event``."""

    snapshot_version = 1

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self._on_bar = strategy.on_bar
        self._on_event = strategy.on_event if isinstance(strategy, EventStrategy) else _no_outputs

    def decide(self, event: Event, now: int) -> Sequence[Event]:
        match event:
            case Bar():
                return self._on_bar(event)
            case _:
                return self._on_event(event)

    def snapshot(self) -> bytes:
        return self.strategy.snapshot()

    def restore(self, data: bytes) -> None:
        self.strategy.restore(data)


class BarDecider(StrategyDecider):
    """A plain strategy's: its role subscribes to bars only, so every event is a bar and
    needs no dispatch (this runs for every bar of a replay)."""

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self._bars = cast(Callable[[Event], Sequence[Event]], strategy.on_bar)

    def decide(self, event: Event, now: int) -> Sequence[Event]:
        return self._bars(event)


def tuning_filter(instance: str) -> str:
    """Every ``ParamsTuned`` addressed to one strategy instance (any symbol, and ``*``)."""
    return f"gov.tune.{name_token(instance, 'strategy')}.>"


def strategy_role(strategy: Strategy, symbols: Sequence[str]) -> Role:
    """One role per strategy instance; several instances split the symbols between them.
    Tuning events are not split: every instance gets all of its own."""
    subjects = tuple(bars_of_symbol(s) for s in symbols) or ("md.bar.>",)
    inputs = (Input("MARKET", subjects),)
    if not isinstance(strategy, EventStrategy):
        return Role(f"strategy-{strategy.name}", inputs, BarDecider(strategy))
    if strategy.external:  # its external events too, split by symbol alike
        filters = external_filters(tuple(strategy.external), tuple(symbols))
        inputs += (Input("EXTERNAL", filters),)
    if strategy.tunable:
        inputs += (Input("GOVERNANCE", (tuning_filter(strategy.name),)),)
    return Role(f"strategy-{strategy.name}", inputs, StrategyDecider(strategy))
