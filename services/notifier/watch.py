"""Dead-man watch: a worker whose heartbeats stop is an alert.

Pure: ``beat`` and ``tick`` take the time. A worker is dead when its last beat is older than
``dead_after_s`` (workers beat every 2 s by default); its next beat resolves the alert. A
worker that said ``stopped`` left on purpose and is no longer watched.
"""

from __future__ import annotations

from contracts.system_events import Heartbeat
from services.notifier.alerts import Alert

S = 1_000_000_000


class HeartbeatWatch:
    def __init__(self, dead_after_s: float, ignore: frozenset[str] = frozenset()) -> None:
        self.dead_after_ns = int(dead_after_s * S)
        self._ignore = ignore
        self._last: dict[str, int] = {}
        self._dead: set[str] = set()

    def beat(self, beat: Heartbeat, seen: int, cause_id: str = "") -> list[Alert]:
        """``seen``: when the beat was stored (a replayed old beat counts from then)."""
        worker = beat.worker
        if worker in self._ignore:
            return []
        key = f"heartbeat.{worker}"
        if beat.status == "stopped":
            self._last.pop(worker, None)
            was_dead = worker in self._dead
            self._dead.discard(worker)
            if not was_dead:
                return []
            return [Alert(key, "INFO", "heartbeat", f"{worker} stopped", "", cause_id, True)]
        self._last[worker] = max(seen, self._last.get(worker, 0))
        if worker in self._dead:
            self._dead.discard(worker)
            title = f"{worker} beats again ({beat.instance})"
            return [Alert(key, "INFO", "heartbeat", title, "", cause_id, resolves=True)]
        return []

    def tick(self, now: int) -> list[Alert]:
        alerts = []
        for worker, last in self._last.items():
            if worker not in self._dead and now - last > self.dead_after_ns:
                self._dead.add(worker)
                silent = (now - last) / S
                alerts.append(
                    Alert(
                        f"heartbeat.{worker}",
                        "CRITICAL",
                        "heartbeat",
                        f"{worker}: no heartbeat for {silent:.0f} s",
                        f"last beat {silent:.1f} s ago; dead after {self.dead_after_ns / S:g} s",
                    )
                )
        return alerts

    def next_due(self) -> int | None:
        """When the next worker would be declared dead if it stays silent."""
        alive = [t for w, t in self._last.items() if w not in self._dead]
        return min(alive) + self.dead_after_ns + 1 if alive else None
