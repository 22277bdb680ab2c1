"""How the log's streams are stored: replica count and byte limit from the environment, an
event stream that refuses at its limit, and a command without the settings that leaves an
existing store as it is (a host command never scales a cluster's R3 streams down)."""

from __future__ import annotations

import pytest
from nats.js.api import DiscardPolicy

from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.streams import (
    MAX_BYTES_ENV,
    REPLICAS_ENV,
    STREAMS,
    StoreSettings,
    ensure_streams,
)


@pytest.fixture(autouse=True)
def no_store_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPLICAS_ENV, raising=False)
    monkeypatch.delenv(MAX_BYTES_ENV, raising=False)


def test_defaults_are_one_replica_and_no_limit() -> None:
    assert StoreSettings.from_env() == StoreSettings(replicas=1, max_bytes=-1)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        (REPLICAS_ENV, "2", "must be 1, 3 or 5"),
        (REPLICAS_ENV, "three", "not a whole number"),
        (MAX_BYTES_ENV, "0", "byte count > 0, or -1"),
        (MAX_BYTES_ENV, "-5", "byte count > 0, or -1"),
    ],
)
def test_bad_settings_are_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(KeelError) as err:
        StoreSettings.from_env()
    assert name in str(err.value) and says in str(err.value)
    assert "\n" not in str(err.value)


def test_event_streams_refuse_at_their_limit_and_system_ages_out() -> None:
    for spec in STREAMS:
        config = spec.config(StoreSettings(replicas=3, max_bytes=1_000_000))
        assert config.num_replicas == 3
        if spec.name == "SYSTEM":
            assert config.discard == DiscardPolicy.OLD and config.max_bytes == -1
            assert config.max_age and config.max_age > 0
        else:
            assert config.discard == DiscardPolicy.NEW and config.max_bytes == 1_000_000
            assert not config.max_age


async def test_unset_settings_keep_what_the_store_has(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MAX_BYTES_ENV, "5000000")
    await ensure_streams(bus.js)
    assert (await bus.js.stream_info("MARKET")).config.max_bytes == 5_000_000
    monkeypatch.delenv(MAX_BYTES_ENV)
    await ensure_streams(bus.js)
    assert (await bus.js.stream_info("MARKET")).config.max_bytes == 5_000_000
    monkeypatch.setenv(MAX_BYTES_ENV, "-1")
    await ensure_streams(bus.js)
    assert (await bus.js.stream_info("MARKET")).config.max_bytes == -1
    assert (await bus.js.stream_info("SYSTEM")).config.discard == DiscardPolicy.OLD
