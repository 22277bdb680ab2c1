"""The equity rails: the portfolio's equity against the floor, the drawdown from its peak and
the loss since the UTC day's open, hard (halt) and soft (safe mode or degrade).

A hard breach halts trading until a resume (a daily-loss halt also ends with the day) and
cancels risk's working entries, or flattens everything with ``flatten_on_halt``; a soft
breach lasts while the equity is beyond its level. docs/risk.md, Soft and hard breaches.
"""

from __future__ import annotations

from contracts.events import EquitySnapshot, Event, RiskAlert
from contracts.intervals import UNIT_NS
from contracts.system_events import SystemState
from services.risk.book import Book
from services.risk.limits import RiskLimits
from services.risk.state import Condition, EquityTrack, RiskState
from services.risk.status import StatusBoard

DAY_NS = UNIT_NS["d"]


class EquityRails:
    def __init__(
        self, limits: RiskLimits, state: RiskState, status: StatusBoard, book: Book
    ) -> None:
        self.limits = limits
        self.on = limits.equity_rails
        self.state = state
        self.status = status
        self.book = book

    def rearm(self) -> None:
        """After a resume the peak and the day's open restart at the current equity."""
        track = self.state.equity
        if track is not None:
            track.peak = track.day_open = track.equity

    def observe(self, event: EquitySnapshot, now: int) -> list[Event]:
        """Track the equity (sizing reads it too) and act on what crossed a rail."""
        equity = event.equity
        day = event.ts // DAY_NS
        track = self.state.equity
        if track is None:
            track = self.state.equity = EquityTrack(equity, equity, day, equity)
        else:
            if day != track.day:
                track.day_open, track.day = track.equity, day
                self.status.set("halt:max_daily_loss", None)
                self.status.set("soft:soft_daily_loss", None)
            if equity > track.peak:
                track.peak = equity
            track.equity = equity
        if not self.on:
            return []
        lim = self.limits
        drawdown = 100.0 * (track.peak - equity) / track.peak if track.peak > 0 else 0.0
        daily = 100.0 * (track.day_open - equity) / track.day_open if track.day_open > 0 else 0.0
        out: list[Event] = []
        if self.status.halt is None:
            breach: tuple[str, str] | None = None
            if lim.equity_floor is not None and equity < lim.equity_floor:
                breach = "equity_floor", f"equity {equity:.2f} < floor {lim.equity_floor:.2f}"
            elif lim.max_drawdown_pct is not None and drawdown > lim.max_drawdown_pct:
                breach = (
                    "max_drawdown",
                    f"drawdown {drawdown:.2f}% from peak {track.peak:.2f} "
                    f"> max {lim.max_drawdown_pct:g}%",
                )
            elif lim.max_daily_loss_pct is not None and daily > lim.max_daily_loss_pct:
                breach = (
                    "max_daily_loss",
                    f"daily loss {daily:.2f}% from {track.day_open:.2f} "
                    f"> max {lim.max_daily_loss_pct:g}%",
                )
            if breach is not None:
                out.extend(self._hard_breach(*breach, now))
        for rule, level, value, beyond in (
            (
                "soft_equity_floor",
                lim.soft_equity_floor,
                equity,
                equity < (lim.soft_equity_floor or 0),
            ),
            (
                "soft_drawdown",
                lim.soft_drawdown_pct,
                drawdown,
                drawdown > (lim.soft_drawdown_pct or 0),
            ),
            (
                "soft_daily_loss",
                lim.soft_daily_loss_pct,
                daily,
                daily > (lim.soft_daily_loss_pct or 0),
            ),
        ):
            if level is None:
                continue
            name = f"soft:{rule}"
            active = name in self.state.conditions
            if beyond and not active:
                unit = "" if rule == "soft_equity_floor" else "%"
                reason = f"{rule.removeprefix('soft_')} {value:.2f}{unit} beyond soft limit {level:g}{unit}"
                out.extend(self._soft_breach(rule, reason, now))
            elif not beyond and active:
                self.status.set(name, None)
        return out

    def _hard_breach(self, rule: str, reason: str, now: int) -> list[Event]:
        self.status.set(f"halt:{rule}", Condition("HALTED", rule, reason, now))
        flatten = self.limits.flatten_on_halt
        action = "flatten" if flatten else "halt"
        out: list[Event] = [RiskAlert(ts=now, rule=rule, action=action, detail=reason)]
        if flatten:
            out.extend(self.book.flatten(now, lambda market: True))
        else:
            out.extend(self.book.cancel_entries(now))
        return out

    def _soft_breach(self, rule: str, reason: str, now: int) -> list[Event]:
        safe = self.limits.soft_action == "safe_mode"
        status: SystemState = "SAFE_MODE" if safe else "DEGRADED"
        self.status.set(f"soft:{rule}", Condition(status, rule, reason, now))
        out: list[Event] = []
        if safe:
            cancels = self.book.cancel_entries(now)
            out.append(
                RiskAlert(
                    ts=now,
                    rule=rule,
                    action="cancel_entries",
                    detail=f"{reason}: {len(cancels)} working entry orders canceled",
                )
            )
            out.extend(cancels)
        out.append(RiskAlert(ts=now, rule=rule, action="tighten_stops", detail=reason))
        return out
