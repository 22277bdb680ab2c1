"""The model lifecycle: held-out scoring with the forward filter, label alignment across
versions, validation, and ``keel model retrain/history/promote/rollback`` against bars stored
in a real MARKET stream and models in the real Object Store and KV bucket."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import numpy as np
import pytest

from contracts.codec import encode
from contracts.envelope import bar_envelope
from contracts.events import Bar
from eventstore.bus import Bus
from eventstore.model_store import get_model, list_models, read_lifecycle
from eventstore.server import URL_ENV, EmbeddedServer
from services.governance.retrain_job import scheduled_run
from services.governance.retraining import (
    RetrainConfig,
    holdout_start,
    retrain,
    validate,
    window_data,
    window_of,
)
from services.marketdata.synthetic import SyntheticMarket
from strategies.regime.alignment import align, permute
from strategies.regime.filter import FilterState, RegimeFilter
from strategies.regime.lifecycle import Lifecycle, VersionEntry, prune_plan, record_retrain
from strategies.regime.model import ModelError, RegimeModel, decode_model, encode_model
from strategies.regime.scoring import filter_series, log_densities, score
from strategies.regime.training import train
from tests.conftest import ROOT, keel
from tests.test_model_cli import cli

SYMBOL = "BTC/USDT"
T = TypeVar("T")


@pytest.fixture(scope="module")
def bars() -> list[Bar]:
    return list(SyntheticMarket(symbols=(SYMBOL,), bars=3_000, seed=5).generate())


@pytest.fixture(scope="module")
def base(bars: list[Bar]) -> RegimeModel:
    return train(bars, states=3, name="unit", seed=1, n_iter=30)


def filtered(model: RegimeModel, bars: list[Bar]) -> np.ndarray:
    state = FilterState()
    live = RegimeFilter(model)
    rows = []
    for bar in bars:
        if live.step(state, bar) is not None:
            rows.append(list(state.probs))
    return np.array(rows)


def test_scoring_filters_like_the_live_filter(bars: list[Bar], base: RegimeModel) -> None:
    from strategies.regime import features as feat

    arrays = [np.array([getattr(b, f) for b in bars]) for f in ("open", "high", "low", "close")]
    raw = feat.batch(base.features, *arrays, np.array([b.volume for b in bars]))
    raw = raw[~np.isnan(raw).any(axis=1)]
    scores, probs = filter_series(base, log_densities(base, raw))
    np.testing.assert_allclose(probs, filtered(base, bars), atol=1e-9)
    assert np.isfinite(scores).all()
    whole = score(base, bars, bars[0].open_time)
    assert whole.bars == len(raw) and whole.loglik == pytest.approx(float(scores.sum()))
    assert sum(whole.state_share) == pytest.approx(1.0)


def test_alignment_undoes_a_permuted_numbering(bars: list[Bar], base: RegimeModel) -> None:
    """Another seed, its states renumbered the way a raw hmmlearn fit may number them: the
    alignment finds the numbering back, and parameters, labels and filtered probabilities
    match the first version bar by bar."""
    other = train(bars, states=3, name="unit", seed=11, n_iter=30)
    scrambled = permute(other, (2, 0, 1))
    assert scrambled.labels != base.labels
    found = align(scrambled, base)
    assert found.found and found.order == (1, 2, 0) and found.cost < 0.1
    aligned = permute(scrambled, found.order)
    assert aligned.labels == base.labels
    np.testing.assert_allclose(aligned.means, base.means, atol=0.05)
    np.testing.assert_allclose(aligned.transmat, base.transmat, atol=0.02)
    np.testing.assert_allclose(aligned.covars, base.covars, atol=0.05)
    ours, theirs = filtered(aligned, bars), filtered(base, bars)
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).mean() > 0.99
    gap = np.abs(ours - theirs)[100:]  # once the start distribution is forgotten
    assert gap.mean() < 0.01 and gap.max() < 0.2
    # a renumbering alone changes no reading: the label probabilities are identical
    pairs = list(zip(RegimeFilter(scrambled).run(bars), RegimeFilter(other).run(bars), strict=True))
    assert all((a is None) == (b is None) for a, b in pairs)
    for a, b in (p for p in pairs if p[0] is not None and p[1] is not None):
        assert a.label == b.label and (a.bull, a.bear, a.range) == pytest.approx(
            (b.bull, b.bear, b.range), abs=1e-12
        )


def test_alignment_renumbers_two_seeds_fits_to_agree_most(bars: list[Bar]) -> None:
    """Seeds 0 and 1 find different optima on the same bars, and ordering the states by mean
    return numbers them differently: the alignment's numbering is the one, of all K!, under
    which the two filters' most probable states agree on the most bars."""
    first = train(bars, states=3, name="unit", seed=0, n_iter=30)
    other = train(bars, states=3, name="unit", seed=1, n_iter=30)
    found = align(other, first)
    assert found.found and found.order != (0, 1, 2)
    ours, theirs = filtered(first, bars).argmax(axis=1), filtered(other, bars)

    def agreement(order: tuple[int, ...]) -> float:
        return float((theirs[:, list(order)].argmax(axis=1) == ours).mean())

    best = max(itertools.permutations(range(3)), key=agreement)
    assert found.order == best and agreement(best) > agreement((0, 1, 2)) + 0.2


