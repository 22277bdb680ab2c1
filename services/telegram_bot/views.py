"""What the bot reads from the log for its answers (the I/O side of ``answers``)."""

from __future__ import annotations

from datetime import date

from contracts.events import EquitySnapshot, ExecutionReport, PositionChanged, StrategyPnL
from eventstore.bus import Bus
from eventstore.log_reader import last_or_none, last_per_subject, since
from services.fleet_status import StatusReport, collect
from services.reports.daily import DailyReport, day_window
from services.reports.daily_read import read_day


class LogViews:
    def __init__(self, bus: Bus, orders_lookback_h: float) -> None:
        self.bus = bus
        self.orders_lookback_ns = int(orders_lookback_h * 3600 * 1e9)

    async def status(self, now_ns: int) -> StatusReport:
        return await collect(self.bus, now_ns=now_ns)

    async def equity(self) -> EquitySnapshot | None:
        item = await last_or_none(self.bus, "PORTFOLIO", "pf.equity")
        return item.event if item is not None and isinstance(item.event, EquitySnapshot) else None

    async def strategies(self) -> list[StrategyPnL]:
        items = await last_per_subject(self.bus, "PORTFOLIO", "pf.pnl.>")
        return [i.event for i in items if isinstance(i.event, StrategyPnL)]

    async def positions(self) -> list[PositionChanged]:
        items = await last_per_subject(self.bus, "PORTFOLIO", "pf.position.>")
        return [i.event for i in items if isinstance(i.event, PositionChanged)]

    async def reports(self, now_ns: int) -> list[ExecutionReport]:
        """Execution reports stored in the lookback: an order working since before it is
        not shown (``orders_lookback_h``)."""
        start = now_ns - self.orders_lookback_ns
        items = await since(self.bus, "EXECUTION", "exec.report.>", start)
        return [i.event for i in items if isinstance(i.event, ExecutionReport)]

    async def daily(self, day: date, timezone: str) -> DailyReport:
        return await read_day(self.bus, day_window(day, timezone))
