"""One gateway per API key: an exclusive ``flock`` on ``.keel/locks/gateway-<key>.lock``.

The file's name derives from a hash of the exchange and its API key (never the key), so two
venues that share a key share the lock, and a second gateway on the same key refuses to
start with one line naming the process that holds it. The kernel drops the lock when the
holder dies, ``kill -9`` included: nothing is left to clean up. The lock is per machine;
gateways for one key on two machines are an operator's error this cannot see.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from eventstore.errors import KeelError


class KeyLock:
    def __init__(self, directory: Path, exchange: str, api_key: str, venue: str) -> None:
        digest = hashlib.sha256(f"{exchange}\x1f{api_key}".encode()).hexdigest()[:16]
        self.path = directory / "locks" / f"gateway-{digest}.lock"
        self.venue = venue
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise KeelError(
                f"venue {self.venue}: its API key is in use by another gateway ({holder}); "
                f"one process per key (lock {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, venue {self.venue}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
