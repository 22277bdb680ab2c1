"""Two checkouts of Keel, side by side in one run: the in-process backtest of ``replay.py``
(``ma_cross`` on the same one-minute bars), run alternately A, B, A, B in fresh processes so
both see the same machine, with the median wall time of each and their ratio.

The machine's speed moves from day to day; a change is judged against its parent measured
in the same hour, not against last week's figure. Each tree must have this script's
``bench/replay.py``; both must give the same result hash.

    git worktree add /tmp/parent HEAD~1
    .venv/bin/python bench/ab_replay.py /tmp/parent . --bars 1000000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import runpy
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import runpy, sys, time
from pathlib import Path
bench = runpy.run_path(str(Path(sys.argv[1]) / "bench" / "replay.py"), run_name="ab")
started = time.perf_counter()
result = bench["run_backtest"](bench["keel_spec"](Path(sys.argv[2])))
print(time.perf_counter() - started, result.result_hash)
"""


def run_tree(tree: Path, data: Path) -> tuple[float, str]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tree), str(data)],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    return float(out[-2]), out[-1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="the reference checkout (e.g. the parent commit)")
    parser.add_argument("b", type=Path, help="the checkout under test")
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    trees = {"a": args.a.resolve(), "b": args.b.resolve()}
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "bars.parquet"
        bench = runpy.run_path(str(trees["b"] / "bench" / "replay.py"), run_name="ab")
        bench["write_bars"](data, args.bars)
        walls: dict[str, list[float]] = {"a": [], "b": []}
        hashes: dict[str, set[str]] = {"a": set(), "b": set()}
        for _ in range(args.rounds):
            for side, tree in trees.items():
                wall, digest = run_tree(tree, data)
                walls[side].append(wall)
                hashes[side].add(digest)
    a, b = statistics.median(walls["a"]), statistics.median(walls["b"])
    return {
        "bars": args.bars,
        "a": {"tree": str(trees["a"]), "walls_s": walls["a"], "bars_per_s": args.bars / a},
        "b": {"tree": str(trees["b"]), "walls_s": walls["b"], "bars_per_s": args.bars / b},
        "b_over_a_speed": a / b,
        "same_hash": hashes["a"] == hashes["b"] and len(hashes["a"]) == 1,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
