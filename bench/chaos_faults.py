"""The chaos scenarios: which faults, at which bar, on a seed.

A plan is drawn from ``random.Random(f"{scenario}:{seed}")`` before the session starts, so a
seed names the same faults at the same bars every time (the moment inside a bar, and so
which batch a kill interrupts, still depends on the machine). The injector waits until the
planned number of bars is stored, then strikes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import msgspec

from bench.chaos_session import FEED, Session, SingleServer
from eventstore.local_cluster import LocalCluster
from services.runtime.worker import WorkerOptions

SCENARIOS = ("worker-kill", "server-kill", "sigstop", "cluster-node")
CONTROL = "control"
"""A second uninterrupted run: what the comparison shows with no fault at all."""
ACK_WAIT_S = WorkerOptions().ack_wait_s
KILLS = 6
SERVER_KILLS = 3
PAUSES = 3
LEADER_STREAMS = ("MARKET", "SIGNALS", "ORDERS", "EXECUTION", "PORTFOLIO")


class Fault(msgspec.Struct, frozen=True):
    """``kind``: kill-worker, kill-server, sigstop, kill-node or kill-leader. ``target``: a
    process name, a node index, or the stream whose leader is killed. ``down_s``: how long
    the server or node stays down, or the worker stays stopped."""

    kind: str
    at_bar: int
    target: str = ""
    delay_s: float = 0.0
    down_s: float = 0.0

    def describe(self) -> str:
        down = f" for {self.down_s:.1f}s" if self.down_s else ""
        return f"{self.kind} {self.target} at bar {self.at_bar}{down}".replace("  ", " ")


def plan(scenario: str, seed: int, bars: int, workers: list[str], nodes: int = 3) -> list[Fault]:
    """The faults of one scenario and seed, in the order they strike."""
    rng = random.Random(f"{scenario}:{seed}")

    def moments(n: int) -> list[int]:
        low, high = max(1, bars // 20), max(2, bars * 9 // 10)
        return sorted(rng.randint(low, high) for _ in range(n))

    if scenario == CONTROL:
        return []
    if scenario == "worker-kill":
        targets = [*workers, FEED]
        return [
            Fault("kill-worker", b, rng.choice(targets), rng.uniform(0, 0.3))
            for b in moments(KILLS)
        ]
    if scenario == "server-kill":
        return [
            Fault("kill-server", b, "nats-server", rng.uniform(0, 0.3), rng.uniform(0.5, 4.0))
            for b in moments(SERVER_KILLS)
        ]
    if scenario == "sigstop":
        return [
            Fault(
                "sigstop",
                b,
                rng.choice(workers),
                rng.uniform(0, 0.3),
                ACK_WAIT_S + rng.uniform(1, 4),
            )
            for b in moments(PAUSES)
        ]
    if scenario == "cluster-node":
        first, second = moments(2)
        return [
            Fault(
                "kill-node",
                first,
                str(rng.randrange(nodes)),
                rng.uniform(0, 0.3),
                rng.uniform(2, 6),
            ),
            Fault(
                "kill-leader",
                second,
                rng.choice(LEADER_STREAMS),
                rng.uniform(0, 0.3),
                rng.uniform(2, 6),
            ),
        ]
    raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")


def injector(faults: list[Fault], log: list[str], report: Callable[[str], None]):
    """The coroutine the session runs beside itself; each fault struck is noted in ``log``."""

    async def inject(session: Session) -> int:
        struck = 0
        for fault in faults:
            await session.wait_bars(fault.at_bar)
            await asyncio.sleep(fault.delay_s)
            hit, note = await _strike(session, fault)
            log.append(f"{fault.describe()}: {note}")
            report(f"  {log[-1]}")
            struck += hit
        return struck

    return inject


async def _strike(session: Session, fault: Fault) -> tuple[bool, str]:
    backend = session.backend
    if fault.kind == "kill-worker":
        return await _kill_when_up(session, fault.target)
    if fault.kind == "sigstop":
        await _wait_up(session, fault.target)
        if not session.pause(fault.target):
            return False, "not running: skipped"
        await asyncio.sleep(fault.down_s)
        session.resume(fault.target)
        return True, f"stopped at {session.bars_stored} bars, continued"
    if fault.kind == "kill-server":
        assert isinstance(backend, SingleServer)
        backend.kill()
        await asyncio.sleep(fault.down_s)
        await asyncio.to_thread(backend.start)
        return True, f"killed at {session.bars_stored} bars, restarted"
    if fault.kind in ("kill-node", "kill-leader"):
        assert isinstance(backend, ClusterBackend)
        node = (
            int(fault.target) if fault.kind == "kill-node" else await backend.leader(fault.target)
        )
        backend.kill(node)
        await asyncio.sleep(fault.down_s)
        await asyncio.to_thread(backend.restart, node)
        return (
            True,
            f"node {backend.node_name(node)} killed at {session.bars_stored} bars, restarted",
        )
    raise ValueError(f"unknown fault {fault.kind!r}")


async def _wait_up(session: Session, name: str, timeout: float = 60.0) -> None:
    """A process being restarted is struck once it runs again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not session.children[name].alive() and loop.time() < deadline:
        await asyncio.sleep(0.05)


async def _kill_when_up(session: Session, name: str) -> tuple[bool, str]:
    await _wait_up(session, name)
    if session.kill(name):
        return True, f"killed at {session.bars_stored} bars"
    return False, "not running: skipped"


class ClusterBackend:
    """A 3-node local cluster (``eventstore/local_cluster.py``) as the session's log."""

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        self._cluster = LocalCluster(base_dir, size)

    @property
    def url(self) -> str:
        return self._cluster.url

    def start(self) -> None:
        self._cluster.start(timeout=60.0)

    def stop(self) -> None:
        self._cluster.stop()

    def kill(self, node: int) -> None:
        self._cluster.kill(node)

    def restart(self, node: int) -> None:
        self._cluster.restart(node)

    async def leader(self, stream: str) -> int:
        return await self._cluster.leader(stream)

    def node_name(self, node: int) -> str:
        return self._cluster.node_names[node]