def test_alignment_refuses_other_designs(bars: list[Bar], base: RegimeModel) -> None:
    two = train(bars, states=2, name="unit", n_iter=10)
    assert "2 states against 3" in align(two, base).reason
    with pytest.raises(ValueError, match="not a permutation"):
        permute(base, (0, 0, 1))


def test_validation_refuses_a_dead_state_and_a_worse_likelihood(
    bars: list[Bar], base: RegimeModel
) -> None:
    config = RetrainConfig(name="unit", symbol=SYMBOL)
    split = holdout_start(bars, 0.2)
    same = validate(base, base, align(base, base), bars, split, config)
    assert same.accepted and same.holdout_loglik == same.previous_loglik
    assert same.alignment_cost == 0.0 and min(same.state_share) > 0.01
    means = list(base.means)
    means[1] = tuple(m + 40.0 for m in means[1])  # a state no bar comes near
    broken = msgspec.structs.replace(base, means=tuple(means))
    verdict = validate(broken, base, align(broken, base), bars, split, config)
    assert not verdict.accepted and verdict.state_share[1] == 0.0
    assert "dead state: state 1 (0.0%)" in verdict.reason
    assert "no label alignment: mean state distance" in verdict.reason
    assert "worse" not in verdict.reason
    wide = tuple(tuple(tuple(4.0 * x for x in row) for row in c) for c in base.covars)
    blurred = msgspec.structs.replace(base, covars=wide)
    verdict = validate(blurred, base, align(blurred, base), bars, split, config)
    assert not verdict.accepted and verdict.alignment_cost == 0.0
    assert verdict.reason.startswith("held-out log-likelihood") and "worse" in verdict.reason
    assert verdict.previous_loglik is not None
    assert verdict.holdout_loglik < verdict.previous_loglik - config.ll_margin


def test_a_model_without_lineage_keeps_its_bytes(base: RegimeModel) -> None:
    data = encode_model(base)
    assert b"lineage" not in data and decode_model(data, "x") == base
    legacy = msgspec.json.encode(base)[: -len(b',"lineage":null}')] + b"}"
    assert legacy == data


def test_retrain_records_window_hash_and_holdout(bars: list[Bar]) -> None:
    config = RetrainConfig(name="unit", symbol=SYMBOL, window="1d", iterations=20, seed=3)
    start, end = window_of(bars[-1].close_time, "1d")
    data = window_data(((b, encode(b)) for b in bars), start, end)
    expected = hashlib.sha256(b"".join(encode(b) for b in bars if start <= b.open_time < end))
    assert data.sha256 == expected.hexdigest() and len(data.bars) == 1_440
    candidate = retrain(data, config, None)
    lineage = candidate.model.lineage
    assert lineage is not None and candidate.verdict.accepted
    assert (lineage.window_start, lineage.window_end, lineage.holdout) == (start, end, 0.2)
    assert lineage.data_sha256 == data.sha256 and candidate.model.seed == 3
    assert lineage.holdout_bars == 288 and candidate.model.training.bars == 1_152
    assert lineage.holdout_loglik == candidate.verdict.holdout_loglik
    assert "first version" in candidate.verdict.reason


def test_prune_plan_keeps_n_and_never_the_live_ones() -> None:
    life = Lifecycle(name="m", current="b", canary="e", rollback=("a",))
    assert prune_plan(life, ["a", "b", "c", "d", "e"], 3) == ["c", "d"]
    assert prune_plan(life, ["a", "b", "e"], 1) == []
    with pytest.raises(ModelError, match="keep"):
        prune_plan(life, [], 0)
    entry = VersionEntry("x", 0, 1, "h", 0, -1.0, None, False, "dead state")
    after = record_retrain(life, entry, "t", "me")
    assert after.canary == "e" and after.history[-1].action == "rejected"


