"""Backtests through ``run_backtest``: the hand-computed scenario, determinism, an independent
numpy reference of the ma_cross equity curve, multi-source merging, time windows, risk events,
bad input, and (when ../shared/data is present) real data.

Every data file is written into ``tmp_path`` from ``tests/scenario.py`` or ``SyntheticMarket``.
"""

from __future__ import annotations

import hashlib
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
import polars as pl
import pytest

from contracts.codec import decode
from contracts.events import Bar, EquitySnapshot, ExecutionReport, Signal
from eventstore.errors import KeelError
from replay.backtest import BacktestResult, BacktestSpec, load_run, run_backtest
from replay.digest import HASH_FORMAT
from replay.market import DataSource, market_events
from services.config import KeelConfig
from services.fleet import fleet_roles
from services.marketdata.sources import SourceError
from services.marketdata.synthetic import SyntheticMarket
from strategies.registry import StrategyError
from tests import scenario
from tests.factories import MINUTE, write_bar_file

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_BTC = SHARED_DATA / "binanceus-1m-2023-03" / "BTCUSDT.csv"
USER_ERRORS = (KeelError, SourceError, StrategyError)
RUN_FILES = ("run.json", "events.parquet", "trades.parquet", "equity.parquet", "metrics.json")
EMA_10_30 = {"kind": "ema", "fast": 10, "slow": 30, "mode": "long_short", "qty": 1}


# --- helpers ------------------------------------------------------------------------------------


def iso(ns: int) -> str:
    assert ns % 10**9 == 0
    return datetime.fromtimestamp(ns // 10**9, UTC).isoformat()


def ns_of(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp()) * 10**9


def csv_text(bars: list[Bar]) -> str:
    lines = ["open_time,open,high,low,close,volume"]
    for b in bars:
        lines.append(f"{iso(b.open_time)},{b.open!r},{b.high!r},{b.low!r},{b.close!r},{b.volume!r}")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, bars: list[Bar]) -> Path:
    path.write_text(csv_text(bars))
    return path


def synthetic(
    symbols: tuple[str, ...] = ("BTC/USDT",), bars: int = 3000, seed: int = 11
) -> dict[str, list[Bar]]:
    out: dict[str, list[Bar]] = {s: [] for s in symbols}
    for bar in SyntheticMarket(symbols=symbols, bars=bars, seed=seed).generate():
        out[bar.symbol].append(bar)
    return out


def make_config(
    params: dict | None = None,
    *,
    name: str = "ma_cross",
    fill: str = "next_open",
    fee_bps: float = 10.0,
    cash: float = 100_000.0,
    risk: dict | None = None,
) -> KeelConfig:
    return msgspec.convert(
        {
            "strategies": [
                {"name": name, "instance": "ma", "params": EMA_10_30 if params is None else params}
            ],
            "risk": risk or {},
            "execution": {"fill": fill, "fee_bps": fee_bps, "slippage_bps": 0.0},
            "portfolio": {"starting_cash": cash},
        },
        KeelConfig,
    )


def spec_of(config: KeelConfig, *sources: tuple[Path, str], **window: int) -> BacktestSpec:
    data = tuple(DataSource(location=str(path), symbol=symbol) for path, symbol in sources)
    return BacktestSpec(config=config, data=data, **window)


def read_events(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "events.parquet")


def decoded(run_dir: Path) -> list:
    return [decode(p.encode()) for p in read_events(run_dir)["payload"].to_list()]


def fills_of(events: list) -> list[ExecutionReport]:
    return [e for e in events if isinstance(e, ExecutionReport) and e.fill_qty > 0]


def without_timing(result: BacktestResult) -> BacktestResult:
    return msgspec.structs.replace(result, wall_s=0.0, bars_per_s=0.0)


# --- 1. the hand-computed scenario --------------------------------------------------------------

T = [scenario.T0 + (i + 1) * MINUTE for i in range(10)]  # bar close times

