"""Starting and stopping the worker fleet as separate processes (``keel up`` and ``keel demo``),
and telling whether a fleet already runs (the directory's lock, live heartbeats)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from pathlib import Path

import msgspec

from contracts.model_events import ModelVariant
from contracts.subjects import name_token
from contracts.system_events import Heartbeat
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.log_reader import last_per_subject
from eventstore.server import URL_ENV
from services.config import KeelConfig, StrategyConfig
from services.execution.paper_venue import PaperVenueConfig
from services.execution.role import execution_role
from services.governance.role import governance_role
from services.portfolio.role import portfolio_role
from services.risk.role import risk_role
from services.runtime.role import Role
from services.runtime.worker import durable_name
from services.strategy.compose import compose_strategy, compose_variants
from services.strategy.host import strategy_role
from services.strategy.shadow_book import FillRules
from services.strategy.variant_host import variant_role


class WorkerProcess(msgspec.Struct):
    name: str
    args: list[str]
    env: dict[str, str] = {}
    proc: subprocess.Popen | None = None


def keel_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.app", *args]


def fleet_plan(
    config: KeelConfig, config_path: Path | None, live: bool = False
) -> list[WorkerProcess]:
    """The consuming workers a config asks for: one gateway per venue it trades through a
    gateway (``--live`` passed on: real money needs it), each strategy instance, risk,
    execution, portfolio, and governance when configured."""
    common = ["--config", str(config_path)] if config_path else []
    plan = [
        WorkerProcess(
            f"gateway-{name}",
            ["run", "gateway", "--venue", name, *common, *(["--live"] if live else [])],
        )
        for name in sorted(config.gateways)
    ]
    plan += [
        WorkerProcess("portfolio", ["run", "portfolio", *common]),
        WorkerProcess("execution", ["run", "execution", *common]),
        WorkerProcess("risk", ["run", "risk", *common]),
    ]
    if config.governance is not None:
        plan.append(WorkerProcess("governance", ["run", "governance", *common]))
    for strategy in config.strategies:
        plan.append(
            WorkerProcess(
                f"strategy-{strategy.instance_name}",
                ["run", "strategy", "--instance", strategy.instance_name, *common],
            )
        )
    return plan


class Fleet:
    def __init__(self, url: str, log_dir: Path) -> None:
        self.url = url
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []

    def start(self, worker: WorkerProcess) -> WorkerProcess:
        self._spawn(worker)
        self.workers.append(worker)
        return worker

    def restart(self, worker: WorkerProcess) -> None:
        """The same command again, its output appended to the same log."""
        self._spawn(worker)

    def _spawn(self, worker: WorkerProcess) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **worker.env, URL_ENV: self.url, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path(worker.name), "ab") as log:
            worker.proc = subprocess.Popen(
                keel_command(*worker.args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def failed(self) -> list[WorkerProcess]:
        """Workers that exited with an error."""
        return [w for w in self.workers if w.proc and w.proc.poll() not in (None, 0)]

    def running(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.proc and w.proc.poll() is None]

    def reap(self) -> list[tuple[WorkerProcess, int]]:
        """Workers that exited since the last call, with their return codes (negative: the
        signal); each is reported once, and stays stopped until ``restart``."""
        exits = []
        for worker in self.workers:
            code = worker.proc.poll() if worker.proc else None
            if code is not None:
                exits.append((worker, code))
                worker.proc = None
        return exits

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, worker: WorkerProcess, lines: int = 3) -> str:
        return log_tail(self.log_path(worker.name), lines)

    def stop(self, timeout: float = 10.0, names: Collection[str] | None = None) -> None:
        """SIGTERM to the workers (those of ``names`` only, when given), a kill for any that
        has not ended within ``timeout``."""
        chosen = [w for w in self.workers if names is None or w.name in names]
        for worker in chosen:
            if worker.proc and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in chosen:
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()


def fleet_roles(config: KeelConfig) -> list[Role]:
    """The consuming roles of a fleet, in its canonical order: strategies as declared, then
    risk, execution, portfolio, then governance when configured (the replay engine delivers
    each event in this order)."""
    roles = [instance_role(config, s) for s in config.strategies]
    roles += [
        fleet_risk_role(config),
        execution_role(config.execution, config.orders, config.gateways, config.in_place_gateways),
        portfolio_role(config.portfolio, config.instruments),
    ]
    if config.governance is not None:
        roles.append(governance_role(config.governance, config.strategies))
    return roles


def instance_role(config: KeelConfig, strategy: StrategyConfig) -> Role:
    """One strategy instance's role; with variants, they are routed and shadowed by the
    paper venue's rules of ``[execution]`` (docs/governance.md, "Variants")."""
    instance = strategy.instance_name
    if not strategy.variants:
        return strategy_role(
            compose_strategy(strategy.name, strategy.params, instance), strategy.symbols
        )
    variants = compose_variants(strategy.name, strategy.params, instance, strategy.variants)
    roster = tuple(ModelVariant(v.tag, v.weight, v.canary) for v in strategy.variants)
    return variant_role(
        instance,
        variants,
        roster,
        strategy.max_canary,
        fill_rules(config.execution),
        strategy.symbols,
    )


def fill_rules(execution: PaperVenueConfig) -> FillRules:
    """The paper venue's rules a shadow fill takes (a shadow book sees bars, not quotes)."""
    return FillRules(
        at_close=execution.fill == "close",
        fee_bps=execution.fee_bps,
        slippage_bps=execution.slippage_bps,
        slippage_range_frac=execution.slippage_range_frac,
        latency_bars=execution.latency_bars,
    )


def fleet_risk_role(config: KeelConfig) -> Role:
    """Risk as a fleet runs it: it reads the playbook actions when governance is on."""
    return risk_role(
        config.risk,
        config.guards,
        config.sizing,
        config.instruments,
        governed=config.governance is not None,
    )


def consumer_names(config: KeelConfig) -> set[str]:
    """The durable consumers a fleet from this config creates (what a drain waits for)."""
    return {durable_name(r.name, i.stream) for r in fleet_roles(config) for i in r.inputs}


def log_tail(path: Path, lines: int = 3) -> str:
    """The last non-blank lines of a log, joined on one line."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16_384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return " | ".join([line.strip() for line in text.splitlines() if line.strip()][-lines:])


LOCK_NAME = "fleet.lock"


@contextlib.contextmanager
def fleet_lock(data_dir: Path) -> Iterator[None]:
    """One ``keel up`` per directory: an exclusive ``flock`` on ``<data_dir>/fleet.lock``,
    held for the fleet's life. The kernel drops it when the process ends however it ends,
    so a crashed ``keel up`` never leaves a stale lock; the file keeps the holder's pid."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise KeelError(
                f"a fleet already runs in {data_dir.resolve().parent} (keel up, pid {holder}): "
                "stop it first (Ctrl-C or kill that pid), or start this one in another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


async def live_workers(
    bus: Bus, names: set[str], now_ns: int, within_s: float
) -> list[tuple[Heartbeat, float]]:
    """The workers among ``names`` whose last heartbeat says running and is younger than
    ``within_s``: a fleet consuming on this server right now, with each beat's age."""
    wanted = {f"sys.heartbeat.{name_token(name, 'worker')}" for name in names}
    live = []
    for item in await last_per_subject(bus, "SYSTEM", "sys.heartbeat.*"):
        beat = item.event
        if item.subject not in wanted or not isinstance(beat, Heartbeat):
            continue
        age = (now_ns - beat.ts) / 1e9
        if beat.status == "running" and age < within_s:
            live.append((beat, age))
    return live