def on_bus(url: str, work: Callable[[Bus], Awaitable[T]]) -> T:
    """One short connection per look (the CLI under test runs its own event loops)."""

    async def main() -> T:
        bus = await Bus.connect(url, name="test")
        try:
            return await work(bus)
        finally:
            await bus.close()

    return asyncio.run(main())


def publish(url: str, items: list[Bar]) -> None:
    on_bus(url, lambda bus: bus.publish_many((b, bar_envelope(b)) for b in items))


def model(url: str, ref: str) -> RegimeModel:
    return on_bus(url, lambda bus: get_model(bus.js, ref))


def stored_tags(url: str) -> set[str]:
    async def work(bus: Bus) -> set[str]:
        return {s.summary.tag for s in await list_models(bus.js)}

    return on_bus(url, work)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines


def tag_of(output: str) -> str:
    line = next(x for x in output.splitlines() if x.startswith("canary: "))
    return line.split()[1].split(":")[1]


def test_retrain_promote_rollback_history(nats_server: EmbeddedServer) -> None:
    url = nats_server.url
    market = list(SyntheticMarket(symbols=(SYMBOL,), bars=4_000, seed=7).generate())
    publish(url, market[:3_000])
    args = ("model", "retrain", "--name", "btc", "--symbol", SYMBOL, "--window", "2d")
    args += ("--iterations", "20")

    first_out = ok(cli(url, *args))
    assert "ACCEPTED" in first_out and "first version" in first_out
    v1 = tag_of(first_out)
    first = model(url, f"btc:{v1}")
    assert first.lineage is not None and first.lineage.holdout == 0.2 and first.seed == 0
    window = [b for b in market[:3_000] if first.lineage.window_start <= b.open_time]
    assert first.lineage.data_sha256 == hashlib.sha256(b"".join(map(encode, window))).hexdigest()
    assert first.lineage.window_end == market[2_999].close_time
    error(cli(url, "model", "show", "btc"), f"no current version yet (keel model promote btc:{v1})")
    assert "current: btc:" + v1 in ok(keel(url, "model", "promote", f"btc:{v1}", "--reason", "ok"))
    assert model(url, "btc") == first

    publish(url, market[3_000:])  # the window moves on by 1,000 bars
    second_out = ok(cli(url, *args))
    v2 = tag_of(second_out)
    second = model(url, f"btc:{v2}")
    assert second.lineage is not None and second.lineage.aligned_to == f"btc:{v1}"
    assert (
        second.labels == first.labels and second.lineage.window_start > first.lineage.window_start
    )
    assert model(url, "btc") == first  # a canary is not current
    assert model(url, "btc:canary") == second  # what a canary variant's params name
    shown = ok(cli(url, "model", "show", f"btc:{v2}"))
    assert second.lineage.data_sha256 in shown and f"btc:{v1} (cost " in shown

    stored = len(stored_tags(url))
    refused = cli(url, *args, "--seed", "1", "--min-state-share", "0.6")
    assert refused.returncode == 1 and "REJECTED" in refused.stdout
    assert "rejected, not deployed: dead state" in refused.stdout
    assert len(stored_tags(url)) == stored
    life, _ = on_bus(url, lambda bus: read_lifecycle(bus.js, "btc"))
    assert life is not None and life.canary == v2 and not life.versions[-1].accepted

    ok(keel(url, "model", "promote", f"btc:{v2}", "--reason", "beats v1", "--by", "ana"))
    v3 = tag_of(ok(cli(url, *args, "--seed", "2")))
    pruned_out = ok(cli(url, *args, "--seed", "3", "--keep", "3"))
    v4 = tag_of(pruned_out)
    tags = stored_tags(url)
    assert tags == {v1, v2, v4}  # v1 kept for rollback, v2 current, v4 canary; v3 pruned
    assert v3 in pruned_out

    assert f"current: btc:{v1}" in ok(keel(url, "model", "rollback", "btc", "--reason", "drift"))
    assert model(url, "btc") == first
    shown = ok(keel(url, "model", "history", "btc"))
    assert f"current {v1}, canary {v4}" in shown
    for needle in ("promote", "rollback", "drift", "beats v1", "ana", "pruned", "rejected"):
        assert needle in shown, needle
    assert second.lineage.data_sha256[:16] in shown
    rows = [
        [cell.strip() for cell in line.split("│")]
        for line in ok(cli(url, "model", "list")).splitlines()
        if line.startswith("│ btc")
    ]
    roles = {row[2]: row[-2] for row in rows}
    assert roles == {v1: "current", v2: "", v4: "canary"}

    error(keel(url, "model", "rollback", "btc", "--reason", "again"), "no earlier current")
    error(cli(url, "model", "promote", "btc:nope", "--reason", "x"), "unknown model btc:nope")
    error(cli(url, "model", "promote", "btc", "--reason", "x"), "needs NAME:TAG")
    error(cli(url, "model", "promote", "b/d:x", "--reason", "x"), "model name")
    error(cli(url, "model", "history", "ghost"), "no lifecycle")
    error(cli(url, "model", "rollback", "ghost", "--reason", "x"), "no lifecycle")
    error(cli(url, *args, "--holdout", "1.5"), "holdout (1.5)")
    error(cli(url, "model", "retrain", "--name", "x", "--symbol", "ETH/USDT"), "no bars stored")


