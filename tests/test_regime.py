"""The HMM regime model: features (batch = incremental), labels, seeded training, the forward
filter (equal to hmmlearn's posterior at the last bar, never looking ahead) and the
accuracy on synthetic regime-switching data with known regimes."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hmmlearn.hmm import GaussianHMM

from contracts.events import Bar
from eventstore.model_store import read_model_file, write_model_file
from services.marketdata.sources import read_bars
from services.marketdata.synthetic import SyntheticMarket
from strategies.regime import features as feat
from strategies.regime.features import FeatureSpec, FeatureState
from strategies.regime.filter import FilterState, Regime, RegimeFilter
from strategies.regime.labels import label_states
from strategies.regime.model import ModelError, RegimeModel, decode_model, encode_model
from strategies.regime.training import train
from tests.conftest import SHARED_DATA

SYMBOL = "BTC/USDT"


def market(bars: int, seed: int, symbol: str = SYMBOL) -> SyntheticMarket:
    return SyntheticMarket(symbols=(symbol,), bars=bars, seed=seed)


@pytest.fixture(scope="module")
def model() -> RegimeModel:
    """Three regimes with the volume feature, trained on seed 1."""
    return train(
        list(market(10_000, 1).generate()), states=3, seed=0, features=FeatureSpec(volume=True)
    )


def arrays(bars: list[Bar]) -> tuple[np.ndarray, ...]:
    return tuple(
        np.array([getattr(b, f) for b in bars]) for f in ("open", "high", "low", "close", "volume")
    )


def standardised(model: RegimeModel, bars: list[Bar]) -> np.ndarray:
    spec = model.features
    return (feat.batch(spec, *arrays(bars)) - np.array(spec.center)) / np.array(spec.scale)


# --- features -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        FeatureSpec(),
        FeatureSpec(wicks=False, vol_window=20),
        FeatureSpec(vol_window=5, volume=True, move_scale=8e-4, volume_scale=6.0),
    ],
    ids=lambda s: ",".join(s.names),
)
def test_incremental_features_equal_the_batch_ones(spec: FeatureSpec) -> None:
    bars = list(market(3_000, 5).generate())
    batch = feat.batch(spec, *arrays(bars))
    state = FeatureState()
    for i, bar in enumerate(bars):
        online = feat.update(spec, state, bar)
        if online is None:
            assert np.isnan(batch[i]).any(), i
            assert i < spec.warmup
        else:
            assert i >= spec.warmup
            np.testing.assert_allclose(online, batch[i], rtol=1e-10, atol=1e-15)
    assert not np.isnan(batch[spec.warmup :]).any()


def test_features_of_a_flat_bar_without_volume_stay_finite() -> None:
    spec = FeatureSpec(vol_window=3, volume=True)
    state = FeatureState()
    flat = [
        Bar(
            ts=(i + 1) * 60,
            venue="v",
            symbol="S",
            interval="1m",
            open_time=i * 60,
            close_time=(i + 1) * 60,
            open=10.0,
            high=10.0,
            low=10.0,
            close=10.0,
            volume=0.0,
        )
        for i in range(6)
    ]
    rows = [feat.update(spec, state, bar) for bar in flat]
    assert rows[:3] == [None, None, None]
    assert all(row is not None and all(map(math.isfinite, row)) for row in rows[3:])


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="vol_window"):
        FeatureSpec(vol_window=1)
    with pytest.raises(ValueError, match="center and scale"):
        FeatureSpec(center=(0.0,), scale=(1.0,))
    assert FeatureSpec(vol_window=10, volume=True).names == (
        "ret",
        "upper_wick",
        "lower_wick",
        "rvol10",
        "volume",
    )


# --- labels -------------------------------------------------------------------------------


def test_labels_by_mean_return() -> None:
    assert label_states([0.1, -0.2, 0.0]) == ("bull", "bear", "range")
    assert label_states([-1.0, 1.0]) == ("bear", "bull")
    assert label_states([-3.0, -1.0, 0.5, 2.0]) == ("bear", "range", "range", "bull")


def test_trained_states_are_ordered_by_mean_return(model: RegimeModel) -> None:
    returns = [m[0] for m in model.means]
    assert returns == sorted(returns)
    assert model.labels == ("bear", "range", "bull")
    assert model.features.names == ("ret", "upper_wick", "lower_wick", "volume")
    assert model.training.symbols == (SYMBOL,) and model.training.bars == 10_000
    assert model.converged and math.isfinite(model.log_likelihood)


# --- training -----------------------------------------------------------------------------


def test_training_is_deterministic() -> None:
    bars = list(market(3_000, 3).generate())
    first = train(bars, states=3, seed=4, features=FeatureSpec(volume=True))
    second = train(bars, states=3, seed=4, features=FeatureSpec(volume=True))
    assert encode_model(first) == encode_model(second)
    assert first.tag == second.tag and len(first.tag) == 12  # a content hash
    tagged = train(bars, states=3, seed=4, features=FeatureSpec(volume=True), tag="v1")
    assert tagged.tag == "v1" and tagged.key == f"{tagged.name}:v1"
    assert tagged.means == first.means


def test_training_refuses_bad_input() -> None:
    bars = list(market(600, 3).generate())
    with pytest.raises(ModelError, match="states"):
        train(bars, states=1)
    with pytest.raises(ModelError, match="too few bars"):
        train(bars[:100], states=3)
    with pytest.raises(ModelError, match="model name"):
        train(bars, states=2, name="no/slash")
    with pytest.raises(ModelError, match="no bars"):
        train([], states=2)


def test_model_file_round_trip(model: RegimeModel, tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_model_file(model, path)
    assert read_model_file(path) == model
    path.write_bytes(b'{"name": "x"}')
    with pytest.raises(ModelError, match="not a regime model"):
        read_model_file(path)
    with pytest.raises(ModelError, match="not found"):
        read_model_file(tmp_path / "missing.json")
    broken = msgspec.json.decode(encode_model(model))
    broken["transmat"][0] = [0.5, 0.5, 0.5]
    with pytest.raises(ModelError, match="transmat"):
        decode_model(msgspec.json.encode(broken), "test")


# --- the forward filter ---------------------------------------------------------------------


def _hmmlearn(model: RegimeModel) -> GaussianHMM:
    hmm = GaussianHMM(n_components=model.n_states, covariance_type="full")
    hmm.n_features = len(model.features.names)
    hmm.startprob_ = np.array(model.startprob)
    hmm.transmat_ = np.array(model.transmat)
    hmm.means_ = np.array(model.means)
    hmm.covars_ = np.array(model.covars)
    return hmm


def test_filter_equals_the_posterior_of_the_last_bar(model: RegimeModel) -> None:
    """At the last bar of a sequence the smoothed posterior is the filtered one, so
    hmmlearn's predict_proba over bars 1..t, read at t, is what the filter must give at t."""
    bars = list(market(400, 9).generate())
    readings = RegimeFilter(model).run(bars)
    z = standardised(model, bars)[1:]
    hmm = _hmmlearn(model)
    for t in (1, 2, 10, 57, 200, 399):
        posterior = hmm.predict_proba(z[:t])[-1]
        reading = readings[t]
        assert reading is not None
        np.testing.assert_allclose(
            [reading.bear, reading.range, reading.bull], posterior, rtol=1e-7, atol=1e-9
        )


