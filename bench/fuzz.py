"""Fuzzing: malformed messages on every input subject of every worker of the default fleet,
through a real nats-server to real ``keel run <role>`` processes, and garbage for every
decoder Keel applies to bytes it did not write (issue 13, "Fuzzing").

For every input subject pattern of the default fleet (ma_cross, risk, execution, portfolio:
``md.bar.>``, ``md.instrument.>``, ``md.funding.>``, ``gov.cmd.>``, ``sig.>``, ``exec.>``,
``ord.cmd.>``, ``ord.alert.>``) ``--count`` messages from ``tests/malformed.py``: random
bytes, truncated and mutated valid encodings, valid JSON of the wrong shape, one field of a
wrong type or an impossible value, another event type on the subject (defect 1), identity
fields the subject contradicts (a Signal claiming another strategy), names that cannot form
a subject, and valid events under broken envelope headers. Each must give exactly one
``DeadLetter`` per consuming worker with the contracts' reason, and nothing else; no worker
may exit or restart, and the fleet must still trade afterwards.

Then ``--count`` inputs for each in-memory decoder (event codec, envelope headers, bar
subjects, intervals, replay frames) and ``--files`` for the file decoders (fleet config,
CSV bar files): each must accept or refuse with its own error and a reason, never crash.

Usage::

    .venv/bin/python bench/fuzz.py --count 10000          # the full run
    .venv/bin/python bench/fuzz.py --count 300 --in-process --json

Exit status 0 only when everything was clean (0 crashes, 100% dead-lettered).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

# ruff: noqa: E402 - bench/ comes first on sys.path when run as a script; take it off so
# the packages measured are the project's.
_HERE = str(Path(__file__).resolve().parent)
if _HERE in sys.path:
    sys.path.remove(_HERE)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from eventstore.server import EmbeddedServer
from tests.decoder_fuzz import DecoderRow, decoder_rows
from tests.fuzz_harness import Fleet, FuzzReport, InProcessFleet, ProcessFleet, run_fuzz


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _workers(count: int, seed: int, in_process: bool, work: Path) -> FuzzReport:
    server = EmbeddedServer(work / "nats").start()
    fleet: Fleet = InProcessFleet() if in_process else ProcessFleet(work / "logs")
    try:
        report = await run_fuzz(
            server.url, fleet, count, seed, "in-process" if in_process else "keel run processes"
        )
    finally:
        server.stop()
    if isinstance(fleet, ProcessFleet):
        for name in report.crashed:
            _log(f"{name} exited; its log ends:\n{fleet.log_tail(name)}")
    return report


def _subject_table(report: FuzzReport) -> list[str]:
    lines = [
        "| input subject | stream | consumed by | sent | dead letters | not dead-lettered "
        "| duplicates | empty or wrong reason |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report.rows:
        lines.append(
            f"| `{r.pattern}` | {r.stream} | {', '.join(r.workers)} | {r.sent:,} | "
            f"{r.letters:,} | {r.missing:,} | {r.duplicates:,} | "
            f"{r.empty_reasons + r.wrong_reasons:,} |"
        )
    return lines


def _decoder_table(rows: list[DecoderRow]) -> list[str]:
    lines = [
        "| decoder | inputs | accepted | refused with a reason | crashes |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| `{r.decoder}` | {r.inputs:,} | {r.accepted:,} | "
            f"{r.refused - r.empty_reasons:,} | {r.crashes:,} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="messages per subject")
    parser.add_argument("--files", type=int, help="inputs per file decoder (default --count)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-process", action="store_true", help="workers in this process")
    parser.add_argument("--no-decoders", action="store_true", help="skip the decoder fuzz")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--keep", action="store_true", help="keep the store and worker logs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="keel-fuzz-"))
    started = time.monotonic()
    try:
        _log(f"fuzzing the workers: {args.count:,} messages per input subject ...")
        report = asyncio.run(_workers(args.count, args.seed, args.in_process, work))
        decoders: list[DecoderRow] = []
        decoders_s = 0.0
        if not args.no_decoders:
            _log(f"fuzzing the decoders: {args.count:,} inputs each ...")
            t0 = time.monotonic()
            decoders = decoder_rows(args.count, args.seed, work, args.files)
            decoders_s = time.monotonic() - t0
    finally:
        if args.keep:
            _log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    crashes = len(report.crashed) + len(report.restarted) + sum(r.crashes for r in decoders)
    clean = report.clean and crashes == 0 and all(r.empty_reasons == 0 for r in decoders)
    share = report.letters / report.expected_letters if report.expected_letters else 1.0
    print(
        f"## Workers ({report.mode}), {args.count:,} messages per input subject, seed {args.seed}"
    )
    print()
    print("\n".join(_subject_table(report)))
    print()
    print(
        f"sent {report.sent:,} messages; {report.letters:,} dead letters of "
        f"{report.expected_letters:,} expected ({share:.2%}); not dead-lettered "
        f"{report.not_dead_lettered:,}; worker crashes {len(report.crashed)} "
        f"({', '.join(report.crashed) or 'none'}), restarts {len(report.restarted)}; "
        f"other outputs {report.other_outputs or 'none'}; stray letters "
        f"{report.stray_letters}; fleet trades afterwards: {report.alive_after}"
    )
    busy = report.publish_s + report.drain_s
    print(
        f"wall {report.wall_s:.1f} s (publishing {report.publish_s:.1f} s, then draining "
        f"{report.drain_s:.1f} s: {report.letters / max(busy, 1e-9):,.0f} dead letters/s)"
    )
    print()
    print("| dead letters by reason | count |")
    print("| --- | ---: |")
    for kind, n in report.reasons.items():
        print(f"| {kind} | {n:,} |")
    if decoders:
        print()
        print(f"## Decoders, seed {args.seed} ({decoders_s:.1f} s)")
        print()
        print("\n".join(_decoder_table(decoders)))
        for r in decoders:
            if r.first_crash:
                print(f"{r.decoder}: first crash: {r.first_crash}")
    print()
    print(f"total wall {time.monotonic() - started:.1f} s; {'CLEAN' if clean else 'NOT CLEAN'}")
    if args.json:
        payload = {
            "workers": msgspec.to_builtins(report),
            "decoders": msgspec.to_builtins(decoders),
            "clean": clean,
        }
        print(json.dumps(payload))
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
