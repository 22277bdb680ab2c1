"""Starting and stopping the worker fleet as separate processes (``keel up`` and ``keel demo``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from eventstore.server import URL_ENV
from services.config import KeelConfig
from services.execution.role import execution_role
from services.portfolio.role import portfolio_role
from services.risk.role import risk_role
from services.runtime.role import Role
from services.runtime.worker import durable_name
from services.strategy.compose import compose_strategy
from services.strategy.host import strategy_role


class WorkerProcess(msgspec.Struct):
    name: str
    args: list[str]
    env: dict[str, str] = {}
    proc: subprocess.Popen | None = None


def keel_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.app", *args]


def fleet_plan(config: KeelConfig, config_path: Path | None) -> list[WorkerProcess]:
    """The consuming workers a config asks for: each strategy instance, risk, execution, portfolio."""
    common = ["--config", str(config_path)] if config_path else []
    plan = [
        WorkerProcess("portfolio", ["run", "portfolio", *common]),
        WorkerProcess("execution", ["run", "execution", *common]),
        WorkerProcess("risk", ["run", "risk", *common]),
    ]
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
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **worker.env, URL_ENV: self.url, "PYTHONUNBUFFERED": "1"}
        with open(self.log_dir / f"{worker.name}.log", "ab") as log:
            worker.proc = subprocess.Popen(
                keel_command(*worker.args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.workers.append(worker)
        return worker

    def failed(self) -> list[WorkerProcess]:
        """Workers that exited with an error."""
        return [w for w in self.workers if w.proc and w.proc.poll() not in (None, 0)]

    def running(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.proc and w.proc.poll() is None]

    def log_tail(self, worker: WorkerProcess, lines: int = 3) -> str:
        path = self.log_dir / f"{worker.name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        for worker in self.workers:
            if worker.proc and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()


def fleet_roles(config: KeelConfig) -> list[Role]:
    """The consuming roles of a fleet, in its canonical order: strategies as declared, then
    risk, execution, portfolio (the replay engine delivers each event in this order)."""
    roles = [
        strategy_role(compose_strategy(s.name, s.params, s.instance_name), s.symbols)
        for s in config.strategies
    ]
    return [
        *roles,
        risk_role(config.risk, config.guards, config.sizing, config.instruments),
        execution_role(config.execution, config.orders),
        portfolio_role(config.portfolio, config.instruments),
    ]


def consumer_names(config: KeelConfig) -> set[str]:
    """The durable consumers a fleet from this config creates (what a drain waits for)."""
    return {durable_name(r.name, i.stream) for r in fleet_roles(config) for i in r.inputs}
