"""MA + HMM ensemble: scripted scenarios on a hand-built regime model (threshold, exits,
cooldown, calibration and its reload), snapshots, look-ahead, params and model loading."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from contracts.events import Bar, Signal
from eventstore.bus import Bus
from eventstore.model_store import put_model
from eventstore.server import URL_ENV, EmbeddedServer
from services.marketdata.synthetic import SyntheticMarket
from strategies.ma_hmm import (
    Calibration,
    CalibrationError,
    Calibrations,
    CalibrationWatcher,
    MaHmm,
    MaHmmParams,
    load_calibrations,
)
from strategies.regime.features import FeatureSpec
from strategies.regime.filter import RegimeFilter
from strategies.regime.model import RegimeModel, TrainingRange, write_model_file
from strategies.regime.training import train
from strategies.registry import StrategyError, build_strategy

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
    bars, close = [], 100.0
    for i, r in enumerate([0.0, *returns]):
        prev, close = close, close * math.exp(r)
        open_time = T0 + i * MINUTE
        bars.append(
            Bar(
                ts=open_time + MINUTE,
                venue="test",
                symbol=SYMBOL,
                interval="1m",
                open_time=open_time,
                close_time=open_time + MINUTE,
                open=prev,
                high=max(prev, close),
                low=min(prev, close),
                close=close,
                volume=1.0,
            )
        )
    return bars


TREND = path((10, 0.0), (30, 0.003), (30, -0.003))
AMBIGUOUS = path((10, 0.0), (40, 0.001))
"""+0.1% a bar: halfway between range and bull, so P(bull) stays near one half."""
WAVES = path((10, 0.0), *[(8, 0.003), (8, -0.003)] * 6)


def strategy(model: RegimeModel | None = None, **params: object) -> MaHmm:
    base: dict[str, object] = {"model_file": "unused", "kind": "sma", "fast": 3, "slow": 6}
    return MaHmm("mh", msgspec.convert({**base, **params}, MaHmmParams), model or hand_model())


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
    strat = strategy(threshold=0.6)
    strat.calibrate(Calibrations(symbols={SYMBOL: Calibration(confidence_gain=1.3)}))
    signals = run(strat, AMBIGUOUS)
    assert [s.target_position for _, s in signals] == [1.0]
    assert signals[0][1].confidence >= 0.6 and "gain 1.3" in signals[0][1].reason

    other = strategy(threshold=0.6)
    other.calibrate(Calibrations(symbols={"ETH/USDT": Calibration(confidence_gain=1.3)}))
    assert run(other, AMBIGUOUS) == []

    sized = strategy(qty=2.0)
    sized.calibrate(Calibrations(default=Calibration(quote_multiplier=0.25)))
    assert [s.target_position for _, s in run(sized, TREND)] == [0.5, 0.0]

    cooled = strategy(mode="long_short", cooldown_bars=12)
    cooled.calibrate(Calibrations(default=Calibration(cooldown_scale=0.0)))
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
        build_strategy("ma_hmm", params)
    assert "\n" not in str(info.value)


def test_model_file_and_string_params(model_file: Path) -> None:
    strat = build_strategy(
        "ma_hmm",
        {"model_file": str(model_file), "kind": "sma", "fast": "3", "slow": "6", "qty": "1"},
        "mh",
    )
    assert strat.name == "mh" and isinstance(strat, MaHmm)
    assert [s.target_position for _, s in run(strat, TREND)] == [1.0, 0.0]


def test_bad_calibration_file(model_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cal.json"
    bad.write_text('{"*": {"confidence_gain": -1}}')
    with pytest.raises(StrategyError, match="calibration"):
        build_strategy("ma_hmm", {"model_file": str(model_file), "calibration": str(bad)})
    with pytest.raises(StrategyError, match="calibration"):
        build_strategy(
            "ma_hmm", {"model_file": str(model_file), "calibration": str(tmp_path / "none.toml")}
        )


def test_calibration_files_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "cal.toml"
    toml.write_text(
        '["*"]\nconfidence_gain = 1.1\n\n["BTC/USDT"]\nquote_multiplier = 0.5\ncooldown_scale = 2\n'
    )
    table = load_calibrations(toml)
    assert table.of("ETH/USDT") == Calibration(confidence_gain=1.1)
    assert table.of(SYMBOL) == Calibration(quote_multiplier=0.5, cooldown_scale=2.0)
    js = tmp_path / "cal.json"
    js.write_text(json.dumps({"BTC/USDT": {"confidence_gain": 1.2, "typo": 1}}))
    with pytest.raises(CalibrationError, match="typo"):
        load_calibrations(js)


def _touch(path: Path, text: str, step: int) -> None:
    """Rewrite and move the mtime on, so the change shows whatever the clock resolution."""
    path.write_text(text)
    stamp = os.stat(path).st_mtime_ns + step * 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def test_watcher_rereads_at_most_every_period(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    _touch(path, '{"*": {"confidence_gain": 1.0}}', 0)
    now = [100.0]
    watcher = CalibrationWatcher(path, every_s=5.0, clock=lambda: now[0])
    assert watcher.load().default.confidence_gain == 1.0
    _touch(path, '{"*": {"confidence_gain": 2.0}}', 1)
    now[0] = 103.0
    assert watcher.poll() is None  # not due yet
    now[0] = 105.0
    reloaded = watcher.poll()
    assert reloaded is not None and reloaded.default.confidence_gain == 2.0
    now[0] = 111.0
    assert watcher.poll() is None  # unchanged
    _touch(path, "{not json", 2)
    now[0] = 117.0
    assert watcher.poll() is None  # bad file: keep what is in force
    path.unlink()
    now[0] = 123.0
    assert watcher.poll() is None
    _touch(path, '{"*": {"confidence_gain": 3.0}}', 3)
    now[0] = 129.0
    again = watcher.poll()
    assert again is not None and again.default.confidence_gain == 3.0


def test_calibration_reload_changes_behaviour_while_running(
    model_file: Path, tmp_path: Path
) -> None:
    calibration = tmp_path / "cal.json"
    _touch(calibration, json.dumps({"*": {"confidence_gain": 1.0}}), 0)
    params = {
        "model_file": str(model_file),
        "kind": "sma",
        "fast": "3",
        "slow": "6",
        "calibration": str(calibration),
        "calibration_reload_s": "0",
    }
    steady = build_strategy("ma_hmm", params)
    assert run(steady, AMBIGUOUS) == []

    live = build_strategy("ma_hmm", params)
    assert run(live, AMBIGUOUS[:30]) == []
    _touch(calibration, json.dumps({SYMBOL: {"confidence_gain": 1.3, "quote_multiplier": 2}}), 1)
    after = run(live, AMBIGUOUS[30:])
    # bar 33 is where g * P(bull) first reaches 0.6 with g = 1.3 (P(bull) climbs to ~0.5)
    assert [(30 + i, s.target_position) for i, s in after] == [(33, 2.0)]
    assert "gain 1.3" in after[0][1].reason

    restored = build_strategy("ma_hmm", params)
    restored.restore(live.snapshot())
    assert restored.snapshot() == live.snapshot()


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
    pinned = build_strategy("ma_hmm", {**base, "model": "hand:v1"})
    latest = build_strategy("ma_hmm", {**base, "model": "hand"})
    assert (pinned.model_tag, latest.model_tag) == ("hand:v1", "hand:v2")  # type: ignore[attr-defined]
    assert {s.model_tag for _, s in run(pinned, TREND)} == {"hand:v1"}
    with pytest.raises(StrategyError, match="unknown model"):
        build_strategy("ma_hmm", {**base, "model": "other"})
    with pytest.raises(StrategyError, match="unknown model"):
        build_strategy("ma_hmm", {**base, "model": "hand:v9"})
