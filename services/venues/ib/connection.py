"""One ib_async session to IB Gateway or TWS that survives the daily restart and dropped links.

ib_async forgets everything (orders, executions, positions) when its socket closes, so a
reader must never take its state in between for an answer: ``ready`` is true only once a
connection's startup sync has finished and while IB reports its own link up (no 1100), and
``generation`` changes with every new connection so that an answer that straddled a
reconnect can be told apart. The feed and the gateway hook in through ``on_connected`` (they
re-subscribe and recover executions) and ``on_link`` (IB's 1100/1101/1102).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import random
from collections.abc import Awaitable, Callable

from ib_async import IB

from eventstore.errors import KeelError
from services.runtime.cancelling import end_tasks
from services.runtime.clock import Clock
from services.venues.ib.settings import IbSettings, check_accounts

log = logging.getLogger("keel.ib")

IN_USE = 326
LINK_LOST = 1100
RESTORED_DATA_LOST = 1101
RESTORED = 1102
PACING = frozenset({162, 420})
INFORMATIONAL = frozenset({2104, 2106, 2107, 2108, 2119, 2158})
CLOSE_S = 5.0
"""Wall seconds a close gives the connection loop and its hooks to end."""

ConnectedHook = Callable[[bool], Awaitable[None] | None]
LinkHook = Callable[[bool, bool], Awaitable[None] | None]


class LinkState(enum.StrEnum):
    DOWN = "down"
    CONNECTING = "connecting"
    UP = "up"
    LINK_LOST = "link_lost"
    CLOSED = "closed"


class NotReady(ConnectionError):
    """The session cannot answer now (down, syncing, or IB's link lost): never read as empty."""


class IbConnection:
    """Connects with the venue's host, port and client id, checks the account, and reconnects
    after every drop with exponential backoff and full jitter (in the injected clock's time,
    so a test's fast exchange clock shortens the wait). An account this IB session does not
    serve is the one failure that stops it: the user has to fix the login or the config."""

    def __init__(
        self,
        settings: IbSettings,
        clock: Clock,
        *,
        ib: IB | None = None,
        rng: random.Random | None = None,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        in_use_wait_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.ib = ib or IB()
        quiet = logging.getLogger("ib_async")
        if quiet.level == logging.NOTSET:  # every order message at INFO, whole: too much
            quiet.setLevel(logging.WARNING)
        self.state = LinkState.DOWN
        self.generation = 0
        self.on_connected: list[ConnectedHook] = []
        self.on_link: list[LinkHook] = []
        self.last_error = ""
        self.pacing_violations = 0
        self._rng = rng or random.Random()
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._in_use_wait_s = in_use_wait_s
        self._in_use = False
        self._dropped = asyncio.Event()
        self._up = asyncio.Event()
        self._fatal: KeelError | None = None
        self._task: asyncio.Task[None] | None = None
        self._hooks: set[asyncio.Task[None]] = set()
        self.ib.errorEvent += self._on_error
        self.ib.disconnectedEvent += self._on_disconnected

    @property
    def ready(self) -> bool:
        return self.state is LinkState.UP

    def require_ready(self) -> int:
        """The current generation, or ``NotReady`` when the session cannot answer."""
        if self.state is not LinkState.UP:
            raise NotReady(f"IB session {self.state.value}")
        return self.generation

    def check_same(self, generation: int) -> None:
        """Raise unless the session that answered is still the one that was asked."""
        if self.state is not LinkState.UP or self.generation != generation:
            raise NotReady("IB session dropped while answering")

    async def start(self, timeout_s: float | None = None) -> None:
        """Start the connection loop and wait for the first connection (or the timeout, in
        wall seconds; then the loop keeps trying in the background)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ib-connection")
        await self.wait_ready(timeout_s)

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        up = asyncio.create_task(self._up.wait())
        waits: set[asyncio.Future[object]] = {up}
        if self._task is not None:
            waits.add(self._task)  # type: ignore[arg-type]
        done, _ = await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        up.cancel()
        if self._fatal is not None:
            raise self._fatal
        if not done:
            raise KeelError(
                f"IB at {self.settings.host}:{self.settings.port} not reachable within "
                f"{timeout_s:g} s ({self.last_error or 'no answer'})"
            )

    async def close(self) -> None:
        """Within ``CLOSE_S``, whatever the connection loop was doing (a cancel can be lost:
        ``cancelling.py``); the socket is closed even if this is cancelled meanwhile."""
        self.state = LinkState.CLOSED
        self._up.clear()
        running = [t for t in (self._task, *self._hooks) if t is not None]
        try:
            for task in await end_tasks(running, CLOSE_S):
                log.error("IB session: %s did not end within %g s", task.get_coro(), CLOSE_S)
        finally:
            self.ib.errorEvent -= self._on_error
            self.ib.disconnectedEvent -= self._on_disconnected
            self.ib.disconnect()

    def backoff_s(self, attempt: int) -> float:
        """Full jitter: uniform between 0 and the capped exponential step."""
        cap = min(self._backoff_max_s, self._backoff_base_s * 2 ** min(attempt, 16))
        return self._rng.uniform(0.0, cap)

    async def _run(self) -> None:
        attempt = 0
        first = True
        while self.state is not LinkState.CLOSED:
            if not await self._connect():
                if self._fatal is not None or self.state is LinkState.CLOSED:
                    return
                wait = self._in_use_wait_s if self._in_use else self.backoff_s(attempt)
                if self._in_use:
                    log.warning(
                        "IB client id %d is still in use (error 326: the previous session "
                        "has not closed yet); retrying in %.1f s",
                        self.settings.client_id,
                        wait,
                    )
                else:
                    log.warning(
                        "IB connection failed (%s); retrying in %.1f s", self.last_error, wait
                    )
                attempt += 1
                await self.clock.sleep(wait)
                continue
            attempt = 0
            log.info(
                "IB connected at %s:%d as client %d%s",
                self.settings.host,
                self.settings.port,
                self.settings.client_id,
                "" if first else " (reconnected)",
            )
            await self._fire_connected(first)
            first = False
            await self._dropped.wait()
            if self.state is not LinkState.CLOSED:
                log.warning("IB connection lost; reconnecting")

    async def _connect(self) -> bool:
        self.state = LinkState.CONNECTING
        self._in_use = False
        self._dropped.clear()
        s = self.settings
        try:
            await self.ib.connectAsync(
                s.host,
                s.port,
                clientId=s.client_id,
                timeout=s.connect_timeout_s,
                account=s.account,
                raiseSyncErrors=True,
            )
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if self.state is not LinkState.CLOSED:
                self.state = LinkState.DOWN
            return False
        if self.state is LinkState.CLOSED:  # closed while connecting: never up again
            self.ib.disconnect()
            return False
        problem = check_accounts(s, tuple(self.ib.managedAccounts()))
        if problem:
            self._fatal = KeelError(f"IB at {s.host}:{s.port}: {problem}")
            self.state = LinkState.CLOSED
            self.ib.disconnect()
            return False
        self.generation += 1
        self.state = LinkState.UP
        self._up.set()
        return True

    async def _fire_connected(self, first: bool) -> None:
        for hook in list(self.on_connected):
            await self._call(hook, first)

    async def _call(self, hook: Callable[..., Awaitable[None] | None], *args: bool) -> None:
        try:
            result = hook(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("IB connection hook %r failed", hook)

    def _spawn(self, hook: LinkHook, restored: bool, data_lost: bool) -> None:
        task = asyncio.create_task(self._call(hook, restored, data_lost))
        self._hooks.add(task)
        task.add_done_callback(self._hooks.discard)

    def _on_disconnected(self) -> None:
        if self.state in (LinkState.UP, LinkState.LINK_LOST):
            self.state = LinkState.DOWN
            self._up.clear()
        self._dropped.set()

    def _on_error(self, req_id: int, code: int, message: str, contract: object) -> None:
        if code == IN_USE:
            self._in_use = True
        elif code == LINK_LOST:
            if self.state is LinkState.UP:
                self.state = LinkState.LINK_LOST
                self.generation += 1
                self._up.clear()
            log.warning("IB lost its link to IB's servers (1100)")
            for hook in list(self.on_link):
                self._spawn(hook, False, False)
        elif code in (RESTORED_DATA_LOST, RESTORED):
            lost = code == RESTORED_DATA_LOST
            if self.state is LinkState.LINK_LOST:
                self.state = LinkState.UP
                self._up.set()
            log.warning("IB link restored (%d, market data %s)", code, "lost" if lost else "kept")
            for hook in list(self.on_link):
                self._spawn(hook, True, lost)
        elif code in PACING:
            self.pacing_violations += 1
            log.warning("IB pacing violation %d on request %d: backing off", code, req_id)
        elif code in INFORMATIONAL or 2100 <= code < 2200:
            log.debug("IB notice %d: %s", code, message)
