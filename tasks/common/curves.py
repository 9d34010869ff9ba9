"""Training curves as CSV files that `dvc plots` draws (declared in tasks/graph.py PLOTS): one row per
logged step, written as training goes. A resumed run keeps the rows of the steps before its first and
writes the rest again (a killed run may have left later rows, or half of one)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path


def lines_before(path: Path, from_step: int, step_of: Callable[[str], int]) -> list[str]:
    """The lines of a step log (newline-terminated) whose step is before `from_step`: what a run resumed
    at `from_step` keeps. Lines `step_of` cannot read (a header, a killed run's half line) are dropped."""
    kept = []
    if from_step and path.is_file():
        for line in path.read_text().splitlines():
            try:
                if step_of(line) < from_step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError, IndexError):
                continue
    return kept


class Curve:
    def __init__(self, path: Path, columns: list[str], from_step: int = 0) -> None:
        kept = lines_before(path, from_step, lambda line: int(line.split(",", 1)[0]))  # "step" comes first
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w", newline="")
        self.writer = csv.DictWriter(
            self.file, ["step", *columns], extrasaction="ignore", lineterminator="\n"
        )
        self.writer.writeheader()
        self.file.writelines(kept)
        self.file.flush()

    def write(self, step: int, **values: float) -> None:
        self.writer.writerow({"step": step, **values})
        self.file.flush()

    def close(self) -> None:
        self.file.close()
