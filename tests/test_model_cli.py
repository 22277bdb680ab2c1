"""Regime models in the Object Store and ``keel model`` as a user runs it: a real nats-server,
real subprocesses, bar files written to ``tmp_path``; then ``keel backtest`` of ``ma_hmm``
with the model from a file (no server) and from the store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import msgspec
import polars as pl
import pytest
from typer.testing import CliRunner

from cli.app import app
from cli.console import console
from eventstore.bus import Bus
from eventstore.model_store import BUCKET, get_model, list_models, put_model, read_model_file
from eventstore.server import URL_ENV, EmbeddedServer
from services.marketdata.synthetic import SyntheticMarket
from strategies.regime.model import ModelError, RegimeModel
from strategies.regime.training import train
from tests import test_backtest_cli as backtest_cli
from tests.conftest import keel


def write_csv(path: Path, bars: int, seed: int, symbol: str = "BTC/USDT") -> Path:
    rows = list(SyntheticMarket(symbols=(symbol,), bars=bars, seed=seed).generate())
    pl.DataFrame(
        {
            "open_time": [b.open_time // 1_000_000 for b in rows],
            **{
                f: [getattr(b, f) for b in rows] for f in ("open", "high", "low", "close", "volume")
            },
        }
    ).write_csv(path)
    return path


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def one_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def small_model() -> RegimeModel:
    bars = list(SyntheticMarket(symbols=("BTC/USDT",), bars=1_500, seed=3).generate())
    return train(bars, states=2, name="unit", tag="a")


async def test_object_store_round_trip(bus: Bus, small_model: RegimeModel) -> None:
    assert await list_models(bus.js) == []
    with pytest.raises(ModelError, match="no model stored yet"):
        await get_model(bus.js, "unit")
    first = await put_model(bus.js, small_model)
    assert first.created and first.stored.object_name == "unit/a"
    again = await put_model(bus.js, small_model)
    assert not again.created
    newer = msgspec.structs.replace(small_model, tag="b", seed=1)
    await put_model(bus.js, newer)
    with pytest.raises(ModelError, match="already stored with other content"):
        await put_model(bus.js, msgspec.structs.replace(small_model, seed=9))

    assert await get_model(bus.js, "unit:a") == small_model
    assert await get_model(bus.js, "unit") == newer  # the latest stored version
    stored = await list_models(bus.js)
    assert [(s.summary.name, s.summary.tag) for s in stored] == [("unit", "a"), ("unit", "b")]
    summary = stored[0].summary
    assert summary.states == 2 and summary.features == small_model.features.names
    assert summary.first_bar == small_model.training.first_bar and stored[0].size > 0
    with pytest.raises(ModelError, match="unknown model unit:zz"):
        await get_model(bus.js, "unit:zz")
    with pytest.raises(ModelError, match="stored: unit"):
        await get_model(bus.js, "other")
    info = await bus.js.stream_info(f"OBJ_{BUCKET}")
    assert info.state.messages >= 4  # data chunks and metadata of the two versions


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``keel`` in process (typer's runner): the same commands, without a start-up each.
    The shared console took its width when this process first imported the CLI (another
    test file's, under xdist), so it is set here, as ``COLUMNS`` would at start-up."""
    console.width = 200
    result = CliRunner().invoke(app, list(args), env={URL_ENV: url, "COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def test_keel_model_train_list_show(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "btc.csv", 3_000, seed=1)
    out = tmp_path / "regime.model"
    train_args = ("model", "train", "--data", str(data), "--states", "3", "--volume")
    train_args += ("--tag", "v1", "--seed", "2", "--start", "2023-11-14T22:30:00Z")
    trained = ok(keel(nats_server.url, *train_args, "--out", str(out), cwd=tmp_path))
    assert "stored: regime:v1 in KEEL_MODELS as regime/v1" in trained
    model = read_model_file(out)
    assert model.key == "regime:v1" and model.seed == 2 and model.training.symbols == ("btc",)
    assert model.training.bars < 3_000  # the window cut the first bars
    assert model.features.names == ("ret", "upper_wick", "lower_wick", "volume")

    listed = ok(cli(nats_server.url, "model", "list"))
    assert "regime" in listed and "v1" in listed and "ret,upper_wick,lower_wick,volume" in listed
    copy = tmp_path / "copy.model"
    shown = ok(cli(nats_server.url, "model", "show", "regime", "--out", str(copy)))
    assert "regime:v1" in shown and "bull" in shown and "bear" in shown
    assert copy.read_bytes() == out.read_bytes()
    assert "already stored (same content)" in ok(cli(nats_server.url, *train_args))


def test_keel_model_errors(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    few = str(write_csv(tmp_path / "few.csv", 120, seed=1))
    url = nats_server.url
    missing = str(tmp_path / "nope.csv")
    one_error(cli(url, "model", "train", "--data", missing, "--states", "3"), "not found")
    one_error(cli(url, "model", "train", "--data", few, "--states", "1"), "states (1)")
    one_error(cli(url, "model", "train", "--data", few, "--states", "3"), "too few bars")
    one_error(cli(url, "model", "show", "ghost"), "unknown model")
    one_error(cli(url, "model", "show", "bad/name"), "model name")
    one_error(
        cli(url, "model", "train", "--data", few, "--states", "2", "--no-store"),
        "--no-store needs --out",
    )
    assert "no models stored" in ok(cli(url, "model", "list"))


def test_backtest_ma_hmm_from_a_model_file(tmp_path: Path) -> None:
    """No server at all: the model comes from a file."""
    model = train(list(SyntheticMarket(symbols=("bars",), bars=4_000, seed=8).generate()), states=3)
    model_file = tmp_path / "m.model"
    model_file.write_bytes(msgspec.json.encode(model))
    data = write_csv(tmp_path / "bars.csv", 2_000, seed=9, symbol="bars")
    args = ("backtest", "--strategy", "ma_hmm", "--param", f"model_file={model_file}")
    args += ("--data", str(data), "--out", str(tmp_path / "run"))
    result = backtest_cli.last_json(backtest_cli.keel(tmp_path, *args, "--json"))
    assert result["bars"] == 2_000 and result["signals"] > 0 and result["fills"] > 0
    events = pl.read_parquet(tmp_path / "run" / "events.parquet")
    tags = {
        json.loads(p)["model_tag"] for p in events.filter(pl.col("type") == "Signal")["payload"]
    }
    assert tags == {model.key}
    missing = backtest_cli.keel(
        tmp_path,
        "backtest",
        "--strategy",
        "ma_hmm",
        "--param",
        "model_file=none.model",
        "--data",
        str(data),
    )
    one_error(missing, "not found")


def test_backtest_ma_hmm_from_the_store(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "btc.csv", 2_500, seed=4)
    train_args = ("model", "train", "--data", str(data), "--states", "3", "--name", "btc")
    ok(cli(nats_server.url, *train_args, "--tag", "t1"))
    args = ("backtest", "--strategy", "ma_hmm", "--param", "model=btc", "--data", str(data))
    result = json.loads(ok(keel(nats_server.url, *args, "--json", cwd=tmp_path)).splitlines()[-1])
    assert result["signals"] > 0
    bad = ("backtest", "--strategy", "ma_hmm", "--param", "model=btc:nope", "--data", str(data))
    one_error(cli(nats_server.url, *bad), "unknown model btc:nope")
