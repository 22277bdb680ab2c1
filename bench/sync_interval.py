"""JetStream ``sync_interval``: what fsync on every write costs Keel's write paths.

Two fresh nats-servers on loopback, each with a temp store dir, identical but for
``jetstream { sync_interval }``: the server default (``2m``, fsync every two minutes) and
``always`` (fsync before every publish ack). On each, ``--repeats`` interleaved runs of:

1. **order path**: ``Bus.publish`` awaited one by one (how workers publish decisions), with
   the per-publish latency (p50, p99);
2. **bulk**: ``Bus.publish_many`` (512 in flight, how ``keel ingest`` and the feed publish);
3. **snapshot**: ``KeyValue.put`` awaited one by one (a worker's snapshot after each batch).

Payloads are real ``Bar`` events and envelopes. Figures are medians over the repeats.
Usage::

    .venv/bin/python bench/sync_interval.py [--messages N] [--repeats R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats.js.api import KeyValueConfig, StorageType

from contracts.envelope import bar_envelope
from contracts.events import Bar
from eventstore.bus import Bus
from eventstore.server import find_binary, free_port, port_open

SETTINGS = ("2m", "always")
MINUTE_NS = 60_000_000_000


def bars(n: int, offset: int) -> list[Bar]:
    start = 1_700_000_000_000_000_000 + offset * MINUTE_NS
    out = []
    for i in range(n):
        t = start + i * MINUTE_NS
        out.append(
            Bar(
                ts=t + MINUTE_NS,
                venue="bench",
                symbol="BTC/USDT",
                interval="1m",
                open_time=t,
                close_time=t + MINUTE_NS,
                open=100.0,
                high=101.0,
                low=99.0,
                close=100.5,
                volume=1.0,
            )
        )
    return out


class Server:
    def __init__(self, root: Path, sync: str) -> None:
        self.dir = root / f"sync-{sync}"
        self.dir.mkdir()
        conf = self.dir / "nats.conf"
        conf.write_text(f'jetstream {{\n  sync_interval: "{sync}"\n}}\n')
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        cmd = [find_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(self.port)]
        cmd += ["-js", "-sd", str(self.dir / "jetstream")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not port_open("127.0.0.1", self.port):
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def run_once(url: str, n: int, offset: int) -> dict[str, float]:
    bus = await Bus.connect(url, name="bench")
    try:
        latencies = []
        items = [(b, bar_envelope(b)) for b in bars(n, offset)]
        started = time.perf_counter()
        for bar, env in items:
            t0 = time.perf_counter_ns()
            await bus.publish(bar, env)
            latencies.append(time.perf_counter_ns() - t0)
        awaited = n / (time.perf_counter() - started)

        bulk_items = [(b, bar_envelope(b)) for b in bars(n, offset + n)]
        started = time.perf_counter()
        await bus.publish_many(bulk_items)
        bulk = n / (time.perf_counter() - started)

        kv = await bus.js.create_key_value(
            KeyValueConfig(bucket="bench", history=1, storage=StorageType.FILE)
        )
        snapshot = b"x" * 2048
        puts = max(n // 4, 1)
        started = time.perf_counter()
        for i in range(puts):
            await kv.put(f"worker{i % 4}", snapshot)
        kv_rate = puts / (time.perf_counter() - started)
        latencies.sort()
        return {
            "awaited_msgs_s": awaited,
            "awaited_p50_us": latencies[len(latencies) // 2] / 1000,
            "awaited_p99_us": latencies[int(len(latencies) * 0.99)] / 1000,
            "bulk_msgs_s": bulk,
            "kv_puts_s": kv_rate,
        }
    finally:
        await bus.js.delete_key_value("bench")
        await bus.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="keel-sync-bench-"))
    servers = {sync: Server(root, sync) for sync in SETTINGS}
    runs: dict[str, list[dict[str, float]]] = {sync: [] for sync in SETTINGS}
    try:
        for r in range(args.repeats):
            for sync, server in servers.items():
                result = asyncio.run(run_once(server.url, args.messages, 2 * r * args.messages))
                runs[sync].append(result)
                print(f"run {r + 1} sync_interval={sync}: {result}", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    medians = {
        sync: {key: statistics.median(run[key] for run in results) for key in results[0]}
        for sync, results in runs.items()
    }
    print(f"{'figure':<18}" + "".join(f"{s:>14}" for s in SETTINGS))
    for key in medians[SETTINGS[0]]:
        print(f"{key:<18}" + "".join(f"{medians[s][key]:>14,.0f}" for s in SETTINGS))
    if args.json:
        machine = {"python": platform.python_version(), "cpus": os.cpu_count()}
        print(json.dumps({"medians": medians, "runs": runs, "machine": machine}))


if __name__ == "__main__":
    main()
