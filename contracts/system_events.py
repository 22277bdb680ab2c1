"""The fleet's own events: operators' commands and the workers' health.

- ``GovernanceCommand`` (``gov.cmd.<action>``): an operator's kill, resume, enable, promote
  or rollback.
- ``Heartbeat`` (``sys.heartbeat.<worker>``): a worker instance is alive and how far it got.
- ``DeadLetter`` (``sys.dlq.<worker>``): a message a worker could not use, with the reason.
- ``SystemStatus`` (``sys.status.<source>``): the trading state a worker decided.

Kept apart from the market, order and portfolio events of ``contracts/events.py``: these
describe the fleet, not the book.
"""

from __future__ import annotations

from typing import Literal

from msgspec import UNSET, UnsetType

from contracts.event_base import Event, Int64, is_token, require

__all__ = [
    "STRATEGY_ACTIONS",
    "DeadLetter",
    "GovernanceAction",
    "GovernanceCommand",
    "Heartbeat",
    "SystemState",
    "SystemStatus",
]

GovernanceAction = Literal["kill", "resume", "enable", "promote", "rollback"]
STRATEGY_ACTIONS: frozenset[str] = frozenset({"enable", "promote", "rollback"})
SystemState = Literal["RUNNING", "DEGRADED", "SAFE_MODE", "HALTED"]


class GovernanceCommand(Event, frozen=True):
    """An operator's command: ``kill``/``resume`` the fleet, ``enable`` a ``strategy`` a
    playbook disabled, ``promote`` one of a strategy's models (``model``, a variant tag) to
    current, or ``rollback`` a strategy to the model it had before its last promotion.
    ``strategy`` and ``model`` are UNSET (left out of the JSON) where they do not apply, so
    kill, resume and enable keep their bytes."""

    action: GovernanceAction
    reason: str = ""
    issued_by: str = ""
    strategy: str | UnsetType = UNSET
    model: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        super().__post_init__()
        named = self.strategy is not UNSET and is_token(self.strategy)
        require(
            named == (self.action in STRATEGY_ACTIONS),
            "enable, promote and rollback (only) name a strategy token",
        )
        modelled = self.model is not UNSET and bool(self.model)
        require(modelled == (self.action == "promote"), "promote (only) names a model")


class Heartbeat(Event, frozen=True):
    worker: str
    instance: str
    seq: Int64
    processed: Int64
    status: str = "running"
    metrics_port: Int64 = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.instance), "instance must not be empty")
        require(self.seq >= 0 and self.processed >= 0, "seq and processed must be >= 0")
        require(0 <= self.metrics_port <= 65_535, "metrics_port must be within [0, 65535]")


class DeadLetter(Event, frozen=True):
    """A message a worker could not use, kept with the reason so nothing is silently lost."""

    worker: str
    subject: str
    reason: str
    payload: bytes
    stream: str = ""
    stream_seq: Int64 = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.subject), "subject must not be empty")
        require(self.stream_seq >= 0, "stream_seq must be >= 0")


class SystemStatus(Event, frozen=True):
    """The trading state a worker decided (the risk worker: breakers, guards, kill switch):
    ``RUNNING`` (trading normally), ``DEGRADED`` (trading, a soft breach or a component is
    impaired), ``SAFE_MODE`` (no new entries, exits and protective orders only), ``HALTED``
    (no new orders). ``source`` is the worker that decided it, ``rule`` the rule or guard
    that caused it (empty when none)."""

    status: SystemState
    reason: str
    source: str
    rule: str = ""
