"""The calibration worker: a calibration file's changes as ``ParamsTuned`` events on the log.

``keel run calibration --strategy INSTANCE --file PATH`` watches the file on its own clock:
every ``every_s`` seconds it compares the file's modification time and size with the last
read, and when they changed it reads the file and publishes one ``ParamsTuned`` per value
that changed, on ``gov.tune.<instance>.<symbol>`` (the ``*`` entry as symbol ``*``, subject
token ``_2A``). Its first read publishes every value the file sets, so the log holds what is
in force from the start; setting a value the strategy already has changes nothing.

A symbol entry that appears is published whole (the strategy then keeps an entry of its
own for it); a symbol entry that disappears is published as the ``*`` values it falls back
to, which the symbol then keeps as its own. A bad or missing file keeps what is in force
and logs one warning line.

Each event's time is the file's modification time and its id derives from the event
(``contracts/envelope.py`` ``tuning_envelope``), so a restarted worker that publishes the
same change again is de-duplicated by JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from contracts.envelope import tuning_envelope
from contracts.events import ParamsTuned
from eventstore.bus import Bus
from services.strategy.calibration_file import CalibrationError, read_calibrations
from strategies.ma_hmm import DEFAULT_ENTRY, TUNABLE, Calibration, Calibrations

log = logging.getLogger("keel.calibration")


def tuning_events(
    strategy: str, before: Calibrations, after: Calibrations, ts: int, reason: str
) -> list[ParamsTuned]:
    """The events that move ``strategy`` from ``before`` to ``after``: the ``*`` entry's
    changes first, then each symbol's, in symbol order."""
    changes: list[tuple[str, Calibration, Calibration, bool]] = [
        (DEFAULT_ENTRY, before.default, after.default, False)
    ]
    for symbol in sorted(before.symbols.keys() | after.symbols.keys()):
        added = symbol not in before.symbols
        old = after.default if added else before.symbols[symbol]
        changes.append((symbol, old, after.of(symbol), added))
    return [
        ParamsTuned(
            ts=ts,
            strategy=strategy,
            symbol=symbol,
            param=param,
            old=getattr(old, param),
            new=getattr(new, param),
            reason=reason,
        )
        for symbol, old, new, whole in changes
        for param in TUNABLE
        if whole or getattr(old, param) != getattr(new, param)
    ]


class CalibrationWatch:
    """A calibration file as last read, and what it set."""

    def __init__(self, strategy: str, path: Path) -> None:
        self.strategy = strategy
        self.path = path
        self.in_force = Calibrations()
        self._stamp: tuple[int, int] | None = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def poll(self) -> list[ParamsTuned]:
        """The events for what changed since the last read (none when nothing did)."""
        stamp = self._stat()
        if stamp == self._stamp:
            return []
        self._stamp = stamp
        if stamp is None:
            log.warning("calibration %s is gone; keeping the calibrations in force", self.path)
            return []
        try:
            after = read_calibrations(self.path)
        except CalibrationError as exc:
            log.warning("%s; keeping the calibrations in force", exc)
            return []
        reason = f"calibration {self.path}"
        events = tuning_events(self.strategy, self.in_force, after, stamp[0], reason)
        self.in_force = after
        return events


async def run_calibration(
    bus: Bus, watch: CalibrationWatch, every_s: float, stop: asyncio.Event
) -> None:
    """Poll every ``every_s`` seconds and publish what changed, until ``stop`` is set."""
    producer = f"calibration-{watch.strategy}"
    while not stop.is_set():
        for event in watch.poll():
            stored = await bus.publish(event, tuning_envelope(event), producer)
            log.info(
                "%s %s %s=%g%s",
                watch.strategy,
                event.symbol,
                event.param,
                event.new,
                "" if stored else " (already on the log)",
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every_s):
                await stop.wait()


async def serve_calibration(url: str, watch: CalibrationWatch, every_s: float) -> None:
    """The worker's process: connect, then run until SIGTERM or Ctrl-C."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    bus = await Bus.connect(url, name=f"calibration-{watch.strategy}")
    try:
        await run_calibration(bus, watch, every_s, stop)
    finally:
        await bus.close()
