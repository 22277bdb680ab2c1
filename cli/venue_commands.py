"""``keel venue check NAME``: can this machine reach the venue and stream what the config asks?

One screen, one row per check, each bounded by ``--timeout``: the entry builds an exchange,
REST answers (round trip), the local clock agrees with the exchange's, markets load, the
configured symbols are listed and active and the interval offered, a websocket delivers a
frame, the named credentials are present (never shown), and the rate limit ccxt keeps. Wall
time is right here (skew is about the real clock), not the injected ``Clock``. Every failure
is one line of text passed through the venue's ``Redactor``; nothing prints a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import ccxt.pro
import msgspec
import typer
from rich.table import Table
from rich.text import Text

from cli.console import console, load_config_or_exit, run
from eventstore.errors import KeelError
from services.config import KeelConfig, MarketConfig
from services.marketdata.live.instruments import Selection, select_symbols, venue_markets
from services.venues.ccxt_exchange import Redactor, build_exchange, read_secrets, redact_logs
from services.venues.config import Credentials, VenueConfig

app = typer.Typer(
    help="Check a venue entry of the config against its exchange.", no_args_is_help=True
)

Outcome = Literal["ok", "FAIL", "n/a", "-"]
"""``n/a``: the exchange has no such thing (passes); ``-``: not run, an earlier check failed."""
STYLE = {"ok": "bold green", "FAIL": "bold red", "n/a": "dim", "-": "dim"}
DETAIL_CHARS = 200
SHOWN_PROBLEMS = 3
T = TypeVar("T")


class CheckRow(msgspec.Struct, frozen=True):
    check: str
    outcome: Outcome
    detail: str


def credential_rows(venue: VenueConfig) -> tuple[list[CheckRow], dict[str, str]]:
    """A row per secret the entry names ("present" or what is missing, never the value)
    and the secrets that could be read."""
    rows: list[CheckRow] = []
    secrets: dict[str, str] = {}
    for field in venue.credentials.given:
        env = getattr(venue.credentials, f"{field}_env")
        file = getattr(venue.credentials, f"{field}_file")
        alone = msgspec.structs.replace(
            venue,
            credentials=Credentials(**{f"{field}_env": env, f"{field}_file": file}),
        )
        try:
            secrets.update(read_secrets(alone))
        except KeelError:
            missing = f"{env} not set" if env else f"cannot read {file}"
            rows.append(CheckRow(f"credential {field}", "FAIL", f"missing: {missing}"))
            continue
        where = f"from ${env}" if env else f"from {file}"
        rows.append(CheckRow(f"credential {field}", "ok", f"present ({where})"))
    if not rows:
        rows.append(CheckRow("credentials", "n/a", "none named (market data needs none)"))
    return rows, secrets


class VenueProbe:
    """Runs the checks in order against one built exchange, collecting a row for each."""

    def __init__(
        self,
        venue: VenueConfig,
        exchange: ccxt.pro.Exchange,
        redactor: Redactor,
        timeout_s: float,
        max_skew_ms: float,
    ) -> None:
        self.venue = venue
        self.exchange = exchange
        self.redactor = redactor
        self.timeout_s = timeout_s
        self.max_skew_ms = max_skew_ms
        self.rows: list[CheckRow] = []

    def add(self, check: str, outcome: Outcome, detail: str) -> None:
        self.rows.append(CheckRow(check, outcome, detail))

    def reason(self, exc: BaseException) -> str:
        """One line naming what went wrong, secrets hidden, bounded in length."""
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.timeout_s:g} s"
        text = " ".join(str(exc).split()) or "no message"
        text = self.redactor.redact(f"{type(exc).__name__}: {text}")
        return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 1] + "…"

    async def bounded(self, step: Awaitable[T]) -> T:
        async with asyncio.timeout(self.timeout_s):
            return await step

    async def rest_and_skew(self) -> bool:
        """Reachability by ``fetch_time`` (the skew comes with it), else by loading markets."""
        ex = self.exchange
        if not ex.has.get("fetchTime"):
            loaded = await self.markets(reachability=True)
            self.rows.insert(
                1 + next(i for i, r in enumerate(self.rows) if r.check == "REST reachable"),
                CheckRow("clock skew", "n/a", f"{self.venue.exchange} has no server time"),
            )
            return loaded
        start = time.time_ns()
        try:
            server_ms = await self.bounded(ex.fetch_time())
        except Exception as exc:  # any failure is this check's failed row
            self.add("REST reachable", "FAIL", self.reason(exc))
            self.add("clock skew", "-", "not measured: no server time")
            return await self.markets()
        end = time.time_ns()
        self.add("REST reachable", "ok", f"fetch_time round trip {(end - start) / 1e6:.0f} ms")
        if isinstance(server_ms, int | float) and server_ms > 0:
            self.skew(float(server_ms), (start + end) / 2e6)
        else:
            self.add("clock skew", "FAIL", f"server time not a time: {server_ms!r}")
        return await self.markets()

    def skew(self, server_ms: float, local_ms: float) -> None:
        """Exchange minus local time at the request's midpoint. A server time in whole
        seconds (Kraken's) is its second's start: the middle of it is the estimate, and half a
        second more is allowed (a good clock never fails; the odd millisecond answer that
        happens to be whole costs only that allowance)."""
        whole_s = server_ms % 1000 == 0
        skew_ms = server_ms + (500 if whole_s else 0) - local_ms
        allowed = self.max_skew_ms + (500 if whole_s else 0)
        outcome: Outcome = "ok" if abs(skew_ms) <= allowed else "FAIL"
        detail = f"{skew_ms:+.0f} ms (exchange minus local clock; limit ±{self.max_skew_ms:g} ms"
        detail += ", server time in whole seconds: ±500 ms)" if whole_s else ")"
        self.add("clock skew", outcome, detail)

    async def markets(self, reachability: bool = False) -> bool:
        start = time.monotonic()
        try:
            markets = await self.bounded(self.exchange.load_markets())
        except Exception as exc:  # any failure is this check's failed row
            if reachability:
                self.add("REST reachable", "FAIL", self.reason(exc))
            self.add("markets loaded", "FAIL" if not reachability else "-", self.reason(exc))
            return False
        if reachability:
            took = (time.monotonic() - start) * 1e3
            self.add("REST reachable", "ok", f"load_markets {took:.0f} ms")
        active = sum(1 for m in markets.values() if m.get("active") is not False)
        self.add("markets loaded", "ok", f"{len(markets)} markets ({active} active)")
        return True

    def symbols(self, market: MarketConfig | None) -> Selection | None:
        if market is None:
            self.add("symbols", "n/a", f"[market].venue is not {self.venue.name}")
            return None
        ex = self.exchange
        converted, _unreadable = venue_markets(ex.markets, ex.precisionMode)
        selection = select_symbols(converted, market.symbols, market.universe)
        if market.universe:
            n = len(selection.markets)
            outcome: Outcome = "ok" if n else "FAIL"
            self.add("symbols", outcome, f"universe {market.universe}: {n} active markets")
        elif selection.ok:
            n = len(selection.markets)
            self.add("symbols", "ok", f"{n} configured, every one listed and active")
        else:
            problems = selection.problems()
            more = len(problems) - SHOWN_PROBLEMS
            detail = "; ".join(problems[:SHOWN_PROBLEMS]) + (f"; +{more} more" if more > 0 else "")
            self.add("symbols", "FAIL", detail)
        return selection

    def interval(self, market: MarketConfig | None) -> None:
        if market is None:
            self.add("interval", "n/a", "no [market] for this venue")
            return
        ex = self.exchange
        if market.interval in (ex.timeframes or {}):
            self.add("interval", "ok", f"{market.interval} offered")
        elif not ex.has.get("watchOHLCV"):
            self.add(
                "interval", "ok", f"{market.interval} bars built from trades (no kline stream)"
            )
        else:
            offered = ", ".join(ex.timeframes or {}) or "none"
            self.add("interval", "FAIL", f"{market.interval} not offered (offered: {offered})")

    def probe_symbol(self, selection: Selection | None) -> str | None:
        if selection is not None and selection.markets:
            return selection.markets[0].symbol
        active = [s for s, m in self.exchange.markets.items() if m.get("active") is not False]
        return active[0] if active else None

    async def websocket(self, symbol: str | None, interval: str) -> None:
        ex = self.exchange
        if symbol is None:
            self.add("websocket", "-", "no active market to subscribe to")
            return
        if ex.has.get("watchOHLCV"):
            timeframe = interval if interval in (ex.timeframes or {}) else "1m"
            method, step = "watch_ohlcv", ex.watch_ohlcv(symbol, timeframe)
        elif ex.has.get("watchTrades"):
            method, step = "watch_trades", ex.watch_trades(symbol)
        else:
            method, step = "watch_ticker", ex.watch_ticker(symbol)
        start = time.monotonic()
        try:
            await self.bounded(step)
        except Exception as exc:  # any failure is this check's failed row
            self.add("websocket", "FAIL", f"{method} {symbol}: {self.reason(exc)}")
            return
        took = (time.monotonic() - start) * 1e3
        self.add("websocket", "ok", f"{method} {symbol}: first frame in {took:.0f} ms")

    def rate_limit(self) -> None:
        limit = self.exchange.rateLimit
        self.add("rate limit", "ok", f"{limit:g} ms between requests (ccxt's limiter on)")


async def check_venue(
    config: KeelConfig, name: str, timeout_s: float, max_skew_ms: float
) -> list[CheckRow]:
    """Every check's row for the venue ``name``; a bad entry is a ``KeelError`` (one line)."""
    venue = config.venue(name)
    if venue is None:
        names = ", ".join(v.name for v in config.venues) or "none"
        raise KeelError(f"no venue {name!r} in the config (configured: {names})")
    if venue.kind == "ib":
        from cli.ib_check import check_ib  # ib_async only for an ib venue; imports this module

        return await check_ib(
            venue, config.market if config.market.venue == name else None, timeout_s, max_skew_ms
        )
    credentials, secrets = credential_rows(venue)
    redactor = redact_logs(secrets)
    exchange = build_exchange(venue, secrets)
    where = " testnet" if venue.sandbox else " demo" if venue.demo else ""
    probe = VenueProbe(venue, exchange, redactor, timeout_s, max_skew_ms)
    probe.add("entry", "ok", f"ccxt {venue.exchange}{where}")
    market = config.market if config.market.venue == name else None
    try:
        if await probe.rest_and_skew():
            selection = probe.symbols(market)
            probe.interval(market)
            interval = market.interval if market else "1m"
            await probe.websocket(probe.probe_symbol(selection), interval)
        else:
            for check in ("symbols", "interval", "websocket"):
                probe.add(check, "-", "not run: markets not loaded")
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout_s):
                await exchange.close()
    probe.rows += credentials
    probe.rate_limit()
    return probe.rows


