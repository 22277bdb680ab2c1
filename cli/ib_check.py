"""``keel venue check NAME`` for an ib venue: IB Gateway or TWS answers, serves the account,
knows the contracts, and gives historical bars.

The probe connects with ``client_id + 2`` (the gateway uses ``client_id``, the feed
``client_id + 1``), so a check never knocks a running worker off (326). Every failure is
one line; nothing prints a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from ib_async import IB

from cli.venue_commands import CheckRow
from contracts.intervals import IntervalError, interval_ns
from eventstore.errors import KeelError
from services.config import MarketConfig
from services.marketdata.ib.history import bar_size
from services.marketdata.ib.qualify import Qualified, choose, qualify
from services.venues.config import VenueConfig
from services.venues.ib.settings import IbSettings, check_accounts

NS = 1_000_000_000
PROBE_ID_OFFSET = 2


async def check_ib(
    venue: VenueConfig, market: MarketConfig | None, timeout_s: float, max_skew_ms: float
) -> list[CheckRow]:
    settings = venue.ib
    if settings is None:
        raise KeelError(f'venue {venue.name}: kind = "ib" needs an ib table')
    client_id = settings.client_id + PROBE_ID_OFFSET
    rows = [
        CheckRow(
            "entry", "ok", f"IB at {settings.host}:{settings.port}, probe client id {client_id}"
        )
    ]
    ib = IB()
    try:
        started = time.perf_counter()
        try:
            await ib.connectAsync(
                settings.host, settings.port, clientId=client_id, timeout=timeout_s
            )
        except (OSError, TimeoutError, ConnectionError) as exc:
            rows.append(CheckRow("connect", "FAIL", _line(exc) or "no answer"))
            rows += [CheckRow(c, "-", "not run: not connected") for c in _AFTER_CONNECT]
            return rows
        took = (time.perf_counter() - started) * 1000
        version = ib.client.serverVersion()
        rows.append(CheckRow("connect", "ok", f"server version {version}, {took:.0f} ms"))
        rows.append(_accounts(settings, ib))
        rows.append(await _clock(ib, timeout_s, max_skew_ms))
        found, row = await _contracts(ib, venue, market, timeout_s)
        rows.append(row)
        interval = market.interval if market else "1m"
        step = _interval_ns(interval)
        size = bar_size(step) if step else None
        rows.append(
            CheckRow("interval", "ok", f"{interval} from IB's {size} bars")
            if size
            else CheckRow("interval", "FAIL", f"{interval}: IB's bars go from 5 s to 8 h")
        )
        rows.append(await _history(ib, found, timeout_s))
    finally:
        ib.disconnect()
    rows.append(CheckRow("credentials", "n/a", "none: the login is IB Gateway's or TWS's"))
    return rows


_AFTER_CONNECT = ("accounts", "clock", "contracts", "interval", "history")


def _accounts(settings: IbSettings, ib: IB) -> CheckRow:
    managed = tuple(ib.managedAccounts())
    problem = check_accounts(settings, managed)
    if problem:
        return CheckRow("accounts", "FAIL", problem)
    named = f"{settings.account} among " if settings.account else ""
    return CheckRow("accounts", "ok", f"{named}{len(managed)} served")


async def _clock(ib: IB, timeout_s: float, max_skew_ms: float) -> CheckRow:
    try:
        async with asyncio.timeout(timeout_s):
            theirs = await ib.reqCurrentTimeAsync()
    except (TimeoutError, ConnectionError) as exc:
        return CheckRow("clock", "FAIL", _line(exc) or "no answer")
    # IB answers in whole seconds: a second of skew is its resolution, not ours.
    skew_ms = theirs.timestamp() * 1000 - time.time() * 1000
    outcome = "ok" if abs(skew_ms) <= max_skew_ms + 1000 else "FAIL"
    return CheckRow("clock", outcome, f"skew {skew_ms:+.0f} ms (IB gives whole seconds)")


async def _contracts(
    ib: IB, venue: VenueConfig, market: MarketConfig | None, timeout_s: float
) -> tuple[list[Qualified], CheckRow]:
    assert venue.ib is not None
    specs = venue.ib.contracts
    try:
        if market is not None:
            specs = tuple(choose(venue.name, specs, market.symbols))
        found = []
        for s in specs:
            async with asyncio.timeout(timeout_s):
                found.append(await qualify(ib, venue.name, s, time.time_ns()))
    except (KeelError, TimeoutError, ConnectionError) as exc:
        return [], CheckRow("contracts", "FAIL", _line(exc) or "no answer")
    names = ", ".join(f"{q.symbol} ({q.contract.localSymbol} {q.contract.conId})" for q in found)
    return found, CheckRow("contracts", "ok", f"{len(found)} qualified: {names}")


async def _history(ib: IB, found: list[Qualified], timeout_s: float) -> CheckRow:
    if not found:
        return CheckRow("history", "-", "not run: no contract qualified")
    first = found[0]
    errors: list[str] = []

    def on_error(req_id: int, code: int, message: str, contract: object) -> None:
        if req_id > 0:
            errors.append(f"{code} {message}")

    ib.errorEvent += on_error
    try:
        bars = await ib.reqHistoricalDataAsync(
            first.contract, "", "1800 S", "1 min", first.show, False, 2, timeout=timeout_s
        )
    except ConnectionError as exc:
        return CheckRow("history", "FAIL", _line(exc))
    finally:
        ib.errorEvent -= on_error
    if errors:
        return CheckRow("history", "FAIL", f"{first.symbol}: {errors[0]}")
    if not bars:
        return CheckRow("history", "ok", f"{first.symbol}: no bars in the last 30 min (closed?)")
    return CheckRow("history", "ok", f"{first.symbol}: {len(bars)} 1-min bars of the last 30 min")


def _interval_ns(interval: str) -> int:
    with contextlib.suppress(IntervalError):
        return interval_ns(interval)
    return 0


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