GOLDEN_EVENTS = [
    *[("portfolio", "EquitySnapshot", T[i]) for i in range(4)],
    # bar 5 (close 10): fast below slow -> target -1
    ("strategy-ma", "Signal", T[4]),
    ("portfolio", "EquitySnapshot", T[4]),
    ("risk", "OrderCommand", T[4]),
    ("execution", "ExecutionReport", T[4]),  # accepted
    # bar 6: the sell fills at its open; the bar's own snapshot comes before the fill's
    ("execution", "ExecutionReport", T[5]),
    ("portfolio", "EquitySnapshot", T[5]),
    ("portfolio", "PositionChanged", T[5]),
    ("portfolio", "EquitySnapshot", T[5]),
    ("portfolio", "EquitySnapshot", T[6]),
    # bar 8 (close 12): fast above slow -> target +1
    ("strategy-ma", "Signal", T[7]),
    ("portfolio", "EquitySnapshot", T[7]),
    ("risk", "OrderCommand", T[7]),
    ("execution", "ExecutionReport", T[7]),
    # bar 9: buy 2 at its open 12
    ("execution", "ExecutionReport", T[8]),
    ("portfolio", "EquitySnapshot", T[8]),
    ("portfolio", "PositionChanged", T[8]),
    ("portfolio", "EquitySnapshot", T[8]),
    ("portfolio", "EquitySnapshot", T[9]),
]


def scenario_spec(tmp_path: Path, fill: str = "next_open") -> BacktestSpec:
    data = write_csv(tmp_path / "scenario.csv", scenario.bars())
    config = msgspec.convert(tomllib.loads(scenario.CONFIG.replace("{fill}", fill)), KeelConfig)
    source = DataSource(location=str(data), symbol=scenario.SYMBOL, venue=scenario.VENUE)
    return BacktestSpec(config=config, data=(source,))


def test_golden_scenario_gives_the_hand_computed_run(tmp_path: Path) -> None:
    text = (write_csv(tmp_path / "check.csv", scenario.bars())).read_text()
    assert text.splitlines()[0] == "open_time,open,high,low,close,volume"
    assert text.splitlines()[1].startswith(iso(scenario.T0))

    run_dir = tmp_path / "run"
    result = run_backtest(scenario_spec(tmp_path), run_dir)

    assert (result.bars, result.signals, result.orders, result.fills) == (10, 2, 2, 2)
    assert (result.rejections, result.dead_letters, result.trades) == (0, 0, 1)
    assert result.final_equity == pytest.approx(scenario.EXPECTED_EQUITY, abs=1e-9)
    assert result.return_pct == pytest.approx((997.966 / 1000 - 1) * 100, abs=1e-9)
    assert result.fees == pytest.approx(0.034, abs=1e-12)
    assert result.interval == "1m"
    assert result.risk_events == []
    assert result.win_rate == 0.0 and result.profit_factor == 0.0
    assert len(result.result_hash) == 64

    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name

    # events.parquet: every output event, in order, each payload a valid event
    events = read_events(run_dir)
    assert events["seq"].to_list() == list(range(1, len(GOLDEN_EVENTS) + 1))
    assert list(zip(events["producer"], events["type"], events["ts"], strict=True)) == GOLDEN_EVENTS
    assert events["ts"].is_sorted()
    payloads = decoded(run_dir)
    assert [type(e).__name__ for e in payloads] == events["type"].to_list()
    assert [e.ts for e in payloads] == events["ts"].to_list()
    assert events["id"].n_unique() == len(events)

    signals = [e for e in payloads if isinstance(e, Signal)]
    assert [s.target_position for s in signals] == [-1.0, 1.0]
    fills = fills_of(payloads)
    assert [(f.side, f.fill_qty, f.fill_price) for f in fills] == [
        (side, qty, price) for side, qty, price, _ in scenario.EXPECTED_FILLS
    ]
    assert [f.fee for f in fills] == pytest.approx(
        [f[3] for f in scenario.EXPECTED_FILLS], abs=1e-12
    )
    assert [f.ts for f in fills] == [T[5], T[8]]
    snapshots = [e for e in payloads if isinstance(e, EquitySnapshot)]
    assert snapshots[-1].equity == pytest.approx(997.966, abs=1e-9)
    assert snapshots[-1].cash == pytest.approx(985.966, abs=1e-9)

    # equity.parquet: one point per bar close, the last snapshot at that ts
    equity = pl.read_parquet(run_dir / "equity.parquet")
    assert equity["ts"].to_list() == T
    assert equity["equity"].to_list() == pytest.approx(
        [1000, 1000, 1000, 1000, 1000, 1000.99, 999.99, 997.99, 998.966, 997.966], abs=1e-9
    )

    # trades.parquet: the short closed at a loss
    trades = pl.read_parquet(run_dir / "trades.parquet").to_dicts()
    assert len(trades) == 1
    trade = trades[0]
    assert (trade["side"], trade["qty"], trade["entry_price"], trade["exit_price"]) == (
        "short",
        1.0,
        10.0,
        12.0,
    )
    assert (trade["entry_ts"], trade["exit_ts"]) == (T[5], T[8])
    assert trade["fees"] == pytest.approx(0.010 + 0.012, abs=1e-12)
    assert trade["pnl"] == pytest.approx(-2.0 - 0.022, abs=1e-12)

    # run.json and metrics.json hold the spec and the result
    record = load_run(run_dir)
    assert record.result == result
    assert (
        msgspec.json.decode((run_dir / "metrics.json").read_bytes(), type=BacktestResult) == result
    )