def test_no_look_ahead(model: RegimeModel) -> None:
    """Readings up to bar t are identical whatever comes after t; smoothed ones are not."""
    bars = list(market(1_000, 9).generate())
    other = list(market(1_000, 10).generate())
    t = 600
    changed = bars[: t + 1] + [
        msgspec.structs.replace(b, open=b.open * 1.5, high=b.high * 1.5, low=b.low * 1.5)
        for b in other[t + 1 :]
    ]
    f = RegimeFilter(model)
    first, second = f.run(bars), f.run(changed)
    assert first[: t + 1] == second[: t + 1]
    assert first[t + 1 :] != second[t + 1 :]
    hmm = _hmmlearn(model)
    smoothed = hmm.predict_proba(standardised(model, bars)[1:])[t - 1]
    resmoothed = hmm.predict_proba(standardised(model, changed)[1:])[t - 1]
    assert not np.allclose(smoothed, resmoothed, rtol=0, atol=1e-12)


def test_filter_state_snapshots_mid_stream(model: RegimeModel) -> None:
    bars = list(market(800, 12).generate())
    f = RegimeFilter(model)
    whole = f.run(bars)
    state = FilterState()
    head = [f.step(state, bar) for bar in bars[:333]]
    restored = msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=FilterState)
    tail = [f.step(restored, bar) for bar in bars[333:]]
    assert head + tail == whole


def test_readings_are_probabilities(model: RegimeModel) -> None:
    readings = [r for r in RegimeFilter(model).run(market(500, 13).generate()) if r is not None]
    assert len(readings) == 499
    for r in readings:
        assert isinstance(r, Regime)
        assert math.isclose(r.bull + r.bear + r.range, 1.0, abs_tol=1e-9)
        assert r.label == max(("bull", "bear", "range"), key=lambda label: getattr(r, label))


def test_accuracy_on_synthetic_regimes(model: RegimeModel) -> None:
    """Trained on seed 1, scored on seeds 2-4 it never saw: >= 90% of the bars after warm-up
    get their true regime from filtered probabilities alone (measured: 91.1%)."""
    f = RegimeFilter(model)
    right = total = 0
    for seed in (2, 3, 4):
        test = market(10_000, seed)
        truth = test.regimes()[SYMBOL]
        for reading, label in zip(f.run(test.generate()), truth, strict=True):
            if reading is not None:
                total += 1
                right += reading.label == label
    assert total == 3 * 9_999
    assert right / total >= 0.90, f"accuracy {right / total:.4f}"


# --- real data ----------------------------------------------------------------------------

REAL = SHARED_DATA / "binanceus-1m-2023-03" / "BTCUSDT.csv"


@pytest.mark.skipif(not REAL.is_file(), reason=f"real data not present ({REAL})")
def test_real_minutes_train_and_filter_without_look_ahead() -> None:
    bars = list(read_bars(REAL, venue="binanceus", symbol="BTC/USDT").bars)
    fitted = train(bars[:8_000], states=3, seed=0, features=FeatureSpec(volume=True))
    assert fitted.labels == ("bear", "range", "bull")
    f = RegimeFilter(fitted)
    later = bars[8_000:10_000]
    readings = f.run(later)
    assert all(r is not None for r in readings[1:])
    assert len({r.label for r in readings if r is not None}) >= 2
    shocked = later[:1_000] + [
        msgspec.structs.replace(b, close=b.close * 0.9, low=min(b.low, b.close * 0.9))
        for b in later[1_000:]
    ]
    assert f.run(shocked)[:1_000] == readings[:1_000]
