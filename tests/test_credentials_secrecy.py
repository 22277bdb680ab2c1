"""Credentials never leave a process in clear. With distinctive secret strings in the
environment and named by the venue entry: ``keel venue check`` against fakes that fail some
requests (and, for Bybit, a signed private request made with the key) prints none and writes
none to a file; a ccxt exception whose text quotes the key (an endpoint echoing the request)
is logged with the key hidden by ``build_exchange``'s ``Redactor``; the live marketdata
session (REST errors, malformed frames, a drop) logs none, DEBUG included, and stores none;
and ``keel up`` on the Binance fake shows none in its output, its workers' logs, any stored
message of any stream or any worker's metrics."""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import ccxt
import pytest
from aiohttp import web
from nats.js.api import StreamInfo
from prometheus_client import REGISTRY, generate_latest

from contracts.system_events import Heartbeat
from eventstore.bus import Bus
from eventstore.log_reader import last_per_subject, read_until
from eventstore.server import EmbeddedServer
from services.config import MarketConfig
from services.marketdata.live.session import LiveSession
from services.venues.ccxt_exchange import Redactor, build_exchange, read_secrets, redact_logs
from services.venues.config import Credentials, VenueConfig
from tests.conftest import keel
from tests.fakes.clock import ScaledClock
from tests.fakes.core import default_symbols, start_fake
from tests.test_cli import table_row
from tests.test_live_up import STEP, live_toml, wait_for
from tests.test_venue_check import NO_SERVER, write_config
from tests.up_process import start_up, stop_up

SECRETS = {
    "KEEL_SECRECY_API_KEY": "kEy-0f1e2d3c4b5a-SHOULD-NEVER-SHOW",
    "KEEL_SECRECY_SECRET": "sEcReT-9a8b7c6d5e4f-SHOULD-NEVER-SHOW",
    "KEEL_SECRECY_PASSWORD": "pAsS-77aa88bb-SHOULD-NEVER-SHOW",
}
CREDENTIALS = {
    "api_key_env": "KEEL_SECRECY_API_KEY",
    "secret_env": "KEEL_SECRECY_SECRET",
    "password_env": "KEEL_SECRECY_PASSWORD",
}


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return SECRETS


def leaks(text: str) -> list[str]:
    """The secret values (or a long piece of one) found in ``text``."""
    return [v for v in SECRETS.values() if v in text or v[:16] in text]


def files_with_secrets(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and leaks(p.read_bytes().decode("latin-1"))]


@pytest.mark.parametrize("exchange_id", ["binance", "bybit"])
async def test_venue_check_never_shows_a_secret(
    exchange_id: str, secret_env: dict[str, str], tmp_path: Path
) -> None:
    """Binance: the first three REST answers are 503, 429 and 500. Bybit: with a key, its
    ``load_markets`` makes a signed private request (the key in a header), which the fake
    refuses; the failure's text is shown."""
    clock = ScaledClock(time.time_ns(), 1.0)
    symbols = default_symbols(exchange_id, 2)
    fake = await start_fake(exchange_id, symbols, clock, updates_per_bar=60)
    try:
        if exchange_id == "binance":
            fake.faults.http_errors.extend([503, 429, 500])
        config = write_config(
            tmp_path / "live.json", fake, [symbols[0].symbol], credentials=CREDENTIALS
        )
        result = await asyncio.to_thread(
            keel,
            NO_SERVER,
            "venue",
            "check",
            "x",
            "--config",
            str(config),
            "--timeout",
            "10",
            cwd=tmp_path,
        )
    finally:
        await fake.stop()
    both = result.stdout + result.stderr
    assert result.returncode == 1, both  # some request failed
    assert "Traceback" not in both
    for field, env in (("api_key", "API_KEY"), ("secret", "SECRET"), ("password", "PASSWORD")):
        row = table_row(result.stdout, f"credential {field}")
        assert row[1:] == ["ok", f"present (from $KEEL_SECRECY_{env})"], both
    failed = [r for r in ("REST reachable", "markets loaded") if "FAIL" in table_row(both, r)]
    assert failed, both  # the failures' texts are on screen
    assert not leaks(both), both
    assert not files_with_secrets(tmp_path)


