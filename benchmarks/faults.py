"""Every fault and bad input the test suite tries, and what came of it, as one table.

Runs the tests marked `faults` (`pytest -m faults`): each records the fault it caused or the input it fed
and the outcome it measured (refused, rejected with a reason, recovered, nothing lost). The table is
theirs, not this script's: a fault whose test fails shows up as a failed test below the table.

    .venv/bin/python benchmarks/faults.py            # all of them (a few minutes)
    .venv/bin/python benchmarks/faults.py -k storage # pytest's -k, to pick some
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# rows whose fault starts with "<group>: " are printed together under that heading, the rest first
GROUPS = ("local attacker",)


def grouped(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {"faults and bad inputs": []}
    for row in rows:
        group = next((g for g in GROUPS if row["fault"].startswith(f"{g}: ")), "faults and bad inputs")
        groups.setdefault(group, []).append(row)
    return groups


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "faults.json"
        env = {**os.environ, "LDMFLOW_FAULT_TABLE": str(table)}
        workers = ["-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider"]  # as `make test` runs them
        command = [sys.executable, "-m", "pytest", "-q", "-m", "faults", *workers, *argv]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        rows = json.loads(table.read_text()) if table.is_file() else []
    for group, members in grouped(rows).items():
        print(f"\n### {group} ({len(members)})\n\n| fault or bad input | outcome |\n|---|---|")
        for row in members:
            print(f"| {row['fault']} | {row['outcome']} |")
    summary = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    print(
        f"\n{len(rows)} faults tried; pytest: {done.stdout.strip().splitlines()[-1] if done.stdout else '?'}"
    )
    for line in summary:
        print(line)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