def test_golden_scenario_with_close_fills_gives_the_same_prices(tmp_path: Path) -> None:
    """Opens equal the previous close, so filling at the signal bar's close changes only times."""
    result = run_backtest(scenario_spec(tmp_path, fill="close"), tmp_path / "run")
    fills = fills_of(decoded(tmp_path / "run"))
    assert [(f.side, f.fill_qty, f.fill_price) for f in fills] == [
        (side, qty, price) for side, qty, price, _ in scenario.EXPECTED_FILLS
    ]
    assert [f.ts for f in fills] == [T[4], T[7]]
    assert result.final_equity == pytest.approx(scenario.EXPECTED_EQUITY, abs=1e-9)


def test_result_hash_is_reproducible_from_the_stored_events(tmp_path: Path) -> None:
    """docs/replay.md "The result hash": per producer in canonical order, sha256 over
    msgpack([subject, event]) of its stored events; dead letters left out."""
    data = write_bar_file(tmp_path / "btc.parquet", synthetic(bars=600)["BTC/USDT"])
    spec = spec_of(make_config(), (data, "BTC/USDT"))
    result = run_backtest(spec, tmp_path / "run")
    assert result.fills > 0 and result.hash_format == HASH_FORMAT == 2

    events = read_events(tmp_path / "run").filter(pl.col("type") != "DeadLetter")
    total = hashlib.sha256()
    for producer in [role.name for role in fleet_roles(spec.config)]:
        own = hashlib.sha256()
        for row in events.filter(pl.col("producer") == producer).iter_rows(named=True):
            own.update(msgspec.msgpack.encode([row["subject"], decode(row["payload"].encode())]))
        total.update(f"{producer}={own.hexdigest()}\n".encode())
    assert total.hexdigest() == result.result_hash


# --- 2. determinism -----------------------------------------------------------------------------


def test_same_spec_same_hash_and_a_param_changes_it(tmp_path: Path) -> None:
    data = write_bar_file(tmp_path / "btc.parquet", synthetic(bars=1500)["BTC/USDT"])
    spec = spec_of(make_config(), (data, "BTC/USDT"))

    first = run_backtest(spec, tmp_path / "a")
    second = run_backtest(spec, tmp_path / "b")
    unrecorded = run_backtest(spec)
    assert first.fills > 10
    assert first.result_hash == second.result_hash == unrecorded.result_hash
    assert without_timing(first) == without_timing(second) == without_timing(unrecorded)
    assert read_events(tmp_path / "a").drop("seq").equals(read_events(tmp_path / "b").drop("seq"))

    for changed in (
        make_config({**EMA_10_30, "slow": 31}),
        make_config({**EMA_10_30, "qty": 2}),
        make_config(fee_bps=5.0),
        make_config(cash=50_000.0),
    ):
        other = run_backtest(msgspec.structs.replace(spec, config=changed))
        assert other.result_hash != first.result_hash

    # keel-level replay: the stored spec re-runs to the same hash
    record = load_run(tmp_path / "a")
    assert record.spec == spec
    assert record.result.result_hash == first.result_hash
    assert run_backtest(record.spec).result_hash == first.result_hash