async def echo(request: web.Request) -> web.Response:
    """An endpoint that quotes the request back in its error, headers included (some
    gateways do): the worst case for a secret in an exception's text."""
    lines = [f"{request.method} {request.path_qs}"]
    lines += [f"{k}: {v}" for k, v in request.headers.items()]
    return web.json_response({"error": "\n".join(lines)}, status=400)


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_the_redactor_hides_the_key_in_a_logged_ccxt_exception(
    secret_env: dict[str, str], echo_url: str
) -> None:
    clock = ScaledClock(time.time_ns(), 1.0)
    fake = await start_fake("binance", default_symbols("binance", 2), clock)
    entry = fake.venue_entry("x")
    entry["urls"]["api"]["private"] = f"{echo_url}/api/v3"  # markets from the fake
    venue = VenueConfig(
        **{**entry, "credentials": Credentials(**CREDENTIALS)},  # type: ignore[arg-type]
    )
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    root = logging.getLogger()
    root.addHandler(handler)
    secrets = read_secrets(venue)
    redactor = redact_logs(secrets)
    exchange = build_exchange(venue, secrets)
    log = logging.getLogger("keel.test.venue")
    try:
        with pytest.raises(ccxt.BaseError) as caught:
            await exchange.fetch_balance()
        text = str(caught.value)
        assert SECRETS["KEEL_SECRECY_API_KEY"] in text  # the echo did quote the key
        log.warning("fetch_balance failed: %s", caught.value)
        try:
            raise RuntimeError("wrapped") from caught.value
        except RuntimeError:
            log.exception("while checking %s", SECRETS["KEEL_SECRECY_SECRET"])
    finally:
        await exchange.close()
        await fake.stop()
        for h in root.handlers:
            h.removeFilter(redactor)
        root.removeHandler(handler)
    logged = captured.getvalue()
    assert "fetch_balance failed: " in logged
    assert "X-MBX-APIKEY: ***" in logged  # the header's line, the value hidden
    assert "while checking ***" in logged
    assert "Traceback" in logged  # the exception's text went through the filter too
    assert not leaks(logged), logged
    assert redactor.redact(text) != text
    assert not leaks(redactor.redact(text))


async def stored_texts(bus: Bus) -> dict[str, str]:
    """Every message of every stream (payload and headers), by stream."""
    texts: dict[str, str] = {}
    async for info in _streams(bus):
        name, last = info.config.name, info.state.last_seq
        parts: list[str] = []
        async for msg in read_until(bus.js, name, last, idle_s=5.0, stalled=f"{name} stalled"):
            parts.append(msg.subject)
            parts.append(msg.data.decode("latin-1"))
            parts.extend(f"{k}: {v}" for k, v in (msg.headers or {}).items())
        texts[name] = "\n".join(parts)
    return texts


async def _streams(bus: Bus) -> AsyncIterator[StreamInfo]:
    for info in await bus.js.streams_info():
        yield info


async def test_a_live_session_never_stores_or_logs_a_secret(
    secret_env: dict[str, str], bus: Bus
) -> None:
    """The live marketdata session on the Binance fake with every secret named: REST errors
    while loading markets (backoff), malformed frames (dead letters) and a dropped socket
    (reconnect, backfill). Nothing it logs or stores holds a secret."""
    clock = ScaledClock(time.time_ns(), 60.0)
    symbols = default_symbols("binance", 2)
    fake = await start_fake("binance", symbols, clock)
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    venue = VenueConfig(
        **{**fake.venue_entry("x"), "credentials": Credentials(**CREDENTIALS)},  # type: ignore[arg-type]
    )
    market = MarketConfig(
        venue="x",
        symbols=tuple(s.symbol for s in symbols),
        trades=True,
        quotes=True,
        stall_grace_s=5.0,
        lockstep=False,
    )
    session = LiveSession(bus, venue, market, clock, backfill_bars=5)
    try:
        fake.faults.http_errors.extend([503, 429, 500])
        running = asyncio.create_task(session.run())
        await clock.sleep(90)
        fake.faults.malformed = 2
        await clock.sleep(60)
        fake.faults.drop()
        await clock.sleep(120)
        session.stop()
        result = await asyncio.wait_for(running, 30)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        await fake.stop()
    logged = captured.getvalue()
    assert result.bars > 0, logged
    assert result.dead_letters > 0, logged
    assert "Service Unavailable" in logged or "503" in logged, logged
    assert not leaks(logged), logged
    stored = await stored_texts(bus)
    assert "md.bar.x." in stored["MARKET"]
    assert "sys.dlq." in stored["SYSTEM"]
    for stream, text in stored.items():
        assert not leaks(text), stream
    metrics = generate_latest(REGISTRY).decode()
    assert not leaks(metrics)


