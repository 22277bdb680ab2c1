"""Issue 13, "Fuzzing", the short version of ``bench/fuzz.py`` (same code path).

Malformed messages of every kind (random bytes, truncated and mutated encodings, wrong
shapes and field types, another type or a contradicted identity on the subject, unfit
names, broken envelopes) on every input subject of the default fleet, sent through a real
nats-server to real ``keel run <role>`` processes: no process exits or restarts, each
message gets exactly one dead letter per consuming worker with the contracts' reason,
nothing else is published, and the fleet still trades afterwards. Then every decoder gets
garbage and never fails other than with its own error and a reason.
"""

from __future__ import annotations

from pathlib import Path

from eventstore.server import EmbeddedServer
from services.config import KeelConfig
from services.fleet import fleet_roles
from tests.decoder_fuzz import decoder_rows
from tests.fuzz_harness import ProcessFleet, input_patterns, run_fuzz
from tests.malformed import Generator

COUNT = 150


def test_the_fleet_consumes_the_subjects_the_fuzzer_covers() -> None:
    patterns = {p for _, p in input_patterns(fleet_roles(KeelConfig()))}
    assert patterns == {
        "md.bar.>",
        "md.instrument.>",
        "md.funding.>",
        "md.status.>",
        "gov.cmd.>",
        "sig.>",
        "exec.>",
        "ord.cmd.>",
        "ord.alert.>",
        "venue.kill",
    }


def test_every_generated_message_is_one_a_worker_must_refuse() -> None:
    for pattern in ("sig.>", "exec.>"):
        generator = Generator(pattern, 5)
        messages = generator.messages(len(Generator.KINDS) * 20, "unit")
        assert {m.kind for m in messages} == set(Generator.KINDS)
        assert all(m.reason for m in messages)
        assert len({m.headers.get("Nats-Msg-Id") for m in messages} - {None}) > 100


async def test_malformed_messages_on_every_input_subject_become_dead_letters(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    fleet = ProcessFleet(tmp_path / "logs")
    report = await run_fuzz(nats_server.url, fleet, COUNT, seed=13, mode="keel run")
    assert len(report.rows) == 10
    for row in report.rows:
        assert row.sent == COUNT, row.pattern
        assert row.letters == COUNT * len(row.workers), row
        assert row.missing == row.duplicates == 0, row
        assert row.empty_reasons == row.wrong_reasons == 0, row
    assert report.crashed == [], [fleet.log_tail(n) for n in report.crashed]
    assert report.restarted == []
    assert report.other_outputs == {}
    assert report.stray_letters == 0
    assert report.alive_after
    assert report.clean


def test_every_decoder_refuses_garbage_with_its_own_error(tmp_path: Path) -> None:
    rows = decoder_rows(300, seed=13, tmp=tmp_path, files=100)
    assert len(rows) == 8
    for row in rows:
        assert row.crashes == 0, row.first_crash
        assert row.empty_reasons == 0, row
        assert row.refused > row.inputs // 2, row  # garbage, mostly refused
        assert row.accepted + row.refused == row.inputs
