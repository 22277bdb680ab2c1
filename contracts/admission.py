"""Which events a subject admits: the check a worker makes before it acts on a message.

A subject admits exactly one event type, and the identity fields it carries (strategy,
venue, symbol, interval, action, ...) must equal the payload's. The check is the subject
builders' own answer: an event is admitted on ``subject`` when ``subject_for(event)`` is
that subject, so permissions granted on a subject (``nats.conf``) bind what can be said
there. ``ADMITS`` declares the same layout once, pattern by pattern, to name the reason of a
refusal; ``tests/test_admission.py`` checks that it agrees with ``subject_for`` for every
event type.
"""

from __future__ import annotations

from contracts.events import (
    Bar,
    EquitySnapshot,
    Event,
    ExecutionReport,
    FeedStatus,
    FundingRate,
    Instrument,
    ListingAnnouncement,
    OrderCommand,
    ParamsTuned,
    PositionChanged,
    PromoAnnouncement,
    Quote,
    RiskAlert,
    RiskDecision,
    Signal,
    SocialSentiment,
    StrategyPnL,
    Trade,
)
from contracts.governance_events import PlaybookAction
from contracts.model_events import AllocationDecided, ModelRoster, PromotionDecided, ShadowStep
from contracts.notify_events import Notification
from contracts.subjects import SubjectError, subject_for, symbol_token
from contracts.system_events import DeadLetter, GovernanceCommand, Heartbeat, SystemStatus
from contracts.venue_events import (
    Discrepancy,
    KillSwitch,
    VenueAdoption,
    VenueAnswer,
    VenueOrder,
    VenueStatus,
)

ADMITS: dict[str, tuple[type[Event], tuple[str, ...]]] = {
    "md.bar": (Bar, ("venue", "symbol", "interval")),
    "md.trade": (Trade, ("venue", "symbol")),
    "md.quote": (Quote, ("venue", "symbol")),
    "md.instrument": (Instrument, ("venue", "symbol")),
    "md.funding": (FundingRate, ("venue", "symbol")),
    "md.status": (FeedStatus, ("venue", "symbol")),
    "sig": (Signal, ("strategy", "venue", "symbol")),
    "ord.cmd": (OrderCommand, ("venue", "symbol")),
    "ord.risk": (RiskDecision, ("strategy", "symbol")),
    "ord.alert": (RiskAlert, ("rule",)),
    "exec.report": (ExecutionReport, ("venue", "symbol")),
    "pf.position": (PositionChanged, ("venue", "symbol")),
    "pf.pnl": (StrategyPnL, ("strategy",)),
    "pf.equity": (EquitySnapshot, ()),
    "gov.tune": (ParamsTuned, ("strategy", "symbol")),
    "gov.cmd": (GovernanceCommand, ("action",)),
    "gov.playbook": (PlaybookAction, ("rule",)),
    "gov.shadow": (ShadowStep, ("strategy", "venue", "symbol")),
    "gov.model": (ModelRoster, ("strategy",)),
    "gov.promotion": (PromotionDecided, ("strategy",)),
    "gov.alloc": (AllocationDecided, ("strategy",)),
    "sys.notify": (Notification, ("outcome",)),
    "sys.heartbeat": (Heartbeat, ("worker",)),
    "sys.dlq": (DeadLetter, ("worker",)),
    "sys.status": (SystemStatus, ("source",)),
    "ext.listing": (ListingAnnouncement, ("source", "symbol")),
    "ext.sentiment": (SocialSentiment, ("source", "symbol")),
    "ext.promo": (PromoAnnouncement, ("source", "venue")),
    "venue.order": (VenueOrder, ("venue", "symbol")),
    "venue.answer": (VenueAnswer, ("venue", "symbol")),
    "venue.recon": (Discrepancy, ("venue",)),
    "venue.status": (VenueStatus, ("venue",)),
    "venue.adopt": (VenueAdoption, ("venue",)),
    "venue.kill": (KillSwitch, ()),
}
"""Subject prefix -> the one event type it admits and the payload fields its further tokens
carry, in order (``symbol`` as its ``symbol_token``)."""


def admission_error(subject: str, event: Event) -> str | None:
    """None when ``subject`` admits ``event``, else why not. ``subject`` is without a bus
    namespace prefix. The admitted path is one ``subject_for`` (cached) and one compare."""
    try:
        if subject_for(event) == subject:
            return None
    except SubjectError as exc:
        return refusal(subject, event, exc)
    return refusal(subject, event, None)


def refusal(subject: str, event: Event, error: SubjectError | None = None) -> str:
    """The reason ``subject`` does not admit ``event`` (the slow path: refusals only)."""
    kind = type(event).__name__
    tokens = subject.split(".")
    prefix = ".".join(tokens[:2])
    entry = ADMITS.get(prefix)
    if entry is None:
        prefix = tokens[0]
        entry = ADMITS.get(prefix)
    if entry is None:
        return f"{kind} not admitted on {subject}: not a Keel subject"
    admitted, fields = entry
    if type(event) is not admitted:
        return f"{kind} not admitted on {subject} ({prefix}.* admits {admitted.__name__})"
    values = tokens[len(prefix.split(".")) :]
    if len(values) != len(fields):
        layout = ".".join([prefix, *(f"<{f}>" for f in fields)])
        return f"{kind} not admitted on {subject}: the subject is not {layout}"
    for field, token in zip(fields, values, strict=True):
        value = getattr(event, field)
        if field == "symbol":
            try:
                expected = symbol_token(value)
            except SubjectError:
                expected = None
        else:
            expected = value
        if token != expected:
            return f"subject {field} {token!r} != payload {field} {value!r}"
    if error is not None:
        return f"{kind} cannot form a subject: {error}"
    return f"{kind} not admitted on {subject}"
