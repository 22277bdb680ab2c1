"""What a session left in the log: counts by kind and the latest equity."""

from __future__ import annotations

import msgspec
import nats.errors

from contracts.events import EquitySnapshot, ExecutionReport
from eventstore.bus import Bus, Stored
from eventstore.errors import KeelError
from eventstore.retry import describe


class Tally(msgspec.Struct, frozen=True):
    bars: int
    signals: int
    orders: int
    fills: int
    rejections: int
    dead_letters: int
    equity: EquitySnapshot | None


async def count(bus: Bus, stream: str, subjects: str) -> int:
    info = await bus.js.stream_info(stream, subjects_filter=subjects)
    return sum((info.state.subjects or {}).values())


async def tally(bus: Bus) -> Tally:
    """The counts; one ``KeelError`` line when the server is away or restarting."""
    try:
        return await _tally(bus)
    except (nats.errors.Error, TimeoutError, ConnectionError) as exc:
        raise KeelError(f"cannot read the log: {describe(exc)}") from None


async def _tally(bus: Bus) -> Tally:
    fills = 0
    async for item in bus.read("exec.>", "EXECUTION"):
        if isinstance(item, Stored) and isinstance(item.event, ExecutionReport):
            fills += item.event.fill_qty > 0
    last = await bus.last_event("PORTFOLIO", "pf.equity")
    equity = last.event if last and isinstance(last.event, EquitySnapshot) else None
    return Tally(
        bars=await count(bus, "MARKET", "md.bar.>"),
        signals=await count(bus, "SIGNALS", "sig.>"),
        orders=await count(bus, "ORDERS", "ord.cmd.>"),
        fills=fills,
        rejections=await count(bus, "ORDERS", "ord.risk.>"),
        dead_letters=await count(bus, "SYSTEM", "sys.dlq.>"),
        equity=equity,
    )
