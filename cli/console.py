"""Shared console and the one place user errors become a single red line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import nats.errors
import typer
from rich.console import Console

from contracts.intervals import IntervalError
from contracts.subjects import SubjectError
from eventstore.errors import KeelError
from eventstore.retry import describe, transient
from services.config import KeelConfig, load_config
from services.marketdata.sources import SourceError
from strategies.registry import StrategyError

console = Console()
errors = Console(stderr=True)

USER_ERRORS = (KeelError, StrategyError, SourceError, SubjectError, IntervalError)
SERVER_ERRORS = (nats.errors.Error, TimeoutError, ConnectionError)
"""The server away or refusing mid-command (nats-py's errors, JetStream's included)."""


def fail(message: str, code: int = 2) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a command's coroutine; user mistakes and server trouble print one line.

    SIGTERM cancels the coroutine the way Ctrl-C does, so its ``finally`` blocks stop the
    embedded server and workers it started (a command with its own handler replaces this).
    """
    terminated: list[bool] = []

    async def main() -> Any:
        task = asyncio.current_task()
        assert task is not None

        def on_sigterm() -> None:
            terminated.append(True)
            task.cancel()

        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        return await coro

    try:
        return asyncio.run(main())
    except USER_ERRORS as exc:
        raise fail(str(exc)) from None
    except SERVER_ERRORS as exc:
        hint = " (is the server up?)" if transient(exc) else ""
        raise fail(f"NATS: {describe(exc)}{hint}", 1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except asyncio.CancelledError:
        if not terminated:
            raise
        raise typer.Exit(143) from None


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """The same one line for user mistakes raised outside ``run`` (inputs read up front)."""
    try:
        yield
    except USER_ERRORS as exc:
        raise fail(str(exc)) from None


def load_config_or_exit(path: Path | None) -> KeelConfig:
    try:
        return load_config(path)
    except KeelError as exc:
        raise fail(str(exc)) from None
