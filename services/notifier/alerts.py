"""Which events deserve a person's attention, and how urgently: event -> ``Alert``.

Pure: the same event gives the same alert. An alert's ``key`` names the condition (a
worker's status, a venue, a feed), so de-duplication and latching are per condition and a
second, different CRITICAL is never hidden by the first. ``resolves`` marks the event that
ends a condition (a status back to RUNNING, a feed streaming again): it lifts the latch.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from contracts.events import Event, ExecutionReport, FeedStatus, RiskAlert
from contracts.governance_events import (
    DisableStrategy,
    EnableStrategy,
    HaltEntries,
    PlaybookAction,
    ScaleBudgets,
)
from contracts.model_events import AllocationDecided, ModelRoster, PromotionDecided
from contracts.notify_events import Priority
from contracts.system_events import DeadLetter, GovernanceCommand, SystemStatus
from contracts.venue_events import Discrepancy, VenueStatus

Kind = Literal[
    "status", "risk", "feed", "venue", "recon", "dlq", "governance", "heartbeat", "fill", "report"
]
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]

RANK: dict[str, int] = {"CRITICAL": 4, "ERROR": 3, "WARNING": 2, "INFO": 1, "HEARTBEAT": 0}
"""Higher is more urgent: routing's minimum priority and the queue's drop order use it."""

HALTING_ACTIONS = frozenset({"halt_entries", "flatten"})
HALTING_DISCREPANCIES = frozenset({"position_mismatch", "balance_mismatch"})


class Alert(msgspec.Struct, frozen=True):
    key: str
    priority: Priority
    kind: Kind
    title: str
    body: str = ""
    cause_id: str = ""
    resolves: bool = False


def _market(venue: str, symbol: str) -> str:
    return ".".join(part for part in (venue, symbol) if part)


def alert_for(event: Event, cause_id: str = "") -> Alert | None:
    """The alert an event raises; None for events nobody needs to hear about."""
    match event:
        case SystemStatus():
            return _status(event, cause_id)
        case RiskAlert():
            key = f"risk.{event.rule}"
            if event.venue or event.symbol:
                key += "." + _market(event.venue, event.symbol)
            if event.action == "resume":
                return Alert(
                    key,
                    "INFO",
                    "risk",
                    f"Risk {event.rule}: resumed",
                    event.detail,
                    cause_id,
                    resolves=True,
                )
            priority: Priority = "CRITICAL" if event.action in HALTING_ACTIONS else "ERROR"
            where = f" on {_market(event.venue, event.symbol)}" if event.venue else ""
            return Alert(
                key,
                priority,
                "risk",
                f"Risk {event.rule}: {event.action}{where}",
                event.detail,
                cause_id,
            )
        case FeedStatus():
            return _feed(event, cause_id)
        case VenueStatus():
            key = f"venue.{event.venue}"
            title = f"Venue {event.venue} ({event.mode}): {event.state}"
            if event.state == "halted":
                return Alert(key, "CRITICAL", "venue", title, event.reason, cause_id)
            if event.state == "degraded":
                return Alert(key, "WARNING", "venue", title, event.reason, cause_id)
            if event.state == "running":
                return Alert(key, "INFO", "venue", title, event.reason, cause_id, resolves=True)
            return None
        case Discrepancy():
            what = event.symbol or event.asset or event.venue_client_id or event.trade_id
            key = f"recon.{event.venue}.{event.kind}" + (f".{what}" if what else "")
            priority = "CRITICAL" if event.kind in HALTING_DISCREPANCIES else "WARNING"
            body = event.detail or f"venue {event.venue_value} vs keel {event.keel_value}"
            title = f"Reconciliation {event.venue}: {event.kind} {what} -> {event.action}"
            return Alert(key, priority, "recon", title.replace("  ", " "), body, cause_id)
        case DeadLetter():
            return Alert(
                f"dlq.{event.worker}",
                "ERROR",
                "dlq",
                f"Dead letter from {event.worker} on {event.subject}",
                event.reason,
                cause_id,
            )
        case GovernanceCommand():
            return _command(event, cause_id)
        case PlaybookAction():
            return _playbook(event, cause_id)
        case PromotionDecided():
            decision = event.evaluation.decision
            if decision in ("hold", "reject"):
                return None
            return Alert(
                f"promotion.{event.strategy}",
                "INFO",
                "governance",
                f"Promotion {event.strategy}: {decision} {event.canary} over {event.current}",
                event.evaluation.reason,
                cause_id,
            )
        case ModelRoster():
            tags = ", ".join(
                f"{v.tag}{' (canary)' if v.canary else ''} {v.weight:g}" for v in event.variants
            )
            return Alert(
                f"roster.{event.strategy}",
                "INFO",
                "governance",
                f"Roster {event.strategy}: {tags}",
                event.reason,
                cause_id,
            )
        case AllocationDecided():
            return Alert(
                f"alloc.{event.strategy}",
                "INFO",
                "governance",
                f"Budgets {event.strategy}: total {event.total:.4g}",
                event.reason,
                cause_id,
            )
        case ExecutionReport():
            if event.fill_qty <= 0:
                return None
            return Alert(
                f"fill.{event.client_order_id}.{event.cum_qty:g}",
                "INFO",
                "fill",
                f"Fill {event.strategy} {event.side} {event.fill_qty:g} {event.symbol} "
                f"@ {event.fill_price:g} on {event.venue}",
                event.reason,
                cause_id,
            )
    return None


def _status(event: SystemStatus, cause_id: str) -> Alert | None:
    key = f"status.{event.source}"
    title = f"{event.source}: {event.status}" + (f" ({event.rule})" if event.rule else "")
    if event.status == "RUNNING":
        return Alert(key, "INFO", "status", title, event.reason, cause_id, resolves=True)
    priority: Priority = {"HALTED": "CRITICAL", "SAFE_MODE": "ERROR"}.get(  # type: ignore[assignment]
        event.status, "WARNING"
    )
    return Alert(key, priority, "status", title, event.reason, cause_id)


def _feed(event: FeedStatus, cause_id: str) -> Alert | None:
    key = f"feed.{event.venue}.{event.symbol}"
    title = f"Feed {event.venue} {event.symbol}: {event.state}"
    if event.state in ("stale", "delisted"):
        return Alert(key, "ERROR", "feed", title, event.reason, cause_id)
    if event.state == "polling":
        return Alert(key, "WARNING", "feed", title, event.reason, cause_id)
    if event.state == "streaming":
        return Alert(key, "INFO", "feed", title, event.reason, cause_id, resolves=True)
    return None


def _command(event: GovernanceCommand, cause_id: str) -> Alert:
    by = f" by {event.issued_by}" if event.issued_by else ""
    if event.action == "kill":
        return Alert(
            "gov.kill", "CRITICAL", "governance", f"Kill switch{by}", event.reason, cause_id
        )
    if event.action == "resume":
        return Alert(
            "gov.kill", "INFO", "governance", f"Resumed{by}", event.reason, cause_id, resolves=True
        )
    target = f" {event.strategy}" if isinstance(event.strategy, str) else ""
    return Alert(
        f"gov.{event.action}{target.replace(' ', '.')}",
        "INFO",
        "governance",
        f"Governance {event.action}{target}{by}",
        event.reason,
        cause_id,
    )


def _playbook(event: PlaybookAction, cause_id: str) -> Alert:
    action = event.action
    match action:
        case ScaleBudgets():
            return Alert(
                f"playbook.{action.rule}",
                "WARNING",
                "governance",
                f"Playbook {action.rule}: budgets x{action.factor:g}",
                action.reason,
                cause_id,
                resolves=action.factor >= 1.0,
            )
        case DisableStrategy():
            return Alert(
                f"playbook.{action.rule}.{action.strategy}",
                "ERROR",
                "governance",
                f"Playbook {action.rule}: {action.strategy} disabled",
                action.reason,
                cause_id,
            )
        case EnableStrategy():
            return Alert(
                f"playbook.{action.rule}.{action.strategy}",
                "INFO",
                "governance",
                f"Playbook {action.rule}: {action.strategy} enabled by {action.by}",
                action.reason,
                cause_id,
            )
        case HaltEntries():
            return Alert(
                f"playbook.{action.rule}",
                "ERROR",
                "governance",
                f"Playbook {action.rule}: entries halted ({action.day})",
                action.reason,
                cause_id,
            )
