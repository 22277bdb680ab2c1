"""Each leg names its market (docs/reconciliation.md, "How assets are derived"): the order
manager stamps the parts of the market's last ``Instrument`` on it, and the venue journal books
a stock, a future and an FX pair by them; crypto legs without parts book as before."""

from __future__ import annotations

from contracts.events import Instrument, OrderCommand
from contracts.venue_events import VenueOrder
from services.execution.paper_venue import PaperVenueConfig
from services.execution.role import execution_inputs, execution_role
from services.venues.journal import VenueJournal
from tests.test_venue_journal import PERP, SEC, T0, fill, order

VENUE = "ibkr"
ES = {"kind": "future", "base": "ES", "quote": "USD", "settle": "USD", "contract_size": 50.0}
AAPL = {"kind": "stock", "base": "AAPL", "quote": "USD"}
EUR = {"kind": "fx", "base": "EUR", "quote": "USD"}


def instrument(symbol: str, kind: str, base: str, size: float = 1.0) -> Instrument:
    return Instrument(
        ts=T0,
        venue=VENUE,
        symbol=symbol,
        base=base,
        quote="USD",
        kind=kind,  # type: ignore[arg-type]
        contract_size=size,
        settle="USD" if kind == "future" else "",
    )


def command(symbol: str, cid: str) -> OrderCommand:
    return OrderCommand(
        ts=T0,
        action="new",
        client_order_id=cid,
        strategy="s1",
        venue=VENUE,
        symbol=symbol,
        side="buy",
        qty=1.0,
    )


def test_the_order_manager_stamps_each_leg_with_its_instruments_parts() -> None:
    assert "md.instrument.>" in execution_inputs(PaperVenueConfig(), frozenset({VENUE}))[1].subjects
    assert "md.instrument.>" not in execution_inputs(PaperVenueConfig())[1].subjects
    oms = execution_role(PaperVenueConfig(), gateways=frozenset({VENUE})).decider
    before = [e for e in oms.decide(command("ES", "o0"), T0) if isinstance(e, VenueOrder)]
    assert before[0].kind == "" and before[0].contract_size == 1.0  # no Instrument yet
    assert oms.decide(instrument("ES", "future", "ES", 50.0), T0) == []
    (leg,) = [e for e in oms.decide(command("ES", "o1"), T0) if isinstance(e, VenueOrder)]
    assert (leg.kind, leg.base, leg.quote, leg.settle, leg.contract_size) == (
        "future",
        "ES",
        "USD",
        "USD",
        50.0,
    )
    again = execution_role(PaperVenueConfig(), gateways=frozenset({VENUE})).decider
    again.restore(oms.snapshot())
    (copy,) = [e for e in again.decide(command("ES", "o2"), T0) if isinstance(e, VenueOrder)]
    assert copy.contract_size == 50.0  # the snapshot keeps the instruments


def test_a_future_books_contracts_and_its_profit_times_the_multiplier() -> None:
    j = VenueJournal(VENUE)
    buy = order("b", symbol="ES", venue=VENUE, qty=2.0, **ES)
    sell = order("s", symbol="ES", venue=VENUE, side="sell", qty=1.0, **ES)
    for event in (
        buy,
        fill(buy, "t1", 2.0, 5_000.0, fee=4.5, fee_currency="USD"),
        sell,
        fill(sell, "t2", 1.0, 5_010.0, fee=2.25, fee_currency="USD", ts=T0 + 3 * SEC),
    ):
        j.apply(event)
    assert j.position("ES") == 1.0 and j.position_symbols() == ["ES"]
    assert j.balance_assets() == ["USD"]
    assert j.balance("USD") == 1 * 10.0 * 50.0 - 4.5 - 2.25


def test_a_stock_is_a_position_paid_in_cash_and_fx_moves_both_currencies() -> None:
    j = VenueJournal(VENUE)
    stock = order("a", symbol="AAPL", venue=VENUE, qty=10.0, **AAPL)
    pair = order("e", symbol="EUR/USD", venue=VENUE, qty=1_000.0, **EUR)
    for event in (
        stock,
        fill(stock, "t1", 10.0, 180.0, fee=1.0, fee_currency="USD"),
        pair,
        fill(pair, "t2", 1_000.0, 1.1, fee=2.0, fee_currency="USD"),
    ):
        j.apply(event)
    assert j.position_symbols() == ["AAPL"]  # IB lists shares as a position
    assert j.position("AAPL") == 10.0
    assert j.balance_assets() == ["EUR", "USD"]  # no "" and no AAPL balance
    assert j.balance("EUR") == 1_000.0
    assert j.balance("USD") == -1_800.0 - 1.0 - 1_100.0 - 2.0


def test_a_later_leg_without_parts_uses_the_symbols_first_market() -> None:
    j = VenueJournal(VENUE)
    first = order("b", symbol="ES", venue=VENUE, **ES)
    bare = order("c", symbol="ES", venue=VENUE, side="sell")
    j.apply(first)
    j.apply(fill(first, "t1", 1.0, 5_000.0, fee_currency=""))
    j.apply(bare)
    j.apply(fill(bare, "t2", 1.0, 5_002.0, fee_currency=""))
    assert j.position("ES") == 0.0 and j.balance("USD") == 2.0 * 50.0
    restored = VenueJournal.restore(j.snapshot())
    assert restored.market("ES") == j.market("ES") and restored.market("ES").margined


def test_crypto_legs_without_parts_book_as_their_symbol_says() -> None:
    j = VenueJournal("binance")
    perp = order("p", symbol=PERP, qty=2.0)
    j.apply(perp)
    j.apply(fill(perp, "t1", 2.0, 100.0, fee=0.1))
    assert j.position_symbols() == [PERP] and j.market(PERP).kind == "perpetual"
    assert j.balance("USDT") == -0.1 and j.balance_assets() == ["USDT"]
