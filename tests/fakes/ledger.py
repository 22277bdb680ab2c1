"""The money side of the fakes' account: balances, locks, margin and perpetual positions.

``matching.Account`` is a ``Ledger``: the matching decides what trades, this module moves
the money for it. Nothing here knows an exchange or an order book.

- spot: an open order locks what it may spend (buy: remaining qty x limit or stop price, or
  the ask for market, plus the taker fee when fees are paid in the quote; sell: remaining
  qty of base) in ``used``; fills release the lock pro rata and move the assets. A
  conditional order not yet triggered locks nothing where the account says so
  (``Account.conditional_holds`` off, as on Bybit): it is locked when it triggers;
- fees: taker 0.1 %, maker 0.08 % (``taker_fee``/``maker_fee``). Spot: ``fee_asset``
  ``"received"`` (default, as Binance and Bybit) charges the asset received (buy: base,
  sell: quote); ``"quote"`` (as Kraken) charges the quote on both sides. Perpetual: always
  the settle asset;
- perpetuals: one net position per symbol (``PerpPosition``), entry price averaged on
  increase, PnL realised on reduce into the settle asset's balance; the settle asset's
  ``used`` is the initial margin (notional / ``leverage``) of positions and open
  non-reduce-only orders, ``free`` the rest of the wallet (unrealised PnL excluded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal

import msgspec

from tests.fakes.prices import SymbolSpec, decimals

if TYPE_CHECKING:
    from tests.fakes.records import FakeOrder, Side

FeeAsset = Literal["received", "quote"]
EPS = 1e-9
DEFAULT_QUOTE_BALANCE = 1_000_000.0


class LedgerError(Exception):
    """Not enough money for an order; the account turns it into ``insufficient_balance``."""


class Balance(msgspec.Struct):
    free: float
    used: float = 0.0

    @property
    def total(self) -> float:
        return self.free + self.used


class PerpPosition(msgspec.Struct):
    symbol: str
    qty: float
    """Signed: long > 0, short < 0 (contracts)."""
    entry_price: float
    realized_pnl: float = 0.0
    updated_ns: int = 0

    def unrealized(self, mark: float, contract_size: float = 1.0) -> float:
        return (mark - self.entry_price) * self.qty * contract_size


class Lock(msgspec.Struct):
    """What one open spot order has set aside."""

    asset: str = ""
    amount: float = 0.0


class Ledger:
    """Balances and positions of one account, and the rules that move them."""

    def __init__(
        self,
        spec_of: Callable[[str], SymbolSpec],
        balances: dict[str, float],
        *,
        taker_fee: float,
        maker_fee: float,
        leverage: float,
        fee_asset: FeeAsset = "received",
    ) -> None:
        self._spec_of = spec_of
        self.taker_fee = taker_fee
        self.maker_fee = maker_fee
        self.leverage = leverage
        self.fee_asset: FeeAsset = fee_asset
        self.balances: dict[str, Balance] = {a: Balance(float(f)) for a, f in balances.items()}
        self.positions: dict[str, PerpPosition] = {}

    def lock(
        self,
        spec: SymbolSpec,
        order: FakeOrder,
        lock: Lock,
        reference: float,
        credit: float = 0.0,
    ) -> None:
        """Spot: set aside what the order may spend; perpetual: check the margin (``credit``:
        the margin the order held before an amendment). Raises ``LedgerError``."""
        if spec.kind == "perpetual":
            if order.reduce_only:
                return
            margin = self.margin(spec, order, reference)
            free = self.balances.get(settle_asset(spec), Balance(0.0)).free
            if margin > free + credit + EPS:
                raise LedgerError("margin is insufficient")
            return
        if order.side == "buy":
            asset, amount = spec.quote, order.remaining * reference
            if self.fee_asset == "quote":
                amount *= 1 + self.taker_fee
        else:
            asset, amount = spec.base, order.remaining
        balance = self.balances.setdefault(asset, Balance(0.0))
        if amount > balance.free + EPS:
            raise LedgerError(f"account has insufficient {asset}")
        balance.free -= amount
        balance.used += amount
        lock.asset, lock.amount = asset, amount

    def unlock(self, lock: Lock, share: float = 1.0) -> None:
        if not lock.asset:
            return
        amount = lock.amount * share
        balance = self.balances[lock.asset]
        balance.used -= amount
        balance.free += amount
        lock.amount -= amount

    def margin(self, spec: SymbolSpec, order: FakeOrder, reference: float) -> float:
        return order.remaining * reference * spec.contract_size / self.leverage

    def remargin(self, spec: SymbolSpec, open_orders: Iterable[FakeOrder]) -> None:
        """Recompute the initial margin held in ``used`` of a perpetual's settle asset."""
        if spec.kind != "perpetual":
            return
        asset = settle_asset(spec)
        used = 0.0
        for position in self.positions.values():
            other = self._spec_of(position.symbol)
            if settle_asset(other) == asset:
                used += abs(position.qty) * position.entry_price * other.contract_size
        for order in open_orders:
            other = self._spec_of(order.symbol)
            if not order.reduce_only and settle_asset(other) == asset:
                used += (
                    order.remaining * (order.price or order.stop_price or 0.0) * other.contract_size
                )
        used /= self.leverage
        balance = self.balances.setdefault(asset, Balance(0.0))
        total = balance.total
        balance.used = used
        balance.free = total - used

    def reducible(self, symbol: str, side: Side) -> float:
        """How much a reduce-only order on ``side`` may still trade against the position."""
        position = self.positions.get(symbol)
        held = position.qty if position is not None else 0.0
        return abs(held) if abs(held) >= EPS and (held > 0) != (side == "buy") else 0.0

    def settle(
        self,
        spec: SymbolSpec,
        order: FakeOrder,
        lock: Lock,
        qty: float,
        price: float,
        maker: bool,
        ts: int,
    ) -> tuple[float, str]:
        """Move the money of one trade of ``order``; returns its fee and fee currency."""
        rate = self.maker_fee if maker else self.taker_fee
        if spec.kind == "perpetual":
            fee_currency = settle_asset(spec)
            fee = qty * price * spec.contract_size * rate
            realized = self._move_position(spec, order.side, qty, price, ts)
            self.balances.setdefault(fee_currency, Balance(0.0)).free += realized - fee
            return fee, fee_currency
        before = order.remaining
        self.unlock(lock, qty / before if before > EPS else 1.0)
        base = self.balances.setdefault(spec.base, Balance(0.0))
        quote = self.balances.setdefault(spec.quote, Balance(0.0))
        in_quote = self.fee_asset == "quote"
        if order.side == "buy":
            fee_currency, fee = (
                (spec.quote, qty * price * rate) if in_quote else (spec.base, qty * rate)
            )
            quote.free -= qty * price + (fee if in_quote else 0.0)
            base.free += qty - (0.0 if in_quote else fee)
        else:
            fee_currency, fee = spec.quote, qty * price * rate
            base.free -= qty
            quote.free += qty * price - fee
        return fee, fee_currency

    def _move_position(
        self, spec: SymbolSpec, side: Side, qty: float, price: float, ts: int
    ) -> float:
        """Net a fill into the position; returns the realised PnL."""
        position = self.positions.get(spec.symbol)
        if position is None:
            position = self.positions[spec.symbol] = PerpPosition(spec.symbol, 0.0, price)
        signed = qty if side == "buy" else -qty
        held = position.qty
        realized = 0.0
        if held == 0 or (held > 0) == (signed > 0):
            total = round(held + signed, 12)
            position.entry_price = round(
                (position.entry_price * abs(held) + price * qty) / abs(total), 10
            )
            position.qty = total
        else:
            closed = min(abs(held), qty)
            realized = (price - position.entry_price) * closed * spec.contract_size
            realized = realized if held > 0 else -realized
            position.qty = round(held + signed, 12)
            if abs(position.qty) < EPS:
                position.qty = 0.0
            elif (position.qty > 0) != (held > 0):
                position.entry_price = price
        position.realized_pnl += realized
        position.updated_ns = ts
        return realized


def settle_asset(spec: SymbolSpec) -> str:
    return spec.settle or spec.quote


def generous(specs: Iterable[SymbolSpec]) -> dict[str, float]:
    """The default seed: 1,000,000 of every quote/settle asset and that much quote's worth
    of every spot base."""
    out: dict[str, float] = {}
    for spec in specs:
        out[settle_asset(spec)] = DEFAULT_QUOTE_BALANCE
        if spec.kind == "spot":
            out[spec.base] = round(DEFAULT_QUOTE_BALANCE / spec.price, decimals(spec.lot_size))
    return out
