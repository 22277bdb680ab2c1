"""Options shared by the commands that replay market data (backtest, sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DataOpt = Annotated[
    list[str] | None,
    typer.Option("--data", help="Bar file, or a stream (MARKET) / subject filter; repeatable."),
]
SymbolOpt = Annotated[
    list[str] | None,
    typer.Option("--symbol", help="Symbol of the --data before it (default: file stem)."),
]
VenueOpt = Annotated[str, typer.Option("--venue", help="Venue name for file data.")]
IntervalOpt = Annotated[
    str | None, typer.Option("--interval", help="Bar interval of file data (default: inferred).")
]
StartOpt = Annotated[str | None, typer.Option("--start", help="First bar (ISO time), inclusive.")]
EndOpt = Annotated[str | None, typer.Option("--end", help="End (ISO time), exclusive.")]
CashOpt = Annotated[float | None, typer.Option("--cash", help="Starting cash.")]
FillOpt = Annotated[
    str | None,
    typer.Option("--fill", help="Market fills: next_open (next bar's open) or close."),
]
FeeOpt = Annotated[float | None, typer.Option("--fee-bps", help="Taker fee in basis points.")]
SlippageOpt = Annotated[
    float | None, typer.Option("--slippage-bps", help="Slippage in basis points.")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Fleet config (TOML).")]