def render(name: str, exchange: str, rows: list[CheckRow]) -> Table:
    table = Table("check", "result", "detail", title=f"venue {name} ({exchange})")
    for row in rows:
        table.add_row(row.check, Text(row.outcome, style=STYLE[row.outcome]), Text(row.detail))
    return table


@app.command()
def check(
    name: Annotated[str, typer.Argument(help="The name of a venues entry in the config.")],
    config: Annotated[Path | None, typer.Option("--config", help="Fleet config (TOML).")] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds each check may take.")
    ] = 10.0,
    max_skew_ms: Annotated[
        float,
        typer.Option("--max-skew-ms", min=0, help="Largest clock skew that passes (ms)."),
    ] = 1000.0,
) -> None:
    """Reachability, clock skew, markets, configured symbols and interval, websocket,
    credentials (present or not, never shown) and rate limit; exit 1 if any check fails."""
    loaded = load_config_or_exit(config)
    rows: list[CheckRow] = run(check_venue(loaded, name, timeout, max_skew_ms))
    venue = loaded.venue(name)
    assert venue is not None
    console.print(render(name, venue.exchange, rows))
    failed = sum(row.outcome == "FAIL" for row in rows)
    skipped = sum(row.outcome == "-" for row in rows)
    if failed or skipped:
        summary = f"{failed} of {len(rows)} checks failed" + (
            f", {skipped} not run" if skipped else ""
        )
        console.print(f"[bold red]{summary}[/]", highlight=False)
        raise typer.Exit(1)
    console.print(f"[bold green]all {len(rows)} checks passed[/]", highlight=False)
