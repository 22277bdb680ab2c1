"""Keel's IB contract specs become ib_async contracts; IB's qualified contract details become
``Instrument`` events (tick size, multiplier, lot, hours); the front month follows its roll
rule; an IB contract found in a position or an execution maps back to its Keel symbol."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from ib_async import Contract, ContractDetails, Future

from contracts.codec import decode, encode
from contracts.events import Instrument
from services.venues.ib.calendar import TradingCalendar
from services.venues.ib.contracts import (
    ContractError,
    front_month,
    ib_contract,
    instrument_of,
    keel_symbol,
    last_trade_date,
)
from services.venues.ib.specs import FutureSpec, FxSpec, StockSpec

BRK = StockSpec(symbol="BRK B", primary_exchange="NYSE")
ES = FutureSpec(root="ES", exchange="CME", expiry="front", roll_days=8)
MES = FutureSpec(root="MES", exchange="CME", expiry="202612")
EURUSD = FxSpec(pair="EUR.USD")
SPECS = (BRK, ES, MES, EURUSD)

STOCK_HOURS = (
    "20261205:CLOSED;20261206:CLOSED;20261207:0400-20261207:2000;20261208:0400-20261208:2000"
)


def es_details(expiry: str, con_id: int, local: str) -> ContractDetails:
    """As IB answers ``reqContractDetails(Future("ES", exchange="CME"))``, one per expiry."""
    return ContractDetails(
        contract=Future(
            conId=con_id,
            symbol="ES",
            lastTradeDateOrContractMonth=expiry,
            multiplier="50",
            exchange="CME",
            currency="USD",
            localSymbol=local,
            tradingClass="ES",
        ),
        minTick=0.25,
        timeZoneId="US/Central",
        tradingHours="20261206:1700-20261207:1600;20261207:1700-20261208:1600",
        liquidHours="20261207:0830-20261207:1500;20261208:0830-20261208:1500",
        realExpirationDate=expiry,
    )


LISTED = [
    es_details("20270319", 620730945, "ESH7"),
    es_details("20261218", 551601561, "ESZ6"),
    es_details("20270618", 649180695, "ESM7"),
]


def test_specs_become_the_contracts_ib_qualifies() -> None:
    stock = ib_contract(BRK)
    assert (stock.secType, stock.symbol, stock.exchange, stock.primaryExchange) == (
        "STK",
        "BRK B",
        "SMART",
        "NYSE",
    )
    assert stock.currency == "USD"
    front = ib_contract(ES)  # no expiry: IB lists every one, front_month picks
    assert (front.secType, front.symbol, front.lastTradeDateOrContractMonth) == ("FUT", "ES", "")
    dated = ib_contract(MES)
    assert (dated.exchange, dated.lastTradeDateOrContractMonth) == ("CME", "202612")
    fx = ib_contract(EURUSD)
    assert (fx.secType, fx.symbol, fx.currency, fx.exchange) == ("CASH", "EUR", "USD", "IDEALPRO")


@pytest.mark.parametrize(
    ("today", "local"),
    [
        (dt.date(2026, 12, 1), "ESZ6"),
        (dt.date(2026, 12, 9), "ESZ6"),  # the day before the roll date
        (dt.date(2026, 12, 10), "ESH7"),  # 8 days before 18 Dec: rolled
        (dt.date(2027, 3, 10), "ESH7"),
        (dt.date(2027, 3, 11), "ESM7"),
    ],
)
def test_the_front_month_rolls_roll_days_before_the_last_trading_day(
    today: dt.date, local: str
) -> None:
    chosen = front_month(LISTED, today, ES.roll_days)
    assert chosen.contract is not None and chosen.contract.localSymbol == local


def test_no_expiry_left_to_roll_to_is_one_line() -> None:
    with pytest.raises(ContractError, match="no listed expiry rolls after 2027-06-10"):
        front_month(LISTED, dt.date(2027, 6, 10), 8)
    with pytest.raises(ContractError, match="no last trading day"):
        last_trade_date(ContractDetails(contract=Future(symbol="ES", localSymbol="ESZ6")))


def test_a_qualified_future_becomes_an_instrument_with_its_hours() -> None:
    details = front_month(LISTED, dt.date(2026, 12, 1), 8)
    instrument = instrument_of("ibkr", ES, details, ts=1_796_600_000_000_000_000)
    assert instrument == Instrument(
        ts=1_796_600_000_000_000_000,
        venue="ibkr",
        symbol="ES",
        base="ES",
        quote="USD",
        kind="future",
        tick_size=0.25,
        lot_size=1.0,
        contract_size=50.0,
        settle="USD",
        contract_id="551601561",
        expiry="20261218",
        time_zone="US/Central",
        trading_hours="20261206:1700-20261207:1600;20261207:1700-20261208:1600",
        liquid_hours="20261207:0830-20261207:1500;20261208:0830-20261208:1500",
    )
    # The event carries what the calendar needs, and survives the log's codec.
    assert decode(encode(instrument)) == instrument
    calendar = TradingCalendar.parse(instrument.trading_hours, instrument.time_zone)
    assert len(calendar.sessions) == 2


def test_a_stock_trades_whole_shares_and_fx_its_own_increment() -> None:
    stock = ContractDetails(
        contract=Contract(
            secType="STK",
            conId=72063691,
            symbol="BRK B",
            exchange="SMART",
            primaryExchange="NYSE",
            currency="USD",
            localSymbol="BRK B",
        ),
        minTick=0.01,
        minSize=0.0001,
        sizeIncrement=0.0001,
        timeZoneId="US/Eastern",
        tradingHours=STOCK_HOURS,
        liquidHours="20261207:0930-20261207:1600",
    )
    instrument = instrument_of("ibkr", BRK, stock, ts=1)
    assert (instrument.symbol, instrument.kind, instrument.base, instrument.quote) == (
        "BRK B",
        "stock",
        "BRK B",
        "USD",
    )
    assert (instrument.tick_size, instrument.lot_size, instrument.contract_size) == (
        0.01,
        1.0,
        1.0,
    )
    assert instrument.settle == "" and instrument.expiry == "" and instrument.contract_id
    fx = ContractDetails(
        contract=Contract(
            secType="CASH",
            conId=12087792,
            symbol="EUR",
            exchange="IDEALPRO",
            currency="USD",
            localSymbol="EUR.USD",
        ),
        minTick=0.00005,
        sizeIncrement=1.0,
        timeZoneId="US/Eastern",
        tradingHours="20261206:1715-20261207:1700",
    )
    pair = instrument_of("ibkr", EURUSD, fx, ts=1)
    assert (pair.symbol, pair.kind, pair.base, pair.quote, pair.tick_size) == (
        "EUR/USD",
        "fx",
        "EUR",
        "USD",
        0.00005,
    )


@pytest.mark.parametrize(
    ("details", "message"),
    [
        (ContractDetails(), "no qualified contract"),
        (
            ContractDetails(contract=Contract(secType="OPT", conId=1), minTick=0.01),
            "security type 'OPT' is not supported",
        ),
        (
            ContractDetails(contract=Contract(secType="STK", conId=1, symbol="X")),
            "IB gives no tick size",
        ),
        (
            ContractDetails(
                contract=Contract(secType="FUT", conId=1, multiplier="x"), minTick=0.25
            ),
            "multiplier 'x'",
        ),
    ],
)
def test_unusable_details_are_one_line(details: ContractDetails, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        instrument_of("ibkr", ES, details, ts=1)


def test_ib_contracts_map_back_to_keel_symbols() -> None:
    position = Contract(secType="STK", symbol="BRK B", currency="USD", exchange="NYSE")
    assert keel_symbol(position, SPECS) == "BRK B"
    march = Contract(secType="FUT", symbol="ES", lastTradeDateOrContractMonth="20270319")
    assert keel_symbol(march, SPECS) == "ES"  # any expiry of a front-month root
    micro = Contract(secType="FUT", symbol="MES", lastTradeDateOrContractMonth="20261218")
    assert keel_symbol(micro, SPECS) == "MES 202612"
    other = Contract(secType="FUT", symbol="MES", lastTradeDateOrContractMonth="20270319")
    assert keel_symbol(other, SPECS) is None  # not the configured expiry
    assert keel_symbol(Contract(secType="CASH", symbol="EUR", currency="USD"), SPECS) == "EUR/USD"
    assert keel_symbol(Contract(secType="CASH", symbol="USD", currency="EUR"), SPECS) is None
    assert keel_symbol(Contract(secType="STK", symbol="BRK B", currency="CAD"), SPECS) is None
    classed = FutureSpec(root="ES", exchange="CME", expiry="front", roll_days=5, trading_class="ES")
    assert keel_symbol(Contract(secType="FUT", symbol="ES", tradingClass="EW"), (classed,)) is None


def test_an_older_instrument_without_the_new_fields_still_decodes() -> None:
    old = (
        b'{"type":"Instrument","ts":1,"venue":"b","symbol":"BTC/USDT","base":"BTC","quote":"USDT"}'
    )
    instrument = decode(old)
    assert isinstance(instrument, Instrument)
    assert (instrument.kind, instrument.trading_hours, instrument.contract_id) == ("spot", "", "")
    assert msgspec.json.decode(encode(instrument))["kind"] == "spot"
