"""Training curves as CSV files that `dvc plots` draws (declared in tasks/graph.py PLOTS): one row per
logged step, written as training goes. A resumed run keeps the rows of the steps before its first and
writes the rest again (a killed run may have left later rows, or half of one)."""

from __future__ import annotations

import csv
from pathlib import Path


class Curve:
    def __init__(self, path: Path, columns: list[str], from_step: int = 0) -> None:
        kept = []
        if from_step and path.is_file():
            with path.open(newline="") as old:
                for row in csv.DictReader(old):
                    try:
                        if int(row["step"]) < from_step:
                            kept.append(row)
                    except (KeyError, TypeError, ValueError):
                        continue
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, ["step", *columns], extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(kept)
        self.file.flush()

    def write(self, step: int, **values: float) -> None:
        self.writer.writerow({"step": step, **values})
        self.file.flush()

    def close(self) -> None:
        self.file.close()
