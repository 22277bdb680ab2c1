"""A worker process that dies at a chosen point, for crash tests.

``python -m tests.crash_worker ROLE --config FILE --exit-before-commit N`` runs the role the
config gives ``keel run ROLE``, with a fault injected into the worker loop: after the Nth
batch that published outputs, before that batch's snapshot and acks, the process exits with
137 as if killed. The production command line has no such switch; ``start_crashing`` starts
this module the way ``Fleet.start`` starts ``keel run``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from eventstore.bus import Bus
from eventstore.server import URL_ENV, nats_url
from services.config import load_config
from services.fleet import Fleet, WorkerProcess, fleet_roles
from services.runtime.worker import Worker, WorkerOptions

ROOT = Path(__file__).resolve().parents[1]
CRASH_CODE = 137


def exit_before_commit(batches: int) -> Callable[[int], None]:
    """The fault: exit at the ``batches``-th batch that published something."""
    left = batches

    def fault(published: int) -> None:
        nonlocal left
        if published:
            left -= 1
            if left == 0:
                os._exit(CRASH_CODE)

    return fault


def start_crashing(fleet: Fleet, name: str, config: Path, batches: int) -> WorkerProcess:
    """Start the worker ``name`` of ``config`` with the fault, logged and stopped by ``fleet``."""
    args = [name, "--config", str(config), "--exit-before-commit", str(batches)]
    worker = WorkerProcess(name, args)
    fleet.log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, URL_ENV: fleet.url, "PYTHONUNBUFFERED": "1"}
    with open(fleet.log_dir / f"{name}.log", "ab") as log:
        worker.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_worker", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    fleet.workers.append(worker)
    return worker


async def _serve(worker: Worker) -> None:
    with nats_url() as url:
        bus = await Bus.connect(url, name=worker.name)
        try:
            await worker.run(bus)
        finally:
            await bus.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.crash_worker")
    parser.add_argument("role", help="worker name: risk, execution, portfolio, strategy-<id>")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--exit-before-commit", type=int, required=True, metavar="N")
    args = parser.parse_args(argv)
    roles = {role.name: role for role in fleet_roles(load_config(args.config))}
    if args.role not in roles:
        parser.error(f"no worker {args.role!r} in {args.config} (known: {', '.join(roles)})")
    worker = Worker(
        roles[args.role],
        WorkerOptions(metrics_port=None),
        before_commit=exit_before_commit(args.exit_before_commit),
    )
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {worker.name} %(levelname)s %(message)s"
    )
    asyncio.run(_serve(worker))


if __name__ == "__main__":
    main()
