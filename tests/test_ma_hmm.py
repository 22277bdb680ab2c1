"""MA + HMM ensemble: scripted scenarios on a hand-built regime model (threshold, exits,
cooldown, calibration and its tuning events), snapshots, look-ahead, params and model
loading, and a calibration change in a backtest's events file replaying identically."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from contracts.codec import encode
from contracts.events import Bar, ParamsTuned, Signal
from contracts.system_events import DeadLetter
from eventstore.bus import Bus
from eventstore.model_store import put_model, write_model_file
from eventstore.server import URL_ENV, EmbeddedServer
from replay.backtest import BacktestSpec, load_run, run_backtest
from replay.bus_replay import bus_replay
from replay.engine import ReplayEngine
from replay.external import EventFile
from replay.market import DataSource
from services.config import KeelConfig, StrategyConfig
from services.marketdata.synthetic import SyntheticMarket
from services.strategy.calibration_file import CalibrationError, read_calibrations
from services.strategy.compose import compose_strategy
from services.strategy.host import strategy_role
from strategies.ma_hmm import Calibration, Calibrations, MaHmm, MaHmmParams
from strategies.regime.features import FeatureSpec
from strategies.regime.filter import RegimeFilter
from strategies.regime.model import RegimeModel, TrainingRange
from strategies.regime.training import train
from strategies.registry import StrategyError, build_strategy
from tests.factories import bars_from_closes
from tests.test_backtest import csv_text

MINUTE = 60_000_000_000
T0 = 1_700_000_000_000_000_000
SYMBOL = "BTC/USDT"


def hand_model(name: str = "hand", tag: str = "v1") -> RegimeModel:
    """Returns only, standardised by 0.1%: bear -0.2%, range 0, bull +0.2% per bar, each
    with a 0.1% sd; states stay with probability 0.9."""
    stay, move = 0.9, 0.05
    return RegimeModel(
        name=name,
        tag=tag,
        features=FeatureSpec(wicks=False, center=(0.0,), scale=(0.001,)),
        n_states=3,
        covariance_type="full",
        startprob=(1 / 3, 1 / 3, 1 / 3),
        transmat=((stay, move, move), (move, stay, move), (move, move, stay)),
        means=((-2.0,), (0.0,), (2.0,)),
        covars=(((1.0,),), ((1.0,),), ((1.0,),)),
        labels=("bear", "range", "bull"),
        training=TrainingRange(
            venue="test", symbols=(SYMBOL,), interval="1m", first_bar=0, last_bar=0, bars=0
        ),
        log_likelihood=0.0,
        seed=0,
    )


def path(*legs: tuple[int, float]) -> list[Bar]:
    """Bars from (count, log return per bar) legs, starting at 100."""
    returns = [r for count, r in legs for _ in range(count)]
    closes = itertools.accumulate(returns, lambda close, r: close * math.exp(r), initial=100.0)
    return bars_from_closes(list(closes), symbol=SYMBOL)


TREND = path((10, 0.0), (30, 0.003), (30, -0.003))
AMBIGUOUS = path((10, 0.0), (40, 0.001))
"""+0.1% a bar: halfway between range and bull, so P(bull) stays near one half."""
WAVES = path((10, 0.0), *[(8, 0.003), (8, -0.003)] * 6)


def strategy(
    model: RegimeModel | None = None, calibrations: Calibrations | None = None, **params: object
) -> MaHmm:
    base: dict[str, object] = {"model_file": "unused", "kind": "sma", "fast": 3, "slow": 6}
    parsed = msgspec.convert({**base, **params}, MaHmmParams)
    return MaHmm("mh", parsed, model or hand_model(), calibrations)


def run(strat: object, bars: Sequence[Bar]) -> list[tuple[int, Signal]]:
    """(bar index, signal) for every signal."""
    return [(i, s) for i, bar in enumerate(bars) for s in strat.on_bar(bar)]  # type: ignore[attr-defined]


# --- the fusion rule ------------------------------------------------------------------------


def test_trend_goes_long_then_flat_in_long_only() -> None:
    signals = run(strategy(), TREND)
    assert [s.target_position for _, s in signals] == [1.0, 0.0]
    (entry_at, entry), (exit_at, _) = signals
    assert (entry_at, exit_at) == (11, 41)
    assert entry.confidence >= 0.6 and entry.model_tag == "hand:v1"
    assert entry.reason.startswith("sma 3/6 up, P(bull)=")
    assert entry.ts == TREND[entry_at].close_time


def test_trend_goes_long_then_short_in_long_short() -> None:
    """The regime turns bear on the first falling bar (41), before the averages cross: the
    long goes flat there, and the short waits out the 10-bar cooldown (42-51)."""
    signals = run(strategy(mode="long_short", qty=2.0), TREND)
    assert [(i, s.target_position) for i, s in signals] == [(11, 2.0), (41, 0.0), (52, -2.0)]
    assert all(s.confidence >= 0.6 for _, s in signals)
    quick = run(strategy(mode="long_short", qty=2.0, cooldown_bars=0), TREND)
    assert [(i, s.target_position) for i, s in quick] == [(11, 2.0), (41, 0.0), (43, -2.0)]


def test_signals_follow_the_documented_rule() -> None:
    """Every signal re-derived from the filter's readings and the averages."""
    strat = strategy(mode="long_short", threshold=0.7, cooldown_bars=0)
    readings = RegimeFilter(hand_model()).run(WAVES)
    closes = [b.close for b in WAVES]
    side, expected = 0, []
    for i, reading in enumerate(readings):
        if reading is None or i < 5:
            continue
        fast, slow = sum(closes[i - 2 : i + 1]) / 3, sum(closes[i - 5 : i + 1]) / 6
        vote = (fast > slow) - (fast < slow)
        if vote > 0 and reading.bull >= 0.7:
            target = 1
        elif vote < 0 and reading.bear >= 0.7:
            target = -1
        elif (side > 0 and (vote < 0 or reading.bear >= 0.7)) or (
            side < 0 and (vote > 0 or reading.bull >= 0.7)
        ):
            target = 0
        else:
            continue
        if target != side:
            expected.append((i, float(target)))
            side = target
    got = [(i, s.target_position) for i, s in run(strat, WAVES)]
    assert got == expected and len(got) >= 10