def test_pinned_data_that_changed_is_refused(tmp_path: Path) -> None:
    bars = synthetic(bars=200)["BTC/USDT"]
    data = write_csv(tmp_path / "btc.csv", bars)
    spec = spec_of(make_config(), (data, "BTC/USDT"))
    pinned = msgspec.structs.replace(spec, data=tuple(s.with_digest() for s in spec.data))
    assert pinned.data[0].sha256
    run_backtest(pinned, tmp_path / "run")
    assert (
        run_backtest(load_run(tmp_path / "run").spec).result_hash == run_backtest(spec).result_hash
    )

    write_csv(data, bars[:-1])
    with pytest.raises(KeelError, match="changed"):
        run_backtest(load_run(tmp_path / "run").spec)


# --- 3. an independent numpy reference of the equity curve -------------------------------------


def ema(values: np.ndarray, period: int) -> np.ndarray:
    """EMA seeded by the SMA of the first ``period`` values; NaN while warming up.

    The recursion is the one Python loop allowed here; everything else is vectorised.
    """
    out = np.full(len(values), np.nan)
    if len(values) < period:
        return out
    alpha = 2.0 / (period + 1)
    value = float(np.cumsum(values[:period])[-1]) / period  # sequential sum, as a running total
    out[period - 1] = value
    for i in range(period, len(values)):
        value += alpha * (float(values[i]) - value)
        out[i] = value
    return out


def reference_curve(
    frame: pl.DataFrame,
    *,
    fast: int,
    slow: int,
    qty: float,
    fee_bps: float,
    cash0: float,
) -> dict[str, np.ndarray]:
    """ma_cross long/short, market orders at the crossing bar's close filled at the next open."""
    open_ = frame["open"].to_numpy()
    high = frame["high"].to_numpy()
    low = frame["low"].to_numpy()
    close = frame["close"].to_numpy()
    n = len(close)
    index = np.arange(n)

    diff = ema(close, fast) - ema(close, slow)
    raw = np.where(np.isnan(diff), 0.0, np.sign(diff))
    # ties keep the previous side: forward-fill the last nonzero side
    last = np.maximum.accumulate(np.where(raw != 0, index, -1))
    side = np.where(last >= 0, raw[np.maximum(last, 0)], 0.0)
    established = side != 0
    # a signal is a change of side after the first established side
    change = np.zeros(n, dtype=bool)
    change[1:] = established[:-1] & (side[1:] != side[:-1])
    started = np.cumsum(change) > 0
    target = np.where(started, qty * side, 0.0)

    position = np.zeros(n)
    position[1:] = target[:-1]  # the order at bar t's close fills at bar t+1's open
    delta = np.diff(position, prepend=0.0)
    price = np.clip(open_, low, high)
    fee = price * np.abs(delta) * fee_bps / 10_000.0
    cost = np.where(delta != 0, delta * price + fee, 0.0)
    cash = np.cumsum(np.concatenate(([cash0], -cost)))[1:]
    equity = cash + position * close
    return {
        "equity": equity,
        "position": position,
        "fill_bars": np.flatnonzero(delta != 0),
        "fill_price": price[delta != 0],
        "fill_delta": delta[delta != 0],
        "fee": fee[delta != 0],
        "signals": np.flatnonzero(change),
    }


