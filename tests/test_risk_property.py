"""Property: with random rails and random event sequences, no order the engine approves
breaks a configured rail, and every rejection names a rail that really is breached.

The model below keeps its own books (positions, working orders, prices, returns, equity,
breakers, order times) from the same events and judges each signal independently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contracts.events import (
    EquitySnapshot,
    ExecutionReport,
    OrderCommand,
    RiskAlert,
    RiskDecision,
    Signal,
)
from contracts.system_events import GovernanceCommand, SystemStatus
from services.risk.engine import RiskEngine
from services.risk.limits import BreakerConfig, CorrelationConfig, RiskLimits
from tests import factories
from tests.risk_helpers import book

T0 = 1_700_006_400_000_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
DAY = 86_400 * SECOND
VENUES = ("v1", "v2")
SYMBOLS = ("BTC/USDT", "ETH/USDT")
STRATEGIES = ("a", "b")
TOL = 1e-9
BREAKER = BreakerConfig(window="10m", min_reports=3, max_error_pct=40.0, cooldown="30m")
CORRELATION = CorrelationConfig(max=0.3, window=12, min_periods=5)


def maybe(values: list) -> st.SearchStrategy:
    """Off two times in three: each example has a few rails on, not all of them."""
    return st.sampled_from([None, None, *values])


limits_st = st.builds(
    RiskLimits,
    trading_enabled=st.sampled_from([True] * 9 + [False]),
    allowed_symbols=st.sampled_from([(), ("BTC/USDT",)]),
    denied_symbols=st.sampled_from([(), ("ETH/USDT",)]),
    min_order_notional=maybe([5.0, 50.0]),
    max_order_notional=maybe([100.0, 1_000.0]),
    max_position=maybe([1.0, 3.0]),
    max_symbol_exposure=maybe([150.0, 400.0]),
    max_venue_exposure=maybe([300.0, 700.0]),
    max_total_exposure=maybe([500.0, 1_000.0]),
    max_open_positions=maybe([1, 2]),
    max_orders_per_minute=maybe([2, 5]),
    max_venue_orders_per_minute=maybe([3]),
    equity_floor=maybe([900.0]),
    max_drawdown_pct=maybe([8.0]),
    max_daily_loss_pct=maybe([5.0]),
    soft_drawdown_pct=maybe([4.0]),
    soft_action=st.sampled_from(["safe_mode", "degrade"]),
    flatten_on_halt=st.booleans(),
    breaker=st.sampled_from([None, BREAKER]),
    correlation=st.sampled_from([None, CORRELATION]),
).filter(lambda x: not (x.allowed_symbols and set(x.allowed_symbols) & set(x.denied_symbols)))

op_signal = st.tuples(
    st.just("signal"),
    st.sampled_from(STRATEGIES),
    st.sampled_from(VENUES),
    st.sampled_from(SYMBOLS),
    st.one_of(
        st.tuples(st.just("target"), st.sampled_from([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0])),
        st.tuples(st.sampled_from(["buy", "sell"]), st.sampled_from([0.25, 1.0, 2.0])),
    ),
)
op_bars = st.tuples(
    st.just("bars"), st.lists(st.floats(min_value=0.9, max_value=1.1), min_size=4, max_size=4)
)
op_report = st.tuples(
    st.just("report"),
    st.integers(min_value=0, max_value=50),
    st.sampled_from(["filled", "partial", "canceled", "rejected", "rejected", "accepted"]),
)
op_equity = st.tuples(st.just("equity"), st.floats(min_value=0.96, max_value=1.03))
op_gov = st.tuples(st.just("gov"), st.sampled_from(["kill", "resume", "resume", "resume"]))
op_time = st.tuples(st.just("time"), st.sampled_from([SECOND, 20 * SECOND, 10 * MINUTE, DAY // 3]))
ops = st.lists(
    st.one_of(
        op_signal, op_signal, op_signal, op_bars, op_bars, op_report, op_report, op_equity, op_time
    ),
    min_size=30,
    max_size=90,
)
script_st = st.tuples(st.lists(op_bars, min_size=1, max_size=8), ops, st.lists(op_gov, max_size=1))


@dataclass
class Breaker:
    status: str = "CLOSED"
    times: list[tuple[int, bool]] = field(default_factory=list)
    opened_at: int = 0
    probe: str = ""


@dataclass
class Model:
    limits: RiskLimits
    killed: bool = False
    prices: dict[str, float] = field(default_factory=dict)
    closes: dict[str, float] = field(default_factory=dict)
    returns: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    positions: dict[tuple[str, str], float] = field(default_factory=dict)  # (strategy, sk)
    working: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # id -> (s, sk, q)
    cancels: set[str] = field(default_factory=set)
    order_times: dict[str, list[int]] = field(default_factory=dict)
    equity: float | None = None
    peak: float = 0.0
    day: int = 0
    day_open: float = 0.0
    halt: str | None = None
    soft: set[str] = field(default_factory=set)
    breakers: dict[str, Breaker] = field(default_factory=dict)

    def net(self, sk: str) -> float:
        held = sum(q for (_, k), q in self.positions.items() if k == sk)
        return held + sum(w[2] for w in self.working.values() if w[1] == sk)

    def held(self, strategy: str, sk: str) -> float:
        working = sum(w[2] for w in self.working.values() if w[:2] == (strategy, sk))
        return self.positions.get((strategy, sk), 0.0) + working

    def gross(self, venue: str | None) -> float:
        keys = {w[1] for w in self.working.values()} | {k for _, k in self.positions}
        total = 0.0
        for sk in keys:
            if venue is not None and not sk.startswith(venue + "|"):
                continue
            q = self.net(sk)
            if abs(q) > 1e-12 and sk in self.prices:
                total += abs(q) * self.prices[sk]
        return total

    def open_symbols(self, exclude: str) -> list[str]:
        keys = {w[1] for w in self.working.values()} | {k for _, k in self.positions}
        return [k for k in keys if k != exclude and abs(self.net(k)) > 1e-12]

    def recent(self, name: str, now: int) -> int:
        return sum(1 for t in self.order_times.get(name, []) if t > now - MINUTE)

    def correlation(self, a: str, b: str) -> float | None:
        config = self.limits.correlation
        assert config is not None
        ra = dict(self.returns.get(a, [])[-config.window :])
        rb = dict(self.returns.get(b, [])[-config.window :])
        common = sorted(set(ra) & set(rb))[-config.window :]
        if len(common) < config.min_periods:
            return None
        xs = np.array([ra[t] for t in common])
        ys = np.array([rb[t] for t in common])
        if np.ptp(xs) == 0 or np.ptp(ys) == 0:
            return None
        return float(np.corrcoef(xs, ys)[0, 1])

    # -- breaker ----------------------------------------------------------------------------

    def tick(self, now: int) -> None:
        for b in self.breakers.values():
            if b.status == "OPEN" and now >= b.opened_at + 30 * MINUTE:
                b.status, b.probe = "HALF_OPEN", ""

    def breaker_report(self, venue: str, order_id: str, status: str, now: int) -> None:
        if self.limits.breaker is None:
            return
        if status == "rejected":
            failed = True
        elif status in ("accepted", "filled", "partially_filled"):
            failed = False
        else:
            return
        b = self.breakers.setdefault(venue, Breaker())
        if b.status == "HALF_OPEN":
            if b.probe and order_id == b.probe:
                if failed:
                    b.status, b.opened_at, b.probe, b.times = "OPEN", now, "", []
                else:
                    b.status, b.probe, b.times = "CLOSED", "", []
            return
        if b.status == "OPEN":
            return
        b.times = [(t, f) for t, f in b.times if t > now - 10 * MINUTE] + [(now, failed)]
        fails = sum(f for _, f in b.times)
        if failed and len(b.times) >= 3 and 100.0 * fails / len(b.times) > 40.0:
            b.status, b.opened_at, b.probe, b.times = "OPEN", now, "", []

    def breaker_allows(self, venue: str) -> bool:
        b = self.breakers.get(venue)
        return b is None or b.status == "CLOSED" or (b.status == "HALF_OPEN" and not b.probe)

    # -- equity -----------------------------------------------------------------------------

    def on_equity(self, value: float, ts: int) -> None:
        lim = self.limits
        day = ts // DAY
        if self.equity is None:
            self.peak = self.day_open = value
            self.day = day
        else:
            if day != self.day:
                self.day_open, self.day = self.equity, day
                if self.halt == "max_daily_loss":
                    self.halt = None
                self.soft.discard("soft_daily_loss")
            self.peak = max(self.peak, value)
        self.equity = value
        drawdown = 100 * (self.peak - value) / self.peak
        daily = 100 * (self.day_open - value) / self.day_open
        if self.halt is None:
            if lim.equity_floor is not None and value < lim.equity_floor:
                self.halt = "equity_floor"
            elif lim.max_drawdown_pct is not None and drawdown > lim.max_drawdown_pct:
                self.halt = "max_drawdown"
            elif lim.max_daily_loss_pct is not None and daily > lim.max_daily_loss_pct:
                self.halt = "max_daily_loss"
        if lim.soft_drawdown_pct is not None:
            if drawdown > lim.soft_drawdown_pct:
                self.soft.add("soft_drawdown")
            else:
                self.soft.discard("soft_drawdown")

    def resume(self) -> None:
        self.killed = False
        self.halt = None
        self.soft.clear()
        if self.equity is not None:
            self.peak = self.day_open = self.equity

    # -- judging a signal -------------------------------------------------------------------

    def breaches(self, signal: Signal, delta: float, now: int) -> dict[str, bool]:
        lim = self.limits
        sk = f"{signal.venue}|{signal.symbol}"
        before = self.net(sk)
        after = before + delta
        increases = abs(after) > abs(before) + 1e-12
        opening = abs(before) <= 1e-12 and abs(after) > 1e-12
        price = self.prices.get(sk)
        qty = abs(delta)
        out = {
            "kill_switch": self.killed or not lim.trading_enabled,
            "symbol_denylist": signal.symbol in lim.denied_symbols,
            "symbol_allowlist": bool(lim.allowed_symbols)
            and signal.symbol not in lim.allowed_symbols,
            "venue_breaker": lim.breaker is not None and not self.breaker_allows(signal.venue),
            "strategy_rate": lim.max_orders_per_minute is not None
            and self.recent(signal.strategy, now) >= lim.max_orders_per_minute,
            "venue_rate": lim.max_venue_orders_per_minute is not None
            and self.recent("@" + signal.venue, now) >= lim.max_venue_orders_per_minute,
            "max_order_notional": lim.max_order_notional is not None
            and (price is None or qty * price > lim.max_order_notional * (1 + TOL)),
        }
        for rule in ("equity_floor", "max_drawdown", "max_daily_loss"):
            out[rule] = self.halt == rule
        out["soft_drawdown"] = (
            increases and "soft_drawdown" in self.soft and lim.soft_action == "safe_mode"
        )
        out["min_order_notional"] = (
            increases
            and lim.min_order_notional is not None
            and (price is None or qty * price < lim.min_order_notional)
        )
        out["max_position"] = (
            increases
            and lim.max_position is not None
            and abs(after) > lim.max_position * (1 + TOL) + 1e-12
        )
        out["symbol_exposure"] = (
            increases
            and lim.max_symbol_exposure is not None
            and (price is None or abs(after) * price > lim.max_symbol_exposure * (1 + TOL))
        )
        change = (abs(after) - abs(before)) * (price or 0.0)
        out["venue_exposure"] = (
            increases
            and lim.max_venue_exposure is not None
            and (
                price is None
                or self.gross(signal.venue) + change > lim.max_venue_exposure * (1 + TOL)
            )
        )
        out["total_exposure"] = (
            increases
            and lim.max_total_exposure is not None
            and (price is None or self.gross(None) + change > lim.max_total_exposure * (1 + TOL))
        )
        out["max_open_positions"] = (
            opening
            and lim.max_open_positions is not None
            and len(self.open_symbols(sk)) >= lim.max_open_positions
        )
        correlated = False
        if opening and lim.correlation is not None:
            for other in self.open_symbols(sk):
                corr = self.correlation(sk, other)
                if corr is not None:
                    sign = math.copysign(1.0, after) * math.copysign(1.0, self.net(other))
                    correlated = correlated or corr * sign > lim.correlation.max + 1e-9
        out["correlation"] = correlated
        return out


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(limits=limits_st, parts=script_st, at=st.integers(min_value=0, max_value=90))
# Found by CI (random seeds), missed by the 300 derandomized examples: a flatten on halt
# closing one strategy's positions in one symbol on both venues gave the two orders one id.
@example(
    limits=RiskLimits(
        trading_enabled=True,
        allowed_symbols=(),
        denied_symbols=(),
        min_order_notional=None,
        max_order_notional=None,
        max_position=None,
        max_symbol_exposure=None,
        max_venue_exposure=None,
        max_total_exposure=None,
        max_open_positions=2,
        max_orders_per_minute=2,
        max_venue_orders_per_minute=3,
        equity_floor=900.0,
        max_drawdown_pct=None,
        max_daily_loss_pct=5.0,
        soft_drawdown_pct=4.0,
        soft_action="safe_mode",
        flatten_on_halt=True,
        breaker=BreakerConfig(window="10m", min_reports=3, max_error_pct=40.0, cooldown="30m"),
        correlation=None,
    ),
    parts=(
        [
            ("bars", [1.1, 1.0453933613838025, 1.0526810968384914, 1.0999999999999999]),
            (
                "bars",
                [1.0847761830167444, 0.9489495245698707, 0.999944903269034, 1.0513161355115956],
            ),
            ("bars", [0.99999, 1.0432624593285316, 1.0007091009845814, 0.9985196170947592]),
            (
                "bars",
                [1.025246564814683, 0.9152895868671965, 0.977024456670697, 0.9684084006090781],
            ),
            (
                "bars",
                [0.9864820388370479, 0.9055511447592443, 1.093114374904724, 1.0052607484629519],
            ),
        ],
        [
            ("time", 600_000_000_000),
            ("bars", [1.0, 0.9831535501667445, 1.0100089143397246, 0.9759347468021847]),
            ("bars", [0.99999, 1.021633393066296, 1.0252900476821212, 1.087465533347627]),
            ("equity", 0.9710821060229169),
            ("equity", 1.023954267687233),
            ("signal", "a", "v1", "BTC/USDT", ("buy", 1.0)),
            ("time", 28_800_000_000_000),
            ("time", 1_000_000_000),
            ("time", 20_000_000_000),
            ("time", 20_000_000_000),
            ("time", 600_000_000_000),
            ("signal", "a", "v2", "BTC/USDT", ("sell", 1.0)),
            ("report", 21, "filled"),
            ("report", 13, "filled"),
            ("time", 28_800_000_000_000),
            ("equity", 0.9961968191750129),
            ("report", 38, "accepted"),
            ("signal", "a", "v1", "ETH/USDT", ("sell", 2.0)),
            ("time", 20_000_000_000),
            ("signal", "b", "v1", "BTC/USDT", ("target", -3.0)),
            ("report", 43, "rejected"),
            ("signal", "b", "v1", "BTC/USDT", ("target", 0.0)),
            ("equity", 0.9819862096232024),
            (
                "bars",
                [1.0159311680012597, 0.9635346339654001, 1.0085444010713847, 0.9535854523005687],
            ),
            ("report", 44, "partial"),
            ("equity", 0.9600000000000001),
            ("signal", "a", "v1", "ETH/USDT", ("target", 2.0)),
            ("report", 16, "filled"),
            ("time", 1_000_000_000),
            (
                "bars",
                [1.0554099724678216, 1.0606255951960362, 0.9389732150262499, 0.9016969360622021],
            ),
            ("report", 28, "canceled"),
            ("report", 38, "filled"),
            ("equity", 0.9854354058492453),
            (
                "bars",
                [1.0784800038817577, 1.090039705047682, 0.9858597960300094, 0.9132795603889363],
            ),
            ("equity", 1.0225880835578172),
            ("time", 20_000_000_000),
            ("time", 20_000_000_000),
            ("equity", 1.03),
            ("time", 20_000_000_000),
            ("time", 28_800_000_000_000),
            ("bars", [0.9, 0.9648996538764925, 1.060105552913824, 1.0]),
            ("report", 47, "canceled"),
            (
                "bars",
                [0.9000000000000001, 0.9502373305506734, 1.0136636826233119, 1.0510684036556996],
            ),
            ("equity", 1.0212205528235707),
            ("bars", [1.068922318331637, 0.9020817216425071, 0.9209660283454416, 1.0]),
            ("report", 8, "rejected"),
            ("bars", [0.99999, 1.0612352545906967, 1.0485014578292855, 1.0051481161228486]),
            ("time", 600_000_000_000),
            ("equity", 0.999),
            ("signal", "b", "v1", "ETH/USDT", ("target", 1.0)),
            ("equity", 0.99999),
            ("bars", [1.046011855146485, 1.1, 1.0053964777598567, 0.9092899247613522]),
            (
                "bars",
                [1.0420335155771974, 1.0555631652338004, 1.0533838218484806, 0.9779003433901476],
            ),
            ("signal", "b", "v2", "BTC/USDT", ("buy", 0.25)),
            ("bars", [1.0680325044461658, 1.1, 1.0041078440849367, 0.9]),
            ("signal", "b", "v1", "ETH/USDT", ("target", 2.0)),
            (
                "bars",
                [1.001512464731112, 0.9299892728965012, 0.9548603199882515, 1.0969421328326874],
            ),
            ("equity", 1.0036531881611246),
            ("signal", "a", "v2", "BTC/USDT", ("buy", 2.0)),
            ("equity", 1.0239327520957717),
            ("report", 7, "rejected"),
            ("time", 1_000_000_000),
            ("equity", 0.9647009213404033),
            ("time", 600_000_000_000),
            ("bars", [1.1, 0.9591801400319985, 1.0906886641996747, 1.0]),
            ("time", 20_000_000_000),
            ("report", 12, "rejected"),
            ("signal", "b", "v2", "ETH/USDT", ("target", 2.0)),
            (
                "bars",
                [0.98847398200424, 0.9269702171172982, 1.0928707698883697, 1.0776789915714342],
            ),
            ("bars", [0.99999, 0.95, 1.0936538631271966, 0.9569514546123412]),
            ("signal", "b", "v2", "ETH/USDT", ("target", -1.0)),
            ("time", 28_800_000_000_000),
            ("signal", "a", "v2", "ETH/USDT", ("buy", 0.25)),
            ("time", 28_800_000_000_000),
            ("report", 6, "partial"),
            ("time", 20_000_000_000),
            ("time", 20_000_000_000),
            ("bars", [0.9, 1.0836701480128217, 1.1, 0.9878557933264479]),
        ],
        [("gov", "resume")],
    ),
    at=39,
)
@example(
    limits=RiskLimits(
        trading_enabled=True,
        allowed_symbols=(),
        denied_symbols=(),
        min_order_notional=None,
        max_order_notional=None,
        max_position=None,
        max_symbol_exposure=None,
        max_venue_exposure=None,
        max_total_exposure=None,
        max_open_positions=None,
        max_orders_per_minute=None,
        max_venue_orders_per_minute=None,
        equity_floor=None,
        max_drawdown_pct=None,
        max_daily_loss_pct=5.0,
        soft_drawdown_pct=None,
        soft_action="safe_mode",
        flatten_on_halt=True,
        breaker=None,
        correlation=None,
    ),
    parts=(
        [("bars", [1.0, 1.0, 1.0, 1.0])],
        [
            ("equity", 1.0),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
            ("equity", 0.96875),
            ("signal", "a", "v2", "BTC/USDT", ("target", -3.0)),
            ("report", 0, "filled"),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
            ("report", 0, "filled"),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("bars", [0.9401204875283311, 1.0583673362062032, 0.9, 0.9]),
            ("signal", "b", "v2", "BTC/USDT", ("sell", 2.0)),
            ("time", 600_000_000_000),
            ("equity", 0.9849701204746439),
            ("report", 11, "partial"),
            ("signal", "a", "v2", "ETH/USDT", ("target", -1.0)),
            (
                "bars",
                [1.0429390052569347, 1.0465165509088168, 0.9266686531705686, 1.0048159856209078],
            ),
            ("report", 39, "canceled"),
            ("signal", "b", "v1", "ETH/USDT", ("sell", 0.25)),
            ("signal", "a", "v1", "ETH/USDT", ("target", -0.5)),
            ("equity", 0.9618136997121477),
            (
                "bars",
                [0.9546343469963431, 1.0601867274968004, 0.9697782971558225, 0.9970158077844317],
            ),
            (
                "bars",
                [0.9503463929467273, 0.9827047262506095, 0.9669257204534091, 1.0894051127556112],
            ),
            ("signal", "a", "v1", "BTC/USDT", ("target", 0.0)),
            ("time", 1_000_000_000),
            ("report", 1, "rejected"),
            ("signal", "a", "v2", "ETH/USDT", ("buy", 0.25)),
            ("time", 600_000_000_000),
            (
                "bars",
                [1.0974364504751624, 0.9680042362696395, 0.9565711307580785, 1.0772173578103037],
            ),
            ("report", 26, "rejected"),
            ("report", 38, "accepted"),
            ("time", 20_000_000_000),
            ("signal", "a", "v2", "BTC/USDT", ("target", -0.5)),
            ("report", 31, "filled"),
            ("report", 26, "partial"),
            ("signal", "b", "v1", "BTC/USDT", ("target", 1.0)),
            ("signal", "a", "v1", "ETH/USDT", ("target", 2.0)),
            ("signal", "a", "v2", "ETH/USDT", ("target", -1.0)),
            ("equity", 1.0299999999999998),
            ("signal", "b", "v1", "ETH/USDT", ("target", -0.5)),
            ("time", 600_000_000_000),
        ],
        [("gov", "kill")],
    ),
    at=17,
)
@example(
    limits=RiskLimits(
        trading_enabled=True,
        allowed_symbols=(),
        denied_symbols=(),
        min_order_notional=50.0,
        max_order_notional=None,
        max_position=None,
        max_symbol_exposure=None,
        max_venue_exposure=None,
        max_total_exposure=None,
        max_open_positions=None,
        max_orders_per_minute=None,
        max_venue_orders_per_minute=None,
        equity_floor=None,
        max_drawdown_pct=None,
        max_daily_loss_pct=5.0,
        soft_drawdown_pct=None,
        soft_action="safe_mode",
        flatten_on_halt=True,
        breaker=None,
        correlation=None,
    ),
    parts=(
        [("bars", [1.0, 1.0, 1.0, 1.0])],
        [
            ("equity", 1.0),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
            ("equity", 0.96875),
            ("signal", "a", "v2", "BTC/USDT", ("target", -3.0)),
            ("report", 1, "filled"),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
            ("report", 0, "filled"),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("equity", 0.96875),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v2", "BTC/USDT", ("buy", 0.25)),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
        ],
        [("gov", "resume")],
    ),
    at=19,
)
@example(
    limits=RiskLimits(
        trading_enabled=True,
        allowed_symbols=(),
        denied_symbols=(),
        min_order_notional=None,
        max_order_notional=None,
        max_position=None,
        max_symbol_exposure=None,
        max_venue_exposure=None,
        max_total_exposure=None,
        max_open_positions=None,
        max_orders_per_minute=None,
        max_venue_orders_per_minute=None,
        equity_floor=None,
        max_drawdown_pct=None,
        max_daily_loss_pct=5.0,
        soft_drawdown_pct=None,
        soft_action="safe_mode",
        flatten_on_halt=True,
        breaker=None,
        correlation=None,
    ),
    parts=(
        [("bars", [1.0, 1.0, 1.0, 1.0])],
        [
            ("equity", 1.0),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
            ("equity", 0.96875),
            ("signal", "a", "v2", "BTC/USDT", ("target", -1.0)),
            ("report", 1, "filled"),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
            ("report", 0, "filled"),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("equity", 0.96875),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v2", "BTC/USDT", ("target", -3.0)),
        ],
        [("gov", "resume")],
    ),
    at=19,
)
@example(
    limits=RiskLimits(
        trading_enabled=True,
        allowed_symbols=(),
        denied_symbols=(),
        min_order_notional=None,
        max_order_notional=None,
        max_position=None,
        max_symbol_exposure=None,
        max_venue_exposure=None,
        max_total_exposure=None,
        max_open_positions=None,
        max_orders_per_minute=None,
        max_venue_orders_per_minute=None,
        equity_floor=None,
        max_drawdown_pct=None,
        max_daily_loss_pct=5.0,
        soft_drawdown_pct=None,
        soft_action="safe_mode",
        flatten_on_halt=True,
        breaker=None,
        correlation=None,
    ),
    parts=(
        [("bars", [1.0, 1.0, 1.0, 1.0])],
        [
            ("equity", 1.0),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
            ("equity", 0.96875),
            ("signal", "a", "v2", "BTC/USDT", ("target", -3.0)),
            ("report", 1, "filled"),
            ("report", 0, "filled"),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
            ("report", 0, "filled"),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("equity", 0.96875),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("report", 0, "filled"),
            ("signal", "a", "v2", "BTC/USDT", ("target", -3.0)),
        ],
        [],
    ),
    at=0,
)
@example(
    limits=RiskLimits(
        trading_enabled=True,
        allowed_symbols=(),
        denied_symbols=(),
        min_order_notional=None,
        max_order_notional=None,
        max_position=None,
        max_symbol_exposure=None,
        max_venue_exposure=None,
        max_total_exposure=None,
        max_open_positions=None,
        max_orders_per_minute=None,
        max_venue_orders_per_minute=None,
        equity_floor=None,
        max_drawdown_pct=None,
        max_daily_loss_pct=5.0,
        soft_drawdown_pct=None,
        soft_action="safe_mode",
        flatten_on_halt=True,
        breaker=None,
        correlation=None,
    ),
    parts=(
        [("bars", [1.0, 1.0, 1.0, 1.0])],
        [
            ("equity", 1.0),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
            ("equity", 0.96875),
            ("signal", "a", "v2", "BTC/USDT", ("target", -3.0)),
            ("report", 0, "filled"),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("bars", [1.0, 1.0, 1.0, 1.0]),
            ("report", 0, "filled"),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("equity", 0.96875),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
            ("signal", "a", "v1", "BTC/USDT", ("target", -3.0)),
        ],
        [],
    ),
    at=0,
)
def test_no_approved_order_violates_a_configured_rail(
    limits: RiskLimits, parts: tuple, at: int
) -> None:
    warmup, body, gov = parts
    script = [*warmup, *body[:at], *gov, *body[at:]]
    engine = RiskEngine(limits)
    model = Model(limits)
    now = T0
    level = 1_000.0
    for op in script:
        now += SECOND
        kind = op[0]
        model.tick(now)
        if kind == "time":
            now += op[1]
            continue
        if kind == "signal":
            _, strategy, venue, symbol, (how, amount) = op
            sk = f"{venue}|{symbol}"
            if how == "target":
                signal = Signal(
                    ts=now, strategy=strategy, venue=venue, symbol=symbol, target_position=amount
                )
                delta = amount - model.held(strategy, sk)
            else:
                signal = Signal(
                    ts=now, strategy=strategy, venue=venue, symbol=symbol, side=how, size=amount
                )
                delta = amount if how == "buy" else -amount
            breaches = model.breaches(signal, delta, now)
            out = engine.decide(signal, now)
            out = [e for e in out if not isinstance(e, (SystemStatus, RiskAlert))]
            if abs(delta) <= 1e-12:
                assert out == []
                continue
            [result] = out
            if isinstance(result, OrderCommand):
                signed = result.qty if result.side == "buy" else -result.qty
                assert abs(signed - delta) < 1e-9
                broken = [rule for rule, hit in breaches.items() if hit]
                assert not broken, (broken, result)
                model.working[result.client_order_id] = (strategy, sk, signed)
                model.order_times.setdefault(strategy, []).append(now)
                model.order_times.setdefault("@" + venue, []).append(now)
                b = model.breakers.get(venue)
                if b is not None and b.status == "HALF_OPEN" and not b.probe:
                    b.probe = result.client_order_id
            else:
                assert isinstance(result, RiskDecision) and not result.approved
                assert breaches.get(result.rule), (result, breaches)
        elif kind == "bars":
            for i, (venue, symbol) in enumerate((v, s) for v in VENUES for s in SYMBOLS):
                sk = f"{venue}|{symbol}"
                base = 100.0 if symbol == "BTC/USDT" else 10.0
                close = base * op[1][i]
                out = engine.decide(factories.bar(close, ts=now, venue=venue, symbol=symbol), now)
                assert all(not isinstance(e, (OrderCommand, RiskDecision)) for e in out)
                previous = model.closes.get(sk)
                if previous is not None:
                    series = model.returns.setdefault(sk, [])
                    series.append((now, close / previous - 1.0))
                    del series[: -CORRELATION.window]
                elif sk not in model.returns:
                    model.returns[sk] = []
                model.closes[sk] = close
                model.prices[sk] = close
        elif kind == "report":
            _, index, status = op
            if not model.working:
                continue
            order_id = sorted(model.working)[index % len(model.working)]
            strategy, sk, remaining = model.working[order_id]
            if status == "rejected" and order_id in model.cancels:
                status = "canceled"
            venue, symbol = sk.split("|")
            fill = abs(remaining) if status == "filled" else 0.0
            if status == "partial":
                fill, status = abs(remaining) / 2, "partially_filled"
            side = "buy" if remaining > 0 else "sell"
            report = ExecutionReport(
                ts=now, status=status, client_order_id=order_id, strategy=strategy, venue=venue,
                symbol=symbol, side=side, order_qty=abs(remaining), fill_price=1.0,
                fill_qty=fill, cum_qty=fill,
            )  # fmt: skip
            out = engine.decide(report, now)
            assert all(not isinstance(e, (OrderCommand, RiskDecision)) for e in out)
            model.breaker_report(venue, order_id, status, now)
            signed = fill if side == "buy" else -fill
            model.positions[(strategy, sk)] = model.positions.get((strategy, sk), 0.0) + signed
            if status in ("filled", "canceled", "rejected"):
                del model.working[order_id]
                model.cancels.discard(order_id)
            else:
                model.working[order_id] = (strategy, sk, remaining - signed)
        elif kind == "equity":
            level = max(1.0, level * op[1])
            snapshot = EquitySnapshot(
                ts=now, cash=level, equity=level, realized_pnl=0.0, unrealized_pnl=0.0, fees=0.0,
                gross_exposure=0.0,
            )  # fmt: skip
            out = engine.decide(snapshot, now)
            model.on_equity(level, now)
            for event in out:  # risk's own orders: cancels and closing orders
                if isinstance(event, OrderCommand) and event.action == "cancel":
                    model.cancels.add(event.client_order_id)
                elif isinstance(event, OrderCommand):
                    signed = event.qty if event.side == "buy" else -event.qty
                    sk = f"{event.venue}|{event.symbol}"
                    model.working[event.client_order_id] = (event.strategy, sk, signed)
        else:
            action = op[1]
            engine.decide(GovernanceCommand(ts=now, action=action), now)
            if action == "kill":
                model.killed = True
            else:
                model.resume()
    # the books agree at the end
    assert set(engine.state.working) == set(model.working)
    for (strategy, sk), qty in model.positions.items():
        venue, symbol = sk.split("|")
        assert abs(engine.state.positions.get(book(strategy, symbol, venue), 0.0) - qty) < 1e-9


def test_flattening_one_strategy_on_two_venues_gives_each_closing_order_its_own_id() -> None:
    """The root cause of the examples above: the ids of one strategy's orders in one symbol
    on two venues at the same time must differ, or risk's book loses one of them."""
    engine = RiskEngine(RiskLimits(max_daily_loss_pct=5.0, flatten_on_halt=True))
    now = T0
    for venue in VENUES:
        engine.decide(factories.bar(100.0, ts=now, venue=venue, symbol="BTC/USDT"), now)
    engine.decide(factories.equity_snapshot(1_000.0, ts=now), now)
    for venue in VENUES:
        now += SECOND
        signal = Signal(ts=now, strategy="a", venue=venue, symbol="BTC/USDT", target_position=-3)
        [order] = engine.decide(signal, now)
        assert isinstance(order, OrderCommand)
        report = factories.report(order, "filled", 3.0, price=100.0, ts=now)
        engine.decide(report, now)
    now += SECOND
    out = engine.decide(factories.equity_snapshot(900.0, ts=now), now)
    closing = [e for e in out if isinstance(e, OrderCommand)]
    assert [(o.venue, o.side, o.qty) for o in closing] == [("v1", "buy", 3.0), ("v2", "buy", 3.0)]
    ids = {o.client_order_id for o in closing}
    assert len(ids) == 2 and set(engine.state.working) == ids
    for order in closing:
        report = factories.report(order, "filled", 3.0, price=100.0, ts=now)
        engine.decide(report, now)
    assert engine.state.working == {}
    assert all(abs(q) < 1e-12 for q in engine.state.positions.values())