def test_threshold_decides_on_an_ambiguous_regime() -> None:
    assert run(strategy(threshold=0.6), AMBIGUOUS) == []
    signals = run(strategy(threshold=0.45), AMBIGUOUS)
    assert [s.target_position for _, s in signals] == [1.0]
    assert 0.45 <= signals[0][1].confidence < 0.6


def test_cooldown_spaces_signals() -> None:
    free = [i for i, _ in run(strategy(mode="long_short", cooldown_bars=0), WAVES)]
    cooled = [i for i, _ in run(strategy(mode="long_short", cooldown_bars=12), WAVES)]
    assert len(cooled) < len(free)
    assert min(b - a for a, b in itertools.pairwise(free)) <= 12
    assert all(b - a > 12 for a, b in itertools.pairwise(cooled))


def test_calibration_gain_size_and_cooldown_scale() -> None:
    strat = strategy(calibrations=Calibrations(symbols={SYMBOL: Calibration(confidence_gain=1.3)}))
    signals = run(strat, AMBIGUOUS)
    assert [s.target_position for _, s in signals] == [1.0]
    assert signals[0][1].confidence >= 0.6 and "gain 1.3" in signals[0][1].reason

    other = strategy(
        calibrations=Calibrations(symbols={"ETH/USDT": Calibration(confidence_gain=1.3)})
    )
    assert run(other, AMBIGUOUS) == []

    sized = strategy(qty=2.0, calibrations=Calibrations(Calibration(quote_multiplier=0.25)))
    assert [s.target_position for _, s in run(sized, TREND)] == [0.5, 0.0]

    cooled = strategy(
        mode="long_short",
        cooldown_bars=12,
        calibrations=Calibrations(Calibration(cooldown_scale=0)),
    )
    free = strategy(mode="long_short", cooldown_bars=0)
    assert [i for i, _ in run(cooled, WAVES)] == [i for i, _ in run(free, WAVES)]


# --- state ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained() -> RegimeModel:
    return train(
        list(SyntheticMarket(symbols=("SOL/USDT",), bars=4_000, seed=22).generate()), states=3
    )


def test_snapshot_restore_mid_stream_continues_identically(trained: RegimeModel) -> None:
    bars = list(SyntheticMarket(symbols=("SOL/USDT", "ETH/USDT"), bars=3_000, seed=5).generate())
    uninterrupted = strategy(trained, mode="long_short")
    whole = [s for bar in bars for s in uninterrupted.on_bar(bar)]
    first = strategy(trained, mode="long_short")
    head = [s for bar in bars[:2_501] for s in first.on_bar(bar)]
    second = strategy(trained, mode="long_short")
    second.restore(first.snapshot())
    tail = [s for bar in bars[2_501:] for s in second.on_bar(bar)]
    assert head + tail == whole and len(whole) > 20
    assert second.snapshot() == uninterrupted.snapshot()


def test_restore_under_another_model_restarts_the_regime_filters(trained: RegimeModel) -> None:
    before = strategy(hand_model())
    run(before, TREND[:30])
    after = strategy(trained)
    after.restore(before.snapshot())
    state = after.state
    assert state.model == trained.key
    series = next(iter(state.series.values()))
    assert series.regime.probs == [] and series.side == 1
    assert run(after, TREND[30:]) is not None


