"""The compose deployment stays in step with the code: commands, files, scrape targets, config."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from services.config import load_config
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
DOCKERFILE = "infra/Dockerfile"
KEEL = sorted(
    name for name, spec in SERVICES.items() if spec.get("build", {}).get("dockerfile") == DOCKERFILE
)
METRICS_PORT = 9100


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


def test_the_fleet_is_deployed() -> None:
    assert sorted(["marketdata", "strategy-ma_cross", "risk", "execution", "portfolio"]) == KEEL
    assert {"nats", "prometheus"} <= SERVICES.keys()
    assert "grafana" not in SERVICES


@pytest.mark.parametrize("service", KEEL)
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
    assert spec["restart"] == "unless-stopped"
    limits = spec["deploy"]["resources"]["limits"]
    assert limits["cpus"] and limits["memory"]
    assert container_to_repo(service).get("/etc/keel/keel.toml") == ROOT / "infra/keel.toml"
    args = command_args(service)
    if "--metrics-port" in args:
        assert option(args, "--metrics-addr") == "0.0.0.0"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_mounted_and_config_files_exist(service: str) -> None:
    mounts = container_to_repo(service)
    for repo_path in mounts.values():
        assert repo_path.is_file(), repo_path
    build = SERVICES[service].get("build")
    if build:
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    if service in KEEL:
        config = option(command_args(service), "--config")
        if config is not None:
            assert config in mounts, f"{service}: --config {config} is not mounted"


def test_nats_service() -> None:
    nats = SERVICES["nats"]
    assert nats["image"].startswith("nats:")
    args = shlex.split(nats["command"])
    assert option(args, "-c") == "/etc/nats/nats.conf"
    assert option(args, "-sd") == "/data"
    assert option(args, "-m") == "8222"
    assert "-js" in args
    assert container_to_repo("nats")["/etc/nats/nats.conf"] == ROOT / "nats.conf"
    assert "nats-data:/data" in nats["volumes"]
    assert "nats-data" in COMPOSE["volumes"]
    assert any(":8222/healthz" in part for part in nats["healthcheck"]["test"])


def test_prometheus_scrapes_every_metrics_port() -> None:
    mounts = container_to_repo("prometheus")
    config_path = mounts["/etc/prometheus/prometheus.yml"]
    assert config_path == ROOT / "infra/prometheus/prometheus.yml"
    scrape = yaml.safe_load(config_path.read_text())
    targets = [
        target
        for job in scrape["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    with_metrics = {
        name: int(port)
        for name in KEEL
        if (port := option(command_args(name), "--metrics-port")) is not None
    }
    assert set(with_metrics.values()) == {METRICS_PORT}
    assert sorted(targets) == sorted(f"{name}:{METRICS_PORT}" for name in with_metrics)


def test_fleet_config_loads() -> None:
    config = load_config(ROOT / "infra/keel.toml")
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
    users = [words[1] for words in lines if words[0] == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ["EXPOSE", str(METRICS_PORT)] in lines
    assert ["ENTRYPOINT", '["keel"]'] in lines