async def metrics_texts(bus: Bus) -> dict[str, str]:
    """The /metrics text of every worker that announced a metrics port in its heartbeat."""
    beats = await last_per_subject(bus, "SYSTEM", "sys.heartbeat.>")
    ports = {
        b.event.worker: b.event.metrics_port
        for b in beats
        if isinstance(b.event, Heartbeat) and b.event.metrics_port
    }
    texts: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        for worker, port in ports.items():
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                texts[worker] = await response.text()
    return texts


async def test_keel_up_on_a_venue_never_shows_a_secret(
    secret_env: dict[str, str], tmp_path: Path, nats_server: EmbeddedServer, bus: Bus
) -> None:
    """The fleet on the Binance fake with every secret named, the first REST answers 503,
    429 and 500, then malformed frames: its output, the workers' logs under .keel/logs, every
    stored message and every worker's metrics hold no secret."""
    clock = ScaledClock((time.time_ns() // STEP) * STEP, 60.0)
    specs = default_symbols("binance", 2)
    fake = await start_fake("binance", specs, clock)
    fake.faults.http_errors.extend([503, 429, 500])
    entry = {**fake.venue_entry("fx"), "credentials": CREDENTIALS}
    config = tmp_path / "live.toml"
    config.write_text(live_toml(entry, [s.symbol for s in specs]))
    up = await start_up(tmp_path, nats_server.url, clock, config)
    try:
        await wait_for(bus, "md.bar.fx.>", "MARKET", "live bars", 90)
        fake.faults.malformed = 3
        await wait_for(bus, "sys.dlq.>", "SYSTEM", "a dead letter", 30)
        await wait_for(bus, "sig.>", "SIGNALS", "a signal", 40)
        metrics = await metrics_texts(bus)
        up.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(up.communicate(), 60)
    finally:
        await stop_up(up)
        await fake.stop()
    text = output.decode(errors="replace")
    assert up.returncode == 0, text
    assert not leaks(text), text
    logs = tmp_path / ".keel" / "logs"
    feed_log = (logs / "marketdata.log").read_text()
    assert "503" in feed_log  # the failed requests were logged, with their text
    assert not files_with_secrets(tmp_path)
    stored = await stored_texts(bus)
    assert "md.bar.fx." in stored["MARKET"]
    for stream, stored_text in stored.items():
        assert not leaks(stored_text), stream
    assert {"risk", "execution", "portfolio"} <= set(metrics), metrics.keys()
    for worker, metrics_text in metrics.items():
        assert "# TYPE" in metrics_text
        assert not leaks(metrics_text), worker


def test_a_traceback_another_handler_formatted_first_is_redacted_too() -> None:
    secret = "s3cr3t-value-never-shown"
    first, second = io.StringIO(), io.StringIO()
    log = logging.getLogger("keel.test.two_handlers")
    log.propagate = False
    early, late = logging.StreamHandler(first), logging.StreamHandler(second)
    early.addFilter(Redactor({"other": "unrelated-secret"}))  # formats the traceback first
    late.addFilter(Redactor({"secret": secret}))
    log.addHandler(early)
    log.addHandler(late)
    try:
        try:
            raise RuntimeError(f"boom {secret}")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(early)
        log.removeHandler(late)
    assert "boom ***" in second.getvalue() and secret not in second.getvalue()