def test_no_look_ahead_in_decisions(trained: RegimeModel) -> None:
    bars = list(SyntheticMarket(symbols=("SOL/USDT",), bars=3_000, seed=6).generate())
    other = list(SyntheticMarket(symbols=("SOL/USDT",), bars=3_000, seed=7).generate())
    t = 2_000
    changed = bars[: t + 1] + [
        msgspec.structs.replace(
            b, open=b.open * 2, high=b.high * 2, low=b.low * 2, close=b.close * 2
        )
        for b in other[t + 1 :]
    ]
    first = run(strategy(trained, mode="long_short"), bars)
    second = run(strategy(trained, mode="long_short"), changed)
    assert [x for x in first if x[0] <= t] == [x for x in second if x[0] <= t]
    assert [x for x in first if x[0] > t] != [x for x in second if x[0] > t]


# --- params, model loading, calibration files ------------------------------------------------


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "hand.model"
    write_model_file(hand_model(), path)
    return path


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "exactly one of model"),
        ({"model": "a", "model_file": "b"}, "exactly one of model"),
        ({"model": "bad:tag:x"}, "model tag"),
        ({"model_file": "f", "fast": "30", "slow": "10"}, "must be below slow"),
        ({"model_file": "f", "threshold": "0"}, "threshold"),
        ({"model_file": "f", "threshold": "1.5"}, "threshold"),
        ({"model_file": "f", "cooldown_bars": "-1"}, "cooldown_bars"),
        ({"model_file": "f", "qty": "0"}, "qty"),
        ({"model_file": "f", "colour": "red"}, "colour"),
        ({"model_file": "/no/such.model"}, "not found"),
    ],
)
def test_bad_params_are_one_line(params: dict[str, str], message: str) -> None:
    with pytest.raises(StrategyError, match=message) as info:
        compose_strategy("ma_hmm", params)
    assert "\n" not in str(info.value)


def test_model_file_and_string_params(model_file: Path) -> None:
    strat = compose_strategy(
        "ma_hmm",
        {"model_file": str(model_file), "kind": "sma", "fast": "3", "slow": "6", "qty": "1"},
        "mh",
    )
    assert strat.name == "mh" and isinstance(strat, MaHmm)
    assert [s.target_position for _, s in run(strat, TREND)] == [1.0, 0.0]


def test_the_registry_build_is_pure_and_needs_the_model_given() -> None:
    params = {"model_file": "/no/such.model", "kind": "sma", "fast": "3", "slow": "6"}
    with pytest.raises(StrategyError, match="no regime model given"):
        build_strategy("ma_hmm", params)


