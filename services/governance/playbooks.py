"""Playbooks: configured rules that act on what governance sees, as pure deciders.

Each rule is ``(rule, state, input, now) -> (state, actions)``; ``step`` runs every rule on
one input. An action names its rule, carries the numbers that triggered it and a reason, and
its id derives from the input's id and the rule's name, so a re-published action is
de-duplicated by the bus. ``step`` remembers the ids of the last ``remember`` inputs and
ignores one it has seen: a redelivered input gives no second action. State is made of
frozen structs, replaced on every step, so it snapshots with ``msgspec`` as it is.

The rules (docs/governance.md, "Playbooks"):

- drawdown: ``(peak - equity) / peak >= max_drawdown`` scales every budget by ``scale``,
  latched; it is released (factor 1) once the drawdown is below ``reset_below`` and at least
  ``cooldown`` has passed since it fired, so the scale cannot flap;
- rejections: more than ``max_rejections`` risk rejections of one strategy within
  ``window`` disable it until an enable command (``keel gov enable``) re-enables it;
- daily loss: a day's PnL at or below ``-max_loss`` halts entries until the next midnight
  in ``timezone`` (once per day; the next day trades again).
"""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from typing import Annotated, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta

from contracts.governance_events import (
    Action,
    DisableStrategy,
    EnableStrategy,
    HaltEntries,
    ScaleBudgets,
)
from contracts.intervals import duration_ns

Duration = Annotated[
    str,
    Meta(
        pattern=r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d|w)$",
        description="a duration: 250ms, 90s, 5m, 6h, 1d or 2w",
    ),
]
RuleName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
InputId = Annotated[str, Meta(min_length=1, max_length=512)]
Fraction = Annotated[float, Meta(gt=0, lt=1)]

NS = 1_000_000_000
_S = TypeVar("_S", "DrawdownState", "RejectionState", "DailyLossState")


# Inputs ------------------------------------------------------------------------------------


class EquityUpdate(msgspec.Struct, frozen=True, tag=True, forbid_unknown_fields=True):
    """Account equity and its running peak (from the portfolio's ``pf.*`` events)."""

    id: InputId
    equity: float
    peak: float
    at: int


class RiskRejection(msgspec.Struct, frozen=True, tag=True, forbid_unknown_fields=True):
    """Risk refused one of ``strategy``'s signals."""

    id: InputId
    strategy: str
    reason: str
    at: int


class DailyPnl(msgspec.Struct, frozen=True, tag=True, forbid_unknown_fields=True):
    """The account's PnL since the start of the day (in the rule's time zone), as of ``at``."""

    id: InputId
    pnl: float
    at: int


class EnableCommand(msgspec.Struct, frozen=True, tag=True, forbid_unknown_fields=True):
    """A person re-enables a disabled strategy (``keel gov enable``)."""

    id: InputId
    strategy: str
    by: str
    reason: str
    at: int


PlaybookInput = EquityUpdate | RiskRejection | DailyPnl | EnableCommand


# Configuration -----------------------------------------------------------------------------


class DrawdownRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: RuleName = "drawdown"
    max_drawdown: Fraction = 0.10
    reset_below: Annotated[float, Meta(ge=0, lt=1)] = 0.05
    scale: Annotated[float, Meta(ge=0, lt=1)] = 0.5
    cooldown: Duration = "1h"  # the scale holds at least this long

    def __post_init__(self) -> None:
        _within(self.name, "max_drawdown", self.max_drawdown, 0, 1, low_open=True)
        _within(self.name, "reset_below", self.reset_below, 0, 1)
        _within(self.name, "scale", self.scale, 0, 1)
        if self.reset_below >= self.max_drawdown:
            raise ValueError(
                f"playbook {self.name}: reset_below ({self.reset_below}) must be below "
                f"max_drawdown ({self.max_drawdown}), or the latch could never reset"
            )
        duration_ns(self.cooldown, f"playbook {self.name}: cooldown")

    @property
    def cooldown_ns(self) -> int:
        return duration_ns(self.cooldown)


class RejectionRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: RuleName = "rejections"
    max_rejections: Annotated[int, Meta(ge=0, le=1_000_000)] = 5  # disable on one more
    window: Duration = "15m"
    # Reasons (prefixes) not counted, e.g. the rejections a halt or a kill switch causes.
    exclude_reasons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_rejections < 0:
            raise ValueError(f"playbook {self.name}: max_rejections must be >= 0")
        if duration_ns(self.window, f"playbook {self.name}: window") <= 0:
            raise ValueError(f"playbook {self.name}: window ({self.window!r}) must be > 0")

    @property
    def window_ns(self) -> int:
        return duration_ns(self.window)


class DailyLossRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_loss: Annotated[float, Meta(gt=0)]  # account currency, a positive number
    name: RuleName = "daily_loss"
    timezone: str = "UTC"  # IANA name: where the trading day starts and ends

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_loss) and self.max_loss > 0):
            raise ValueError(f"playbook {self.name}: max_loss must be a finite number > 0")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"playbook {self.name}: timezone {self.timezone!r} is not an IANA time zone"
            ) from exc


class PlaybookConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[governance.playbooks]``: each rule may appear several times (different levels),
    every rule with its own name."""

    drawdown: tuple[DrawdownRule, ...] = ()
    rejections: tuple[RejectionRule, ...] = ()
    daily_loss: tuple[DailyLossRule, ...] = ()
    remember: Annotated[int, Meta(ge=1, le=1_000_000)] = 256  # input ids kept for dedup

    def __post_init__(self) -> None:
        names = [r.name for r in (*self.drawdown, *self.rejections, *self.daily_loss)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"playbook names must be unique: {', '.join(twice)} used twice")
        if self.remember < 1:
            raise ValueError("remember must be >= 1")


def _within(
    name: str, key: str, value: float, low: float, high: float, low_open: bool = False
) -> None:
    """Meta bounds are checked on decoding only; this covers structs built in code."""
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value < high
    if not ok:
        raise ValueError(f"playbook {name}: {key} ({value}) must be within the range [0, 1)")


# State -------------------------------------------------------------------------------------


class DrawdownState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rule: str
    latched: bool = False
    fired_at: int = 0
    drawdown: float = 0.0  # at the latest update


class StrategyRejections(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    strategy: str
    times: tuple[int, ...] = ()  # rejections within the window (at most max_rejections + 1)
    disabled: bool = False
    disabled_at: int = 0


class RejectionState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rule: str
    strategies: tuple[StrategyRejections, ...] = ()  # by strategy name


class DailyLossState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rule: str
    halted_day: str = ""  # ISO date of the latest halt, in the rule's time zone
    until: int = 0  # end of that halt (ns)


class PlaybookState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seen: tuple[str, ...] = ()  # ids of the latest inputs, oldest first
    drawdown: tuple[DrawdownState, ...] = ()
    rejections: tuple[RejectionState, ...] = ()
    daily_loss: tuple[DailyLossState, ...] = ()


# Rules -------------------------------------------------------------------------------------


def drawdown_rule(
    rule: DrawdownRule, state: DrawdownState, update: EquityUpdate, now: int
) -> tuple[DrawdownState, tuple[ScaleBudgets, ...]]:
    if not (math.isfinite(update.equity) and math.isfinite(update.peak)):
        raise ValueError(f"equity update {update.id}: equity and peak must be finite numbers")
    dd = max(0.0, (update.peak - update.equity) / update.peak) if update.peak > 0 else 0.0
    numbers = f"equity {update.equity:.10g}, peak {update.peak:.10g}"
    if not state.latched and dd >= rule.max_drawdown:
        reason = (
            f"drawdown {dd:.4%} ({numbers}) reached max_drawdown {rule.max_drawdown:.4%}: "
            f"every budget scaled by {rule.scale:g} until the drawdown is below "
            f"{rule.reset_below:.4%} and at least {rule.cooldown} has passed"
        )
        action = _scale(rule, update, now, rule.scale, dd, reason)
        return DrawdownState(rule.name, True, now, dd), (action,)
    held = now - state.fired_at
    if state.latched and dd < rule.reset_below and held >= rule.cooldown_ns:
        reason = (
            f"drawdown {dd:.4%} ({numbers}) is below reset_below {rule.reset_below:.4%} "
            f"{held / NS:g}s after the scale (cooldown {rule.cooldown}): budgets restored"
        )
        action = _scale(rule, update, now, 1.0, dd, reason)
        return DrawdownState(rule.name, False, state.fired_at, dd), (action,)
    return DrawdownState(rule.name, state.latched, state.fired_at, dd), ()


def _scale(
    rule: DrawdownRule, update: EquityUpdate, now: int, factor: float, dd: float, reason: str
) -> ScaleBudgets:
    return ScaleBudgets(
        id=f"{update.id}:{rule.name}",
        rule=rule.name,
        cause_id=update.id,
        at=now,
        factor=factor,
        drawdown=dd,
        max_drawdown=rule.max_drawdown,
        reset_below=rule.reset_below,
        reason=reason,
    )


def rejection_rule(
    rule: RejectionRule,
    state: RejectionState,
    event: RiskRejection | EnableCommand,
    now: int,
) -> tuple[RejectionState, tuple[DisableStrategy | EnableStrategy, ...]]:
    entry = next((s for s in state.strategies if s.strategy == event.strategy), None)
    if isinstance(event, EnableCommand):
        if entry is None or not entry.disabled:
            return state, ()  # nothing this rule disabled: nothing to undo
        action = EnableStrategy(
            id=f"{event.id}:{rule.name}",
            rule=rule.name,
            cause_id=event.id,
            at=now,
            strategy=event.strategy,
            by=event.by,
            reason=(
                f"{event.strategy} re-enabled by {event.by}: {event.reason} "
                f"(disabled by {rule.name} at {entry.disabled_at})"
            ),
        )
        return _put(state, StrategyRejections(event.strategy)), (action,)
    if any(event.reason.startswith(prefix) for prefix in rule.exclude_reasons):
        return state, ()
    if entry is not None and entry.disabled:
        return state, ()  # already disabled: the enable command is what changes it
    horizon = now - rule.window_ns
    times = tuple(t for t in (entry.times if entry else ()) if t > horizon)
    if event.at > horizon:
        times = (*times, event.at)
    if len(times) <= rule.max_rejections:
        return _put(state, StrategyRejections(event.strategy, times)), ()
    action = DisableStrategy(
        id=f"{event.id}:{rule.name}",
        rule=rule.name,
        cause_id=event.id,
        at=now,
        strategy=event.strategy,
        rejections=len(times),
        max_rejections=rule.max_rejections,
        window_ns=rule.window_ns,
        reason=(
            f"{len(times)} risk rejections of {event.strategy} within {rule.window} "
            f"(more than {rule.max_rejections}; latest: {event.reason}): disabled until "
            f"`keel gov enable {event.strategy}`"
        ),
    )
    return _put(state, StrategyRejections(event.strategy, (), True, now)), (action,)


def _put(state: RejectionState, entry: StrategyRejections) -> RejectionState:
    others = [s for s in state.strategies if s.strategy != entry.strategy]
    keep = [*others, entry] if entry.times or entry.disabled else others
    return RejectionState(state.rule, tuple(sorted(keep, key=lambda s: s.strategy)))


def daily_loss_rule(
    rule: DailyLossRule, state: DailyLossState, pnl: DailyPnl, now: int
) -> tuple[DailyLossState, tuple[HaltEntries, ...]]:
    if not math.isfinite(pnl.pnl):
        raise ValueError(f"daily pnl {pnl.id}: pnl must be a finite number")
    day, until = local_day(pnl.at, rule.timezone)
    if pnl.pnl > -rule.max_loss or state.halted_day == day or until <= now:
        return state, ()
    action = HaltEntries(
        id=f"{pnl.id}:{rule.name}",
        rule=rule.name,
        cause_id=pnl.id,
        at=now,
        pnl=pnl.pnl,
        max_loss=rule.max_loss,
        day=day,
        timezone=rule.timezone,
        until=until,
        reason=(
            f"PnL of {day} ({rule.timezone}) is {pnl.pnl:.10g}, a loss at or beyond the "
            f"limit {rule.max_loss:.10g}: entries halted until the next midnight there"
        ),
    )
    return DailyLossState(rule.name, day, until), (action,)


def local_day(at: int, timezone: str) -> tuple[str, int]:
    """The local date of ``at`` (ns) in ``timezone`` and the instant (ns) that date ends.

    A day is not always 24 hours: the end is the next local midnight, found by zoneinfo."""
    zone = ZoneInfo(timezone)
    today: date = datetime.fromtimestamp(at // NS, zone).date()
    midnight = datetime.combine(today + timedelta(days=1), time(0), tzinfo=zone)
    return today.isoformat(), int(midnight.timestamp()) * NS


# All rules on one input ----------------------------------------------------------------------


def step(
    config: PlaybookConfig, state: PlaybookState, event: PlaybookInput, now: int
) -> tuple[PlaybookState, tuple[Action, ...]]:
    """Run every configured rule on ``event``; an input seen before changes nothing."""
    if event.id in state.seen:
        return state, ()
    seen = (*state.seen, event.id)[-config.remember :]
    actions: list[Action] = []
    drawdown, rejections, daily = state.drawdown, state.rejections, state.daily_loss
    if isinstance(event, EquityUpdate):
        new_dd = []
        for rule in config.drawdown:
            old = _find(drawdown, rule.name) or DrawdownState(rule.name)
            new, out = drawdown_rule(rule, old, event, now)
            new_dd.append(new)
            actions.extend(out)
        drawdown = tuple(new_dd)
    elif isinstance(event, RiskRejection | EnableCommand):
        new_rej = []
        for rule in config.rejections:
            old = _find(rejections, rule.name) or RejectionState(rule.name)
            new, out = rejection_rule(rule, old, event, now)
            new_rej.append(new)
            actions.extend(out)
        rejections = tuple(new_rej)
    else:
        new_daily = []
        for rule in config.daily_loss:
            old = _find(daily, rule.name) or DailyLossState(rule.name)
            new, out = daily_loss_rule(rule, old, event, now)
            new_daily.append(new)
            actions.extend(out)
        daily = tuple(new_daily)
    return PlaybookState(seen, drawdown, rejections, daily), tuple(actions)


def _find(states: tuple[_S, ...], name: str) -> _S | None:
    return next((s for s in states if s.rule == name), None)


# What the playbooks' state means now ---------------------------------------------------------


def budget_factor(config: PlaybookConfig, state: PlaybookState) -> float:
    """The multiplier on every budget: the smallest scale of the latched drawdown rules
    (deeper levels win, scales do not compound); 1.0 when none is latched."""
    latched = {s.rule for s in state.drawdown if s.latched}
    return min((r.scale for r in config.drawdown if r.name in latched), default=1.0)


def disabled_strategies(state: PlaybookState) -> frozenset[str]:
    """Strategies some rejection rule disabled and no enable command re-enabled yet."""
    return frozenset(s.strategy for r in state.rejections for s in r.strategies if s.disabled)


def entries_halted(state: PlaybookState, now: int) -> bool:
    """Whether a daily loss rule halts entries at ``now``."""
    return any(now < s.until for s in state.daily_loss)