def check_against_reference(run_dir: Path, result: BacktestResult, bars: pl.DataFrame) -> dict:
    ref = reference_curve(bars, fast=10, slow=30, qty=1.0, fee_bps=10.0, cash0=100_000.0)
    close_times = (bars["open_time"].cast(pl.Int64) + 60 * 10**9).to_list()

    equity = pl.read_parquet(run_dir / "equity.parquet")
    assert equity["ts"].to_list() == close_times
    np.testing.assert_allclose(equity["equity"].to_numpy(), ref["equity"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        equity["gross_exposure"].to_numpy(),
        np.abs(ref["position"] * bars["close"].to_numpy()),
        rtol=0,
        atol=1e-9,
    )
    assert result.final_equity == pytest.approx(ref["equity"][-1], abs=1e-9)
    assert result.signals == len(ref["signals"])

    fills = fills_of(decoded(run_dir))
    assert len(fills) == result.fills == len(ref["fill_bars"])
    assert [f.ts for f in fills] == [close_times[i] for i in ref["fill_bars"]]
    assert [f.fill_price for f in fills] == ref["fill_price"].tolist()
    assert [f.fill_qty if f.side == "buy" else -f.fill_qty for f in fills] == ref[
        "fill_delta"
    ].tolist()
    np.testing.assert_allclose([f.fee for f in fills], ref["fee"], rtol=0, atol=1e-12)
    assert result.fees == pytest.approx(ref["fee"].sum(), abs=1e-9)
    return ref


def test_equity_curve_matches_an_independent_numpy_reference(tmp_path: Path) -> None:
    data = write_bar_file(tmp_path / "btc.parquet", synthetic(bars=3000, seed=11)["BTC/USDT"])
    run_dir = tmp_path / "run"
    result = run_backtest(spec_of(make_config(), (data, "BTC/USDT")), run_dir)
    bars = pl.read_parquet(data)  # the same bars, read without Keel

    ref = check_against_reference(run_dir, result, bars)
    # the comparison is meaningful: both sides held, many round trips
    assert len(ref["fill_bars"]) > 40
    assert (ref["position"] > 0).any() and (ref["position"] < 0).any()
    assert result.bars == 3000 and result.dead_letters == 0


def test_the_curve_keeps_the_snapshot_after_a_fill(tmp_path: Path) -> None:
    """On a fill bar the bar's own snapshot comes first and the fill's second, same ts."""
    data = write_bar_file(tmp_path / "btc.parquet", synthetic(bars=600, seed=3)["BTC/USDT"])
    run_dir = tmp_path / "run"
    run_backtest(spec_of(make_config(), (data, "BTC/USDT")), run_dir)
    events = read_events(run_dir)
    fill_ts = {f.ts for f in fills_of(decoded(run_dir))}
    assert fill_ts
    snaps = events.filter(pl.col("type") == "EquitySnapshot")
    per_ts = snaps.group_by("ts", maintain_order=True).agg(pl.col("payload"))
    curve = dict(pl.read_parquet(run_dir / "equity.parquet").select("ts", "equity").iter_rows())
    for ts, payloads in per_ts.iter_rows():
        assert len(payloads) == (2 if ts in fill_ts else 1)
        first, last = (decode(p.encode()) for p in (payloads[0], payloads[-1]))
        assert curve[ts] == last.equity
        if ts in fill_ts:
            assert first.equity != last.equity  # the fee at least


# --- 4. several sources -------------------------------------------------------------------------


def test_two_sources_with_identical_timestamps_merge_deterministically(tmp_path: Path) -> None:
    market = synthetic(("AAA/USDT", "BBB/USDT"), bars=1200, seed=5)
    a = write_bar_file(tmp_path / "a.parquet", market["AAA/USDT"])
    b = write_bar_file(tmp_path / "b.parquet", market["BBB/USDT"])
    config = make_config({**EMA_10_30, "fast": 5, "slow": 15})
    spec = spec_of(config, (a, "AAA/USDT"), (b, "BBB/USDT"))

    first = run_backtest(spec, tmp_path / "one")
    second = run_backtest(spec, tmp_path / "two")
    assert first.result_hash == second.result_hash
    assert first.bars == 2400

    events = read_events(tmp_path / "one")
    assert events["ts"].is_sorted()  # every output is caused by a bar, in event-time order

    # each symbol trades exactly as it does alone, and whichever file comes first
    def by_symbol(run_dir: Path) -> dict[str, list[tuple]]:
        out: dict[str, list[tuple]] = {}
        for f in fills_of(decoded(run_dir)):
            out.setdefault(f.symbol, []).append(
                (f.ts, f.side, f.fill_qty, f.fill_price, f.fee, f.client_order_id)
            )
        return out

    combined = by_symbol(tmp_path / "one")
    assert set(combined) == {"AAA/USDT", "BBB/USDT"}
    for path, symbol in ((a, "AAA/USDT"), (b, "BBB/USDT")):
        run_backtest(spec_of(config, (path, symbol)), tmp_path / symbol.replace("/", "-"))
        assert by_symbol(tmp_path / symbol.replace("/", "-"))[symbol] == combined[symbol]
    swapped = run_backtest(spec_of(config, (b, "BBB/USDT"), (a, "AAA/USDT")), tmp_path / "swap")
    assert by_symbol(tmp_path / "swap") == combined
    assert (swapped.signals, swapped.orders, swapped.fills) == (
        first.signals,
        first.orders,
        first.fills,
    )
    assert swapped.final_equity == pytest.approx(first.final_equity, rel=1e-12)


def test_ties_follow_the_order_of_the_sources(tmp_path: Path) -> None:
    """Same bars under two names: every signal coincides, and the first source goes first."""
    bars = synthetic(bars=400, seed=9)["BTC/USDT"]
    first = write_csv(tmp_path / "zzz.csv", bars)
    second = write_csv(tmp_path / "aaa.csv", bars)
    config = make_config()

    merged = list(
        market_events(
            [DataSource(str(first), symbol="ZZZ/USD"), DataSource(str(second), symbol="AAA/USD")]
        )
    )
    assert len(merged) == 800
    assert [b.symbol for b in merged] == ["ZZZ/USD", "AAA/USD"] * 400
    assert [b.ts for b in merged] == sorted(b.ts for b in merged)

    for order in (("ZZZ/USD", "AAA/USD"), ("AAA/USD", "ZZZ/USD")):
        paths = {"ZZZ/USD": first, "AAA/USD": second}
        run_dir = tmp_path / order[0].replace("/", "-")
        result = run_backtest(spec_of(config, *((paths[s], s) for s in order)), run_dir)
        signals = [e for e in decoded(run_dir) if isinstance(e, Signal)]
        assert result.signals == len(signals) > 4
        assert [s.symbol for s in signals] == list(order) * (len(signals) // 2)


def test_sources_of_different_intervals_interleave_by_event_time(tmp_path: Path) -> None:
    minute = synthetic(("AAA/USDT",), bars=90, seed=1)["AAA/USDT"]
    five = [
        b for b in SyntheticMarket(symbols=("BBB/USDT",), interval="5m", bars=18, seed=1).generate()
    ]
    a = write_csv(tmp_path / "a.csv", minute)
    b = write_csv(tmp_path / "b.csv", five)
    merged = list(market_events([DataSource(str(b)), DataSource(str(a))]))
    assert len(merged) == 108
    keys = [(bar.ts, bar.symbol) for bar in merged]
    # ties (a 5m close is also a 1m close) keep the source order: b before a
    assert keys == sorted(keys, key=lambda k: (k[0], k[1] != "b"))
    assert {bar.interval for bar in merged if bar.symbol == "b"} == {"5m"}


# --- 5. time windows ----------------------------------------------------------------------------


def test_start_and_end_select_bars_by_open_time(tmp_path: Path) -> None:
    bars = synthetic(bars=400, seed=4)["BTC/USDT"]
    data = write_bar_file(tmp_path / "btc.parquet", bars)
    config = make_config({**EMA_10_30, "fast": 3, "slow": 8})
    opens = [b.open_time for b in bars]

    def window(**kw: int) -> BacktestResult:
        return run_backtest(spec_of(config, (data, "BTC/USDT"), **kw), tmp_path / "w")

    result = window(start=opens[100], end=opens[250])
    assert result.bars == 150  # start inclusive, end exclusive
    curve = pl.read_parquet(tmp_path / "w" / "equity.parquet")
    assert curve["ts"].to_list() == [b.close_time for b in bars[100:250]]
    assert window(start=opens[100]).bars == 300
    assert window(end=opens[250]).bars == 250
    assert window(start=opens[100] + 1, end=opens[250] + 1).bars == 150
    assert window(start=opens[0] - 10**12, end=opens[-1] + 10**12).bars == 400

    # the same bars cut out into their own file give the same run
    cut = write_bar_file(tmp_path / "cut.parquet", bars[100:250])
    windowed = window(start=opens[100], end=opens[250])
    assert windowed.signals > 0
    assert run_backtest(spec_of(config, (cut, "BTC/USDT"))).result_hash == windowed.result_hash

    for empty in ({"start": opens[100], "end": opens[100]}, {"start": opens[-1] + 1}):
        with pytest.raises(KeelError, match="no bars"):
            window(**empty)


# --- 6. risk events -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("risk", "rule"),
    [({"max_order_notional": 1.0}, "max_order_notional"), ({"max_position": 0.5}, "max_position")],
)
def test_rejections_become_risk_events(tmp_path: Path, risk: dict, rule: str) -> None:
    data = write_bar_file(tmp_path / "btc.parquet", synthetic(bars=800, seed=2)["BTC/USDT"])
    run_dir = tmp_path / "run"
    result = run_backtest(spec_of(make_config(risk=risk), (data, "BTC/USDT")), run_dir)

    assert result.signals > 3
    assert result.rejections == result.signals  # nothing fills, so every signal is a new delta
    assert (result.orders, result.fills, result.trades) == (0, 0, 0)
    assert result.final_equity == 100_000.0
    assert len(result.risk_events) == result.rejections
    signal_ts = [e.ts for e in decoded(run_dir) if isinstance(e, Signal)]
    for event, ts in zip(result.risk_events, signal_ts, strict=True):
        assert event.ts.endswith("Z")
        assert ns_of(event.ts) == ts
        assert (event.rule, event.action) == (rule, "reject")
        assert "BTC/USDT" in event.detail
    decisions = read_events(run_dir).filter(pl.col("type") == "RiskDecision")
    assert decisions.height == result.rejections

    stored = load_run(run_dir).result.risk_events
    assert stored == result.risk_events


# --- 7. bad input -------------------------------------------------------------------------------


def test_bad_strategy_or_params_raise_strategy_error(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "s.csv", scenario.bars())
    cases = [
        (make_config(name="nope"), "unknown strategy 'nope'"),
        (make_config({**EMA_10_30, "fast": "x"}), "fast"),
        (make_config({**EMA_10_30, "fast": 30, "slow": 10}), "must be below"),
        (make_config({**EMA_10_30, "bogus": 1}), "bogus"),
        (make_config({**EMA_10_30, "qty": 0}), "qty"),
        (make_config({**EMA_10_30, "kind": "wma"}), "kind"),
    ]
    for config, needle in cases:
        with pytest.raises(StrategyError) as info:
            run_backtest(spec_of(config, (data, "X")), tmp_path / "run")
        assert needle in str(info.value)
        assert "\n" not in str(info.value)


def _bad_files(tmp_path: Path) -> list[tuple[Path, type[Exception], str, dict]]:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n  \n")
    garbled = tmp_path / "garbled.csv"
    garbled.write_bytes(bytes(range(256)) * 8)
    fake_parquet = tmp_path / "fake.parquet"
    fake_parquet.write_bytes(b"PAR1" + b"\x00\x13garbage" * 50)
    not_parquet = tmp_path / "text.parquet"
    not_parquet.write_text("open_time,open,high,low,close,volume\n")
    header_only = tmp_path / "header.csv"
    header_only.write_text("open_time,open,high,low,close,volume\n")
    no_time = tmp_path / "notime.csv"
    no_time.write_text("a,b,c\n1,2,3\n")
    bad_time = tmp_path / "badtime.csv"
    bad_time.write_text(csv_text(scenario.bars()).replace(iso(scenario.T0), "yesterday", 1))
    one_row = tmp_path / "one.csv"
    one_row.write_text("\n".join(csv_text(scenario.bars()).splitlines()[:2]) + "\n")
    invalid = tmp_path / "invalid.csv"
    invalid.write_text(
        "open_time,open,high,low,close,volume\n"
        "2024-01-01T00:00:00Z,10,9,11,10,1\n"
        "2024-01-01T00:01:00Z,x,11,9,10,1\n"
    )
    return [
        (empty, SourceError, "empty", {}),
        (blank, SourceError, "empty", {}),
        (garbled, SourceError, "garbled.csv", {}),
        (fake_parquet, SourceError, "fake.parquet", {}),
        (not_parquet, SourceError, "text.parquet", {}),
        (header_only, SourceError, "no data rows", {}),
        (no_time, SourceError, "no time column", {}),
        (bad_time, SourceError, "yesterday", {}),
        (one_row, SourceError, "interval", {}),
        (invalid, SourceError, "no valid rows", {}),
        (tmp_path / "missing.csv", KeelError, "missing.csv", {}),
        (tmp_path, SourceError, "not a regular file", {}),
        (write_csv(tmp_path / "ok.csv", scenario.bars()), SourceError, "2x", {"interval": "2x"}),
    ]


def test_bad_data_raises_one_line_user_errors(tmp_path: Path) -> None:
    config = make_config()
    for path, kind, needle, extra in _bad_files(tmp_path):
        source = DataSource(location=str(path), symbol="X", **extra)
        with pytest.raises(USER_ERRORS) as info:
            run_backtest(BacktestSpec(config=config, data=(source,)), tmp_path / "run")
        assert isinstance(info.value, kind), (path, info.value)
        assert needle in str(info.value), (path, info.value)
        assert "\n" not in str(info.value)


def test_load_run_of_a_non_run_or_damaged_directory(tmp_path: Path) -> None:
    with pytest.raises(KeelError, match="not a run directory"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text('{"spec": 1}')
    with pytest.raises(KeelError, match="damaged"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(KeelError, match="damaged"):
        load_run(tmp_path)


def test_duplicate_and_out_of_order_bars_are_sorted_and_the_first_kept(tmp_path: Path) -> None:
    bars = synthetic(bars=500, seed=6)["BTC/USDT"]
    config = make_config({**EMA_10_30, "fast": 4, "slow": 12})
    clean = run_backtest(spec_of(config, (write_csv(tmp_path / "clean.csv", bars), "BTC/USDT")))
    assert clean.fills > 5

    header, *rows = csv_text(bars).splitlines()
    # reversed order, then later copies of some open times with other (valid) prices
    scaled = [
        msgspec.structs.replace(
            b, open=b.open * 1.5, high=b.high * 1.5, low=b.low * 1.5, close=b.close * 1.5
        )
        for b in bars[::7]
    ]
    messy = [header, *reversed(rows), *csv_text(scaled).splitlines()[1:]]
    path = tmp_path / "messy.csv"
    path.write_text("\n".join(messy) + "\n")
    result = run_backtest(spec_of(config, (path, "BTC/USDT")))
    assert result.bars == 500
    assert result.result_hash == clean.result_hash
    assert without_timing(result) == without_timing(clean)


def test_gaps_are_kept_not_filled(tmp_path: Path) -> None:
    bars = synthetic(bars=600, seed=8)["BTC/USDT"]
    sparse = bars[:200] + bars[260:400] + bars[401:]
    data = write_bar_file(tmp_path / "sparse.parquet", sparse)
    run_dir = tmp_path / "run"
    result = run_backtest(spec_of(make_config(), (data, "BTC/USDT")), run_dir)
    assert result.bars == len(sparse) == 539
    assert result.interval == "1m"
    assert result.dead_letters == 0
    curve = pl.read_parquet(run_dir / "equity.parquet")
    assert curve["ts"].to_list() == [b.close_time for b in sparse]


# --- 8. real data -------------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_BTC.is_file(), reason="../shared/data is not present")
def test_real_btcusdt_minute_bars(tmp_path: Path) -> None:
    spec = BacktestSpec(config=make_config(), data=(DataSource(str(REAL_BTC)),))
    run_dir = tmp_path / "run"
    first = run_backtest(spec, run_dir)
    second = run_backtest(spec)
    assert first.bars == 30240
    assert first.interval == "1m"
    assert first.dead_letters == 0
    assert first.fills > 100
    assert first.result_hash == second.result_hash
    assert without_timing(first) == without_timing(second)

    # the same independent reference holds on real bars
    frame = pl.read_csv(REAL_BTC, try_parse_dates=True).with_columns(
        pl.col("open_time").dt.convert_time_zone("UTC").dt.cast_time_unit("ns")
    )
    check_against_reference(run_dir, first, frame)
