"""``keel run notifier``: off without ``[notifier]``, one line for a missing URL (never a
value), and the configuration docs/alerts.md shows loads as written."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec

from services.config import KeelConfig
from tests.conftest import ROOT, keel

NO_SERVER = "nats://127.0.0.1:1"


def test_without_a_notifier_section_it_stops_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "keel.toml"
    path.write_text("")
    result = keel(NO_SERVER, "run", "notifier", "--config", str(path))
    assert result.returncode != 0
    assert "the config has no [notifier] section" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_missing_url_variable_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "keel.toml"
    path.write_text('[[notifier.destinations]]\nname = "ops"\nurl_env = "KEEL_TEST_UNSET_URL"\n')
    result = keel(NO_SERVER, "run", "notifier", "--config", str(path))
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in out
    assert "notifier destination ops: $KEEL_TEST_UNSET_URL is not set" in out


def test_the_documented_configuration_loads() -> None:
    text = (ROOT / "docs/alerts.md").read_text()
    section = text[text.index("## Notifier") :]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None
    config = msgspec.convert(tomllib.loads(example[1]), KeelConfig).notifier
    assert config is not None and [d.name for d in config.destinations] == ["ops"]
    limits = config.destinations[0].limits
    assert (limits.per_second, limits.per_minute, limits.queue) == (1, 20, 200)
