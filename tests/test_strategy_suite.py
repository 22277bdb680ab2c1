"""Every registered strategy backtests on generated data: it trades, every signal carries its
model tag, two runs agree byte for byte, and the run goes through the same pipeline as
``keel backtest`` (risk, paper venue, portfolio, recorder)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import polars as pl
import pytest

from contracts.codec import encode
from contracts.events import ListingAnnouncement, PromoAnnouncement, SocialSentiment
from replay.backtest import BacktestSpec, run_backtest
from replay.external import EventFile
from replay.market import DataSource
from services.config import KeelConfig, StrategyConfig
from services.execution.paper_venue import PaperVenueConfig
from services.marketdata.synthetic import SyntheticMarket
from strategies.registry import REGISTRY
from tests.factories import write_bar_file

BARS = 3_000
SUITE_PARAMS: dict[str, dict[str, str | int | float | bool]] = {
    # The synthetic market's moves are small: a 0.5% burst with a volume spike is common.
    "momentum": {"move_pct": 0.5},
}


def _is_event_driven(name: str) -> bool:
    return bool(getattr(REGISTRY[name].build, "external", ()))  # a class attribute


def _params(name: str, model: Path | None) -> dict[str, str | int | float | bool]:
    params = dict(SUITE_PARAMS.get(name, {}))
    if "hmm" in name and model is not None:
        params["model_file"] = str(model)
    return params


@pytest.fixture(scope="module")
def market_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bars = list(SyntheticMarket(symbols=("SOL/USDT",), bars=BARS, seed=21).generate())
    path = tmp_path_factory.mktemp("suite") / "sol.parquet"
    return write_bar_file(path, bars, epoch_ms=True)


@pytest.fixture(scope="module")
def events_file(market_file: Path) -> Path:
    """One external event of each kind for the event-driven strategies (``--events``)."""
    bars = list(SyntheticMarket(symbols=("SOL/USDT",), bars=BARS, seed=21).generate())
    at = [bars[i].close_time + 1 for i in (100, 200, 300)]
    promo = "Trade at least 10,000 USDT to share a prize pool of 50,000 USDT among the top 100"
    events = [
        ListingAnnouncement(ts=at[0], source="suite", venue="sim", symbol="SOL/USDT"),
        SocialSentiment(
            ts=at[1], source="suite", symbol="SOL/USDT", score=0.9, mentions=1000, velocity=3.0
        ),
        PromoAnnouncement(ts=at[2], source="suite", venue="sim", symbol="SOL/USDT", text=promo),
    ]
    path = market_file.with_name("events.jsonl")
    path.write_bytes(b"".join(encode(e) + b"\n" for e in events))
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    if not any("hmm" in name for name in REGISTRY):
        return None
    from eventstore.model_store import train_model_file

    path = tmp_path_factory.mktemp("model") / "regime.model"
    bars = list(SyntheticMarket(symbols=("SOL/USDT",), bars=5_000, seed=22).generate())
    train_model_file(bars, path, states=3)
    return path


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_strategy_backtests_deterministically(
    name: str, market_file: Path, events_file: Path, model_file: Path | None, tmp_path: Path
) -> None:
    spec = BacktestSpec(
        config=KeelConfig(
            strategies=(StrategyConfig(name=name, params=_params(name, model_file)),),
            execution=PaperVenueConfig(fill="next_open", fee_bps=10.0),
        ),
        data=(DataSource(location=str(market_file), symbol="SOL/USDT"),),
        events=(EventFile(str(events_file)),) if _is_event_driven(name) else (),
    )
    first = run_backtest(spec, tmp_path / "run")
    second = run_backtest(spec)
    assert first.bars == BARS
    assert first.result_hash == second.result_hash
    assert first.dead_letters == 0
    assert first.signals > 0 and first.fills > 0, name
    events = pl.read_parquet(tmp_path / "run" / "events.parquet")
    signals = events.filter(pl.col("type") == "Signal")["payload"].to_list()
    tags = {msgspec.json.decode(s)["model_tag"] for s in signals}
    assert all(tags), f"{name}: a signal without a model tag"
