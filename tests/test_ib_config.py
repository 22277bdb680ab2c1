"""``[[venues]]`` with ``kind = "ib"``: the connection, the account and its mode, the contracts;
every bad entry is one line naming the problem, and ccxt entries are unchanged."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from contracts.subjects import symbol_token, token_symbol
from eventstore.errors import KeelError
from services.config import load_config
from services.venues.config import VenueConfig
from services.venues.ib.settings import IbSettings, check_accounts, is_paper_account
from services.venues.ib.specs import FutureSpec, FxSpec, StockSpec

IB = """
[market]
venue = "ibkr"
symbols = ["BRK B", "ES", "EUR/USD"]
interval = "1m"

[[venues]]
name = "ibkr"
kind = "ib"
mode = "demo"

[venues.ib]
host = "127.0.0.1"
port = 4002
client_id = 17
account = "DU1234567"
connect_timeout_s = 5

[[venues.ib.contracts]]
type = "stock"
symbol = "BRK B"
primary_exchange = "NYSE"

[[venues.ib.contracts]]
type = "future"
root = "ES"
exchange = "CME"
expiry = "front"
roll_days = 8

[[venues.ib.contracts]]
type = "future"
root = "MES"
exchange = "CME"
expiry = "202612"

[[venues.ib.contracts]]
type = "fx"
pair = "EUR.USD"
"""

STOCK = '[[venues.ib.contracts]]\ntype = "stock"\nsymbol = "AAPL"\nprimary_exchange = "NASDAQ"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ib.toml"
    path.write_text(text)
    return path


def entry(venue: str = "", ib: str = "", contracts: str = STOCK) -> str:
    return f'[[venues]]\nname = "ibkr"\nkind = "ib"\n{venue}\n[venues.ib]\n{ib}\n{contracts}'


def test_an_ib_venue_loads_with_its_contracts_and_keel_symbols(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, IB))
    venue = config.venue("ibkr")
    assert venue is not None and venue.kind == "ib" and venue.ib is not None
    assert venue.exchange == "ib"  # filled in: meaningless for IB, never a ccxt id
    ib = venue.ib
    assert (ib.host, ib.port, ib.client_id, ib.account) == ("127.0.0.1", 4002, 17, "DU1234567")
    assert ib.connect_timeout_s == 5.0 and ib.paper_account
    assert [c.name for c in ib.contracts] == ["BRK B", "ES", "MES 202612", "EUR/USD"]
    stock, front, dated, fx = ib.contracts
    assert isinstance(stock, StockSpec) and stock.exchange == "SMART" and stock.currency == "USD"
    assert isinstance(front, FutureSpec) and front.continuous and front.roll_days == 8
    assert isinstance(dated, FutureSpec) and not dated.continuous
    assert isinstance(fx, FxSpec) and (fx.base, fx.quote, fx.exchange) == ("EUR", "USD", "IDEALPRO")
    assert config.gateways == frozenset({"ibkr"})  # demo: IB's paper account, by a gateway
    assert ib.spec("ES") is front and ib.spec("ESZ6") is None
    # Symbols become subject tokens with the one mapping every venue uses, and back.
    assert [symbol_token(c.name) for c in ib.contracts] == [
        "BRK_20B",
        "ES",
        "MES_20202612",
        "EUR-USD",
    ]
    assert [token_symbol(symbol_token(c.name)) for c in ib.contracts] == [
        c.name for c in ib.contracts
    ]


def test_defaults_are_ib_gateways_paper_port_and_keels_paper_venue(tmp_path: Path) -> None:
    venue = load_config(write(tmp_path, entry())).venues[0]
    assert venue.ib is not None
    assert (venue.ib.host, venue.ib.port, venue.ib.client_id) == ("127.0.0.1", 4002, 1)
    assert venue.ib.account == "" and venue.mode == "paper" and not venue.gateway_mode


@pytest.mark.parametrize(
    ("venue", "ib", "message"),
    [
        (
            'mode = "demo"',
            'account = "U7654321"',
            "'U7654321' is not one (paper ids start with DU)",
        ),
        ('mode = "demo"', "", 'mode = "demo" sends orders to IB: ib.account must name'),
        ('mode = "live"\nlive = true', 'account = "DU1234567"\nport = 4001', "is a paper account"),
        ('mode = "live"', 'account = "U7654321"\nport = 4001', "it also needs live = true"),
        (
            'mode = "live"\nlive = true',
            'account = "U7654321"',
            "port 4002 is where IB listens for paper",
        ),
        (
            'mode = "demo"',
            'account = "DU1234567"\nport = 7496',
            "port 7496 is where IB listens for live",
        ),
        ("live = true", "", 'live = true only goes with mode = "live"'),
        ('mode = "sandbox"', "", "IB has no sandbox"),
        ("sandbox = true", "", "sandbox is for ccxt venues"),
        ("urls = { api = 'x' }", "", "urls is for ccxt venues"),
        ('exchange = "binance"', "", 'an ib venue\'s exchange is "ib"'),
        ("", "port = 0", "$.venues[0].ib.port"),
        ("", "client_id = -1", "$.venues[0].ib.client_id"),
        ("", "connect_timeout_s = 0", "$.venues[0].ib.connect_timeout_s"),
        ("", 'account = "DU 1"', "$.venues[0].ib.account"),
        ("", "hostname = 'x'", "hostname"),
    ],
)
def test_a_bad_ib_entry_is_one_line(tmp_path: Path, venue: str, ib: str, message: str) -> None:
    with pytest.raises(KeelError) as error:
        load_config(write(tmp_path, entry(venue, ib)))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_credentials_are_refused_for_ib(tmp_path: Path) -> None:
    text = entry() + '[venues.credentials]\napi_key_env = "X"\n'
    with pytest.raises(KeelError) as error:
        load_config(write(tmp_path, text))
    assert "credentials is for ccxt venues" in str(error.value)


@pytest.mark.parametrize(
    ("contracts", "message"),
    [
        ("", "needs an ib table with [[venues.ib.contracts]]"),
        ('[[venues.ib.contracts]]\ntype = "stock"\nsymbol = "AAPL"\n', "primary_exchange"),
        ('[[venues.ib.contracts]]\ntype = "bond"\nsymbol = "T"\n', "Invalid value 'bond'"),
        (
            '[[venues.ib.contracts]]\ntype = "future"\nroot = "ES"\nexchange = "CME"\n'
            'expiry = "front"\n',
            "expiry = 'front' needs roll_days",
        ),
        (
            '[[venues.ib.contracts]]\ntype = "future"\nroot = "ES"\nexchange = "CME"\n'
            'expiry = "202613"\n',
            "must be YYYYMM, YYYYMMDD or 'front'",
        ),
        (
            '[[venues.ib.contracts]]\ntype = "future"\nroot = "ES"\nexchange = "CME"\n'
            'expiry = "20261231"\nroll_days = 3\n',
            "roll_days only goes with expiry = 'front'",
        ),
        ('[[venues.ib.contracts]]\ntype = "fx"\npair = "EURUSD"\n', "BASE.QUOTE"),
        ('[[venues.ib.contracts]]\ntype = "fx"\npair = "USD.USD"\n', "two different"),
        (
            STOCK + '[[venues.ib.contracts]]\ntype = "stock"\nsymbol = "AAPL"\n'
            'primary_exchange = "NYSE"\n',
            "Keel symbol 'AAPL' is used twice",
        ),
    ],
)
def test_a_bad_contract_is_one_line(tmp_path: Path, contracts: str, message: str) -> None:
    text = entry(contracts=contracts) if contracts else '[[venues]]\nname = "i"\nkind = "ib"\n'
    with pytest.raises(KeelError) as error:
        load_config(write(tmp_path, text))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_an_ib_table_on_a_ccxt_venue_is_refused_and_ccxt_entries_are_unchanged() -> None:
    with pytest.raises(msgspec.ValidationError, match='an ib table needs kind = "ib"'):
        msgspec.convert({"name": "b", "exchange": "binance", "ib": {"contracts": []}}, VenueConfig)
    with pytest.raises(msgspec.ValidationError, match="exchange must name a ccxt exchange id"):
        msgspec.convert({"name": "b"}, VenueConfig)
    ccxt = msgspec.convert(
        {"name": "b", "exchange": "bybit", "demo": True, "mode": "demo"}, VenueConfig
    )
    assert ccxt.kind == "ccxt" and ccxt.exchange == "bybit" and ccxt.ib is None


def test_the_connected_session_must_serve_the_configured_account() -> None:
    settings = IbSettings(account="DU1234567")
    assert check_accounts(settings, ("DU1234567", "DU7654321")) == ""
    assert check_accounts(settings, ("U1",)) == (
        "account DU1234567 is not served by this IB session (it serves U1)"
    )
    assert check_accounts(settings, ()).endswith("(it serves none)")
    assert check_accounts(IbSettings(), ("U1",)) == ""  # data only: any session
    assert is_paper_account("du123") and is_paper_account("DF55") and not is_paper_account("U9")