def test_bad_calibration_file(model_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cal.json"
    bad.write_text('{"*": {"confidence_gain": -1}}')
    with pytest.raises(StrategyError, match="calibration"):
        compose_strategy("ma_hmm", {"model_file": str(model_file), "calibration": str(bad)})
    with pytest.raises(StrategyError, match="calibration"):
        compose_strategy(
            "ma_hmm", {"model_file": str(model_file), "calibration": str(tmp_path / "none.toml")}
        )


def test_calibration_files_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "cal.toml"
    toml.write_text(
        '["*"]\nconfidence_gain = 1.1\n\n["BTC/USDT"]\nquote_multiplier = 0.5\ncooldown_scale = 2\n'
    )
    table = read_calibrations(toml)
    assert table.of("ETH/USDT") == Calibration(confidence_gain=1.1)
    assert table.of(SYMBOL) == Calibration(quote_multiplier=0.5, cooldown_scale=2.0)
    js = tmp_path / "cal.json"
    js.write_text(json.dumps({"BTC/USDT": {"confidence_gain": 1.2, "typo": 1}}))
    with pytest.raises(CalibrationError, match="typo"):
        read_calibrations(js)


# --- calibration changes as events --------------------------------------------------------------


def tuned(ts: int, symbol: str, param: str, new: float, old: float = 1.0) -> ParamsTuned:
    return ParamsTuned(ts=ts, strategy="mh", symbol=symbol, param=param, old=old, new=new)


def test_tuning_events_set_one_value_each_and_travel_in_the_snapshot() -> None:
    strat = strategy()
    assert strat.on_event(tuned(1, "*", "confidence_gain", 1.2)) == ()
    strat.on_event(tuned(2, SYMBOL, "quote_multiplier", 2.0))
    # the symbol's own entry starts from what it had in force (the default's gain 1.2)
    assert strat.state.calibrations.of(SYMBOL) == Calibration(1.2, 2.0, 1.0)
    assert strat.state.calibrations.of("ETH/USDT") == Calibration(confidence_gain=1.2)
    strat.on_event(tuned(3, "*", "confidence_gain", 1.5))
    assert strat.state.calibrations.of(SYMBOL).confidence_gain == 1.2  # its own entry
    restored = strategy()
    restored.restore(strat.snapshot())
    assert restored.state.calibrations == strat.state.calibrations
    for bad in (tuned(4, "*", "confidence_gain", 0.0), tuned(4, "*", "threshold", 0.7)):
        with pytest.raises(ValueError, match=r"confidence_gain|threshold"):
            strat.on_event(bad)
    assert restored.state.calibrations == strat.state.calibrations


def test_a_tuning_event_changes_decisions_from_the_next_bar_on() -> None:
    """Bar 33 is where g * P(bull) first reaches 0.6 with g = 1.3 (P(bull) climbs to ~0.5)."""
    assert run(strategy(), AMBIGUOUS) == []
    role = strategy_role(strategy(), [SYMBOL])
    assert [i.stream for i in role.inputs] == ["MARKET", "GOVERNANCE"]
    out: list[tuple[str, object]] = []
    engine = ReplayEngine([role], lambda subject, event, _env, _by: out.append((subject, event)))
    at = AMBIGUOUS[29].close_time
    changes = [tuned(at, SYMBOL, "confidence_gain", 1.3), tuned(at, SYMBOL, "quote_multiplier", 2)]
    for bar in AMBIGUOUS[:30]:
        engine.feed(bar)
    for change in changes:
        engine.feed(change)
    engine.feed(tuned(at, SYMBOL, "confidence_gain", -1))  # out of range: a dead letter
    for bar in AMBIGUOUS[30:]:
        engine.feed(bar)
    signals = [e for _, e in out if isinstance(e, Signal)]
    assert [(s.ts, s.target_position) for s in signals] == [(AMBIGUOUS[33].close_time, 2.0)]
    assert "gain 1.3" in signals[0].reason
    (letter,) = [e for _, e in out if isinstance(e, DeadLetter)]
    assert letter.subject == "gov.tune.mh.BTC-USDT" and "confidence_gain" in letter.reason


def _ambiguous_run(tmp_path: Path, model_file: Path, events: Path | None) -> BacktestSpec:
    data = tmp_path / "btc.csv"
    data.write_text(csv_text(AMBIGUOUS))
    params = {"model_file": str(model_file), "kind": "sma", "fast": 3, "slow": 6}
    config = KeelConfig(strategies=(StrategyConfig(name="ma_hmm", instance="mh", params=params),))
    source = DataSource(str(data), symbol=SYMBOL, venue="test")
    files = (EventFile(str(events)).with_digest(),) if events else ()
    return BacktestSpec(config=config, data=(source,), events=files)


def test_a_calibration_event_in_a_backtest_replays_identically(
    model_file: Path, tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    at = AMBIGUOUS[29].close_time
    events = tmp_path / "tuning.jsonl"
    events.write_bytes(
        encode(tuned(at, SYMBOL, "confidence_gain", 1.3))
        + b"\n"
        + encode(tuned(at, SYMBOL, "quote_multiplier", 2.0))
        + b"\n"
    )
    without = run_backtest(_ambiguous_run(tmp_path, model_file, None))
    assert without.signals == 0
    spec = _ambiguous_run(tmp_path, model_file, events)
    first = run_backtest(spec, tmp_path / "run")
    again = run_backtest(spec)
    assert (first.signals, first.external_events, first.bars) == (1, 2, len(AMBIGUOUS))
    assert first.result_hash == again.result_hash != without.result_hash
    work = tmp_path / "bus"
    work.mkdir()
    on_bus = bus_replay(load_run(tmp_path / "run"), nats_server.url, work)
    assert on_bus.result_hash == first.result_hash


async def test_model_from_the_object_store(
    nats_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = await Bus.connect(nats_server.url, name="test", ensure=False)
    try:
        await put_model(bus.js, hand_model(tag="v1"))
        await put_model(bus.js, hand_model(tag="v2"))
    finally:
        await bus.close()
    monkeypatch.setenv(URL_ENV, nats_server.url)
    base = {"kind": "sma", "fast": "3", "slow": "6"}
    pinned = compose_strategy("ma_hmm", {**base, "model": "hand:v1"})
    latest = compose_strategy("ma_hmm", {**base, "model": "hand"})
    assert (pinned.model_tag, latest.model_tag) == ("hand:v1", "hand:v2")  # type: ignore[attr-defined]
    assert {s.model_tag for _, s in run(pinned, TREND)} == {"hand:v1"}
    with pytest.raises(StrategyError, match="unknown model"):
        compose_strategy("ma_hmm", {**base, "model": "other"})
    with pytest.raises(StrategyError, match="unknown model"):
        compose_strategy("ma_hmm", {**base, "model": "hand:v9"})