def test_scheduled_retraining_follows_the_data(nats_server: EmbeddedServer) -> None:
    """``keel model retrain --every 1h``: a worker that survives too few bars, retrains only
    once the log holds an hour of bars beyond the last run's window, stops on SIGTERM."""
    url = nats_server.url
    market = list(SyntheticMarket(symbols=(SYMBOL,), bars=2_600, seed=9).generate())
    publish(url, market[:100])
    args = ("model", "retrain", "--name", "eth", "--symbol", SYMBOL, "--window", "1d")
    args += ("--iterations", "10", "--every", "1h", "--poll", "0.2")
    env = {**os.environ, URL_ENV: url, "COLUMNS": "200"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli.app", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in worker.stdout or ()])
    reader.start()

    def next_run() -> str:
        while True:
            line = lines.get(timeout=60)
            if " eth:" in line:
                return line

    def window_ends() -> list[int]:
        life, _ = on_bus(url, lambda bus: read_lifecycle(bus.js, "eth"))
        return [v.window_end for v in life.versions] if life else []

    final = market[-1].close_time
    try:
        assert "eth: cannot retrain: too few bars" in next_run()  # and the worker carries on
        publish(url, market[100:2_500])  # the worker may look while the bars arrive
        hour, stored = 3_600 * 10**9, market[2_499].close_time
        while not window_ends() or stored - window_ends()[-1] >= hour:  # runs while due
            next_run()
        publish(url, market[2_500:])  # 100 more minutes: due again
        while window_ends()[-1] != final:
            next_run()
    finally:
        worker.terminate()
        worker.wait(30)
        reader.join(10)
    assert worker.returncode == 143 and worker.stderr is not None
    assert "Traceback" not in worker.stderr.read()
    ends = window_ends()
    assert ends[-1] == final and all(b - a >= hour for a, b in itertools.pairwise(ends))
    life, _ = on_bus(url, lambda bus: read_lifecycle(bus.js, "eth"))
    assert life is not None and {h.by for h in life.history} == {"retrain-schedule"}


async def test_a_scheduled_look_retrains_only_when_due(bus: Bus) -> None:
    config = RetrainConfig(name="sol", symbol=SYMBOL, window="1d", every="1h", iterations=10)
    assert await scheduled_run(bus, config, at="t0") is None  # no bars yet
    market = list(SyntheticMarket(symbols=(SYMBOL,), bars=2_600, seed=9).generate())
    await bus.publish_many((b, bar_envelope(b)) for b in market[:2_500])
    first = await scheduled_run(bus, config, at="t1")
    assert first is not None and first.verdict.accepted
    assert await scheduled_run(bus, config, at="t2") is None
    await bus.publish_many((b, bar_envelope(b)) for b in market[2_500:2_559])
    assert await scheduled_run(bus, config, at="t3") is None  # 59 minutes of new bars
    await bus.publish_many((b, bar_envelope(b)) for b in market[2_559:2_560])
    second = await scheduled_run(bus, config, at="t4")
    assert second is not None and second.window_end - first.window_end == 3_600 * 10**9
    assert second.reference == f"sol:{first.tag}"
