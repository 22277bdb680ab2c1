"""Result hashes pinned across refactors: every strategy, and a book that exercises the rails,
sizing, stops, brackets, a margin account and two symbols. A change of any decision, order,
fill or portfolio figure changes one of these; a pure restructuring changes none."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
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
SYMBOLS = ("SOL/USDT", "ETH/USDT")

STRATEGY_HASHES: dict[str, str] = {
    "listing_sniper": "e16733d6aed4870519184460f7dacbd2b99388a17d9b9ba498fedcd1b40527b5",
    "ma_cross": "63e5b72da02ca9053d0ee00ca416d7e0b10d9612b24c84ca97b727281672a967",
    "ma_hmm": "bdeb7484b836f40ca52ee0f936674786f3ef578bb1baef1f7255eaa70db29889",
    "mean_reversion": "ac0a260fdb9476d7bd87ff5f1e1418fa831dd705e4704add48a7e7df5cb3ee54",
    "meme_sentiment": "14c671c04419e2dc5361810934110e3c82accd360ba0acd4513cec0c1a6d7f10",
    "momentum": "1cc64e9728247e29ebb5445343c8eb84b6f446bb38b0ed7ac4cc09fa9a465a76",
    "promo_watcher": "7bba35c30de4a1d7ff39f1cd0c95cf9c53154ec7655d31107368a2ffc448d67d",
    "rule_engine": "baf7746857db51ece4fbb1a5dc17ecd16f546a3baf4594096569a823ae84e253",
    "trend_follower": "c5bc4cf4b79ffde93237c46158d8868d6a90fd21299e1e6df1b13f40bc26b380",
    "turtle": "0b2959a55cd4df6a06514b1df50b738872fc8c085448ebc4dece495b2be57986",
}

BOOK_TOML = """
[risk]
allowed_symbols = ["SOL/USDT", "ETH/USDT"]
min_order_notional = 5
max_order_notional = 50000
max_symbol_exposure = 60000
max_venue_exposure = 90000
max_total_exposure = 90000
max_open_positions = 2
max_orders_per_minute = 30
max_venue_orders_per_minute = 60
soft_drawdown_pct = 30
max_drawdown_pct = 60
brackets = BRACKETS

[risk.correlation]
max = 0.95
window = 60
min_periods = 20

[sizing]
mode = "turtle"
risk_pct = 1.0
atr_multiple = 2.0
cap = true

[orders]
require_stop = ["*"]
stop_atr = 2.0
atr_period = 14

[portfolio]
base_currency = "USD"
starting_cash = 100000.0
attribution_every = 60

[portfolio.venues.sim]
balances = { USDT = 100000.0 }
margin = true
leverage = 3.0

[[instruments]]
venue = "sim"
symbol = "SOL/USDT"
lot_size = 0.001
tick_size = 0.01
min_notional = 5
"""

BOOK_HASHES: dict[tuple[str, bool], str] = {
    ("ma_cross", False): "6d7a5b9d1a056014cea1a11c6fba3769e51b95e4bc9cd395b83ec3f0d5eb9736",
    ("ma_cross", True): "6d7a5b9d1a056014cea1a11c6fba3769e51b95e4bc9cd395b83ec3f0d5eb9736",
    ("trend_follower", False): "7c38ea6e43fa1d6c7f2c4e50d295745da385a89bb4e14d4df8b3dee9b4221e70",
    ("trend_follower", True): "d3ea44ff3a6abd0a6ef5aa1623b1fab530019c24496a8ac18d85e9d02c0254d7",
    ("turtle", False): "6d73ff573ca65ce7b6e8e6562a8b1b8bcfd72da9187077d5e53e75f2d6557ca0",
    ("turtle", True): "91e6716c21f4171e59250add3228d0f9402edd6654bf863f2e7bc2cf367cb2fa",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataSource, ...]:
    folder = tmp_path_factory.mktemp("golden")
    bars = list(SyntheticMarket(symbols=SYMBOLS, bars=BARS, seed=21).generate())
    sources = []
    for symbol in SYMBOLS:
        path = folder / f"{symbol.replace('/', '')}.parquet"
        write_bar_file(path, [b for b in bars if b.symbol == symbol], epoch_ms=True)
        sources.append(DataSource(location=str(path), symbol=symbol))
    return tuple(sources)


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bars = list(SyntheticMarket(symbols=SYMBOLS, bars=BARS, seed=21).generate())
    at = [bars[i].close_time + 1 for i in (200, 400, 600)]
    promo = "Trade at least 10,000 USDT to share a prize pool of 50,000 USDT among the top 100"
    items = [
        ListingAnnouncement(ts=at[0], source="golden", venue="sim", symbol="SOL/USDT"),
        SocialSentiment(
            ts=at[1], source="golden", symbol="SOL/USDT", score=0.9, mentions=1000, velocity=3.0
        ),
        PromoAnnouncement(ts=at[2], source="golden", venue="sim", symbol="SOL/USDT", text=promo),
    ]
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    path.write_bytes(b"".join(encode(e) + b"\n" for e in items))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eventstore.model_store import train_model_file

    path = tmp_path_factory.mktemp("model") / "regime.model"
    bars = list(SyntheticMarket(symbols=("SOL/USDT",), bars=5_000, seed=22).generate())
    train_model_file(bars, path, states=3)
    return path


def _params(name: str, model: Path) -> dict[str, str | int | float | bool]:
    if "hmm" in name:
        return {"model_file": str(model)}
    return {"move_pct": 0.5} if name == "momentum" else {}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_strategy_hash_is_pinned(
    name: str, data: tuple[DataSource, ...], events: Path, model: Path
) -> None:
    spec = BacktestSpec(
        config=KeelConfig(
            strategies=(StrategyConfig(name=name, params=_params(name, model)),),
            execution=PaperVenueConfig(fill="next_open", fee_bps=10.0),
        ),
        data=data,
        events=(EventFile(str(events)),) if getattr(REGISTRY[name].build, "external", ()) else (),
    )
    assert run_backtest(spec).result_hash == STRATEGY_HASHES[name]


@pytest.mark.parametrize("brackets", [False, True])
@pytest.mark.parametrize("name", ["ma_cross", "trend_follower", "turtle"])
def test_book_hash_is_pinned(name: str, brackets: bool, data: tuple[DataSource, ...]) -> None:
    raw = tomllib.loads(BOOK_TOML.replace("BRACKETS", str(brackets).lower()))
    config = msgspec.convert(
        {
            **raw,
            "strategies": [{"name": name}],
            "execution": {"fill": "next_open", "fee_bps": 10.0},
        },
        KeelConfig,
    )
    result = run_backtest(BacktestSpec(config=config, data=data))
    assert result.dead_letters == 0
    assert result.result_hash == BOOK_HASHES[(name, brackets)]
