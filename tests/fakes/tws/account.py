"""Account requests of the TWS fake: positions, account values and updates, summaries,
executions.

Values are computed from the broker's cash and positions at the current price, in USD;
``reqAccountUpdates`` and ``reqPositions`` subscribers also hear of every position change.
``reqExecutions`` answers as IB does only from the account's trade log of the current day:
executions before the last midnight of the account's time zone (``zone``, TWS's) are no
longer returned, whatever the filter's time says (TWS's Trade Log setting "show trades for
N days" widens that: ``trade_log_days``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from tests.fakes.tws import messages as m
from tests.fakes.tws.market import NS, TWS_ZONE, RequestError, parse_end
from tests.fakes.tws.orders import Execution, Position
from tests.fakes.tws.wire import flag, integer

if TYPE_CHECKING:
    from tests.fakes.tws.server import Session, TwsFake


class AccountDesk:
    def __init__(self, fake: TwsFake) -> None:
        self.fake = fake
        self.zone = ZoneInfo(TWS_ZONE)
        self.trade_log_days = 1

    def day_start_ns(self) -> int:
        """The oldest execution time ``reqExecutions`` still returns: the midnight that
        began the current day (``trade_log_days`` 1) in the account's zone."""
        today = dt.datetime.fromtimestamp(self.fake.now() / NS, self.zone).date()
        first = today - dt.timedelta(days=self.trade_log_days - 1)
        midnight = dt.datetime.combine(first, dt.time(), self.zone)
        return int(midnight.timestamp()) * NS

    def in_trade_log(self) -> list[Execution]:
        start = self.day_start_ns()
        return [e for e in self.fake.broker.executions if e.time_ns >= start]

    async def executions(self, s: Session, f: list[str]) -> None:
        """``reqExecutions``: the trade log's executions that match the filter, each with its
        commission report."""
        req_id, client, account, since, symbol, sec_type, exchange, side = f[2:10]
        try:
            since_ns = parse_end(since, 0) if since else 0
        except RequestError:
            since_ns = 0
        wanted = {"BUY": "BOT", "SELL": "SLD"}.get(side.upper(), side.upper())
        for e in self.in_trade_log():
            listing = self.fake.catalogue.by_conid[e.conid]
            if (
                (integer(client) and integer(client) != e.client_id)
                or (account and account != e.account)
                or e.time_ns < since_ns
                or (symbol and symbol != listing.symbol)
                or (sec_type and sec_type != listing.secType)
                or (exchange and exchange != e.exchange)
                or (wanted and wanted != e.side)
            ):
                continue
            s.send(m.exec_details(integer(req_id), e, listing))
            s.send(m.commission_report(e))
        s.send(m.exec_details_end(integer(req_id)))

    def position_changed(self, position: Position) -> None:
        for session in self.fake.sessions.values():
            if session.positions:
                session.send(m.position(self.fake.account, position))
            if session.account_updates:
                session.send(
                    m.portfolio(self.fake.account, position, self.fake.price(position.listing))
                )
                for fields in self.rows(m.account_value):
                    session.send(fields)

    async def positions(self, s: Session, f: list[str]) -> None:
        s.positions = True
        for position in self.fake.broker.positions.values():
            s.send(m.position(self.fake.account, position))
        s.send(m.position_end())

    async def cancel_positions(self, s: Session, f: list[str]) -> None:
        s.positions = False

    def values(self) -> list[tuple[str, float]]:
        b = self.fake.broker
        net = b.net_liquidation(self.fake.price)
        margin = b.margin_in_use(self.fake.price)
        gross = sum(
            abs(p.qty) * self.fake.price(p.listing) * p.listing.factor for p in b.positions.values()
        )
        realized = sum(p.realized for p in b.positions.values())
        unrealized = sum(
            (self.fake.price(p.listing) * p.listing.factor - p.avg_cost) * p.qty
            for p in b.positions.values()
        )
        return [
            ("NetLiquidation", net),
            ("TotalCashValue", b.cash),
            ("SettledCash", b.cash),
            ("EquityWithLoanValue", net),
            ("GrossPositionValue", gross),
            ("InitMarginReq", margin),
            ("MaintMarginReq", margin * 0.8),
            ("AvailableFunds", net - margin),
            ("ExcessLiquidity", net - margin * 0.8),
            ("BuyingPower", 4 * (net - margin)),
            ("RealizedPnL", realized),
            ("UnrealizedPnL", unrealized),
        ]

    def rows(self, make: Callable[[str, str, str, str], m.Fields]) -> list[m.Fields]:
        rows = [
            make("AccountCode", self.fake.account, "", self.fake.account),
            make("AccountType", "INDIVIDUAL", "", self.fake.account),
            make("Currency", "USD", "USD", self.fake.account),
            make("CashBalance", f"{self.fake.broker.cash:.2f}", "USD", self.fake.account),
            make("CashBalance", f"{self.fake.broker.cash:.2f}", "BASE", self.fake.account),
        ]
        rows += [
            make(key, f"{value:.2f}", "USD", self.fake.account) for key, value in self.values()
        ]
        return rows

    async def account_updates(self, s: Session, f: list[str]) -> None:
        s.account_updates = flag(f[2])
        if not s.account_updates:
            return
        for fields in self.rows(m.account_value):
            s.send(fields)
        for position in self.fake.broker.positions.values():
            s.send(m.portfolio(self.fake.account, position, self.fake.price(position.listing)))
        s.send(m.account_time(self.fake.now()))
        s.send(m.account_download_end(self.fake.account))

    async def account_multi(self, s: Session, f: list[str]) -> None:
        req_id = integer(f[2])
        for fields in self.rows(
            lambda key, value, currency, account: m.account_update_multi(
                req_id, account, key, value, currency
            )
        ):
            s.send(fields)
        s.send(m.account_update_multi_end(req_id))

    async def account_summary(self, s: Session, f: list[str]) -> None:
        req_id, tags = integer(f[2]), set(f[4].split(","))
        for key, value in self.values():
            if key in tags:
                s.send(m.account_summary(req_id, self.fake.account, key, f"{value:.2f}", "USD"))
        s.send(m.account_summary_end(req_id))
