"""``[[venues]]`` entries: they load, build ccxt's own exchange with the entry's urls and
options laid over ccxt's, and every bad entry is one line naming the key. Secrets come from
the environment or files and never show in an error or a log line."""

from __future__ import annotations

import logging
from pathlib import Path

import ccxt
import msgspec
import pytest

from eventstore.errors import KeelError
from services.config import load_config
from services.venues.ccxt_exchange import (
    Redactor,
    build_exchange,
    deep_merge,
    read_secrets,
    redact_logs,
)
from services.venues.config import VenueConfig

LIVE = """
[market]
venue = "binance"
symbols = ["BTC/USDT:USDT"]
interval = "1m"
quotes = true
quotes_per_s = 2

[[venues]]
name = "binance"
exchange = "binanceusdm"
urls = { api = { fapiPublic = "http://127.0.0.1:9/fapi/v1" } }
options = { defaultType = "swap", fetchMarkets = { types = ["linear"] } }

[venues.credentials]
api_key_env = "KEEL_TEST_BINANCE_KEY"
secret_file = "binance.secret"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "live.toml"
    path.write_text(text)
    return path


def test_a_live_config_loads_and_names_its_venue(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, LIVE))
    venue = config.venue("binance")
    assert venue is not None and venue.exchange == "binanceusdm"
    assert config.venue("sim") is None
    assert config.market.quotes and config.market.quotes_per_s == 2
    assert venue.credentials.given == ("api_key", "secret")


def test_urls_and_options_are_merged_into_ccxts_own(tmp_path: Path) -> None:
    venue = load_config(write(tmp_path, LIVE)).venue("binance")
    assert venue is not None
    exchange = build_exchange(venue)
    api = exchange.urls["api"]
    assert api["fapiPublic"] == "http://127.0.0.1:9/fapi/v1"
    assert api["fapiPrivate"].startswith("https://")  # ccxt's own, untouched
    assert exchange.options["defaultType"] == "swap"
    assert exchange.options["fetchMarkets"]["types"] == ["linear"]
    assert "recvWindow" in exchange.options  # ccxt's other options kept
    assert exchange.enableRateLimit


def test_options_cannot_switch_the_rate_limiter_off() -> None:
    exchange = build_exchange(VenueConfig(name="b", exchange="bybit", options={"x": 1}))
    assert exchange.enableRateLimit is True


def test_sandbox_and_demo_select_the_exchanges_environments() -> None:
    sandbox = build_exchange(VenueConfig(name="f", exchange="krakenfutures", sandbox=True))
    assert "demo-futures.kraken.com" in sandbox.urls["api"]["public"]
    demo = build_exchange(VenueConfig(name="b", exchange="bybit", demo=True))
    assert "api-demo" in str(demo.urls["api"])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "k", "exchange": "kraken", "sandbox": True}, "venues.k.sandbox: kraken has no"),
        ({"name": "k", "exchange": "kraken", "demo": True}, "venues.k.demo: kraken has no demo"),
        ({"name": "x", "exchange": "nosuchx"}, "venues.x.exchange: 'nosuchx' is not a ccxt"),
    ],
)
def test_an_entry_ccxt_cannot_serve_is_one_line(entry: dict[str, object], message: str) -> None:
    with pytest.raises(KeelError) as error:
        build_exchange(msgspec.convert(entry, VenueConfig))
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[[venues]]\nname = "a.b"\nexchange = "binance"\n', "venues[0]"),
        ('[[venues]]\nname = "b"\n', "venues[0]"),
        ('[[venues]]\nname = "b"\nexchange = "binance"\napi_key = "x"\n', "api_key"),
        ('[[venues]]\nname = "b"\nexchange = "binance"\nsandbox = true\ndemo = true\n', "choose"),
        (
            '[[venues]]\nname = "b"\nexchange = "binance"\n'
            '[venues.credentials]\napi_key_env = "A"\napi_key_file = "f"\n',
            "not both",
        ),
        (
            '[[venues]]\nname = "b"\nexchange = "x"\n[[venues]]\nname = "b"\nexchange = "y"\n',
            "twice",
        ),
        ("[market]\nquotes_per_s = -1\n", "$.market.quotes_per_s"),
        ('[market]\nuniverse = "all"\n', "$.market.universe"),
    ],
)
def test_a_bad_entry_is_one_line_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(KeelError) as error:
        load_config(write(tmp_path, toml))
    assert key in str(error.value)
    assert "\n" not in str(error.value)


def test_secrets_come_from_the_environment_or_a_file_and_never_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "binance.secret").write_text("s3cr3t-from-file\n")
    venue = load_config(write(tmp_path, LIVE)).venue("binance")
    assert venue is not None
    with pytest.raises(KeelError) as missing:
        read_secrets(venue)
    assert "KEEL_TEST_BINANCE_KEY is not set" in str(missing.value)
    monkeypatch.setenv("KEEL_TEST_BINANCE_KEY", "k3y-from-env")
    secrets = read_secrets(venue)
    assert secrets == {"apiKey": "k3y-from-env", "secret": "s3cr3t-from-file"}
    exchange = build_exchange(venue, secrets)
    assert exchange.apiKey == "k3y-from-env"
    assert "k3y-from-env" not in repr(venue) and "s3cr3t" not in repr(venue)
    with pytest.raises(KeelError) as required:
        read_secrets(
            msgspec.structs.replace(venue, credentials=type(venue.credentials)()), ("secret",)
        )
    assert "secret is needed" in str(required.value)


def test_the_redactor_hides_secrets_in_messages_and_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("keel.test.redactor")
    logger.addFilter(Redactor({"apiKey": "k3y-from-env", "secret": "s3cr3t"}))
    with caplog.at_level(logging.INFO, logger="keel.test.redactor"):
        logger.info("request failed: X-MBX-APIKEY %s", "k3y-from-env")
        try:
            raise ccxt.AuthenticationError("binance {'apiKey': 'k3y-from-env', 's': 's3cr3t'}")
        except ccxt.AuthenticationError:
            logger.exception("auth")
    text = caplog.text
    assert "k3y-from-env" not in text and "s3cr3t" not in text
    assert text.count("***") >= 3


def test_deep_merge_lays_tables_over_tables_and_replaces_the_rest() -> None:
    base = {"api": {"public": "a", "private": "b", "ws": {"spot": "c"}}, "x": [1]}
    merged = deep_merge(base, {"api": {"public": "A", "ws": {"spot": "C"}}, "x": [2]})
    assert merged == {"api": {"public": "A", "private": "b", "ws": {"spot": "C"}}, "x": [2]}
    assert base["api"]["public"] == "a"


def test_redact_logs_covers_every_logger_of_the_process(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        redactor = redact_logs({"secret": "s3cr3t-value"})
        logging.getLogger("ccxt.base.exchange").warning("GET /x?signature=s3cr3t-value")
    finally:
        root.removeHandler(handler)
        for other in root.handlers:
            other.removeFilter(redactor)
    err = capsys.readouterr().err
    assert "s3cr3t-value" not in err and "signature=***" in err
