"""Ingest's peak memory on hostile files (issue 29) beside a normal folder of the same item count, side by
side in one run: a 1 KiB parquet whose 64 cells are 12 MiB of zeros each (data.max_file_bytes 1 MiB), a
~200 KiB .tar.gz whose sample carries 208 MiB of members no reader uses, and a ~260 KiB .tar.gz with a
256 MiB PAX header. Each ingest runs in a process of its own (its ru_maxrss is its own); goal: 1.3x.

    .venv/bin/python benchmarks/hostile_memory.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.3


def main() -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from hostile_files import (
        MiB,
        dictionary_bomb_parquet,
        good_parquet,
        ingest_peak,
        normal_folder,
        pax_bomb_tar,
        unused_members_tar,
    )

    base = {"resolution": 16, "workers": 2}
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "pq").mkdir()
        good_parquet(tmp / "pq" / "a.parquet", 2)
        dictionary_bomb_parquet(tmp / "pq" / "bomb.parquet", rows=64, value_bytes=12 * MiB)
        (tmp / "unused").mkdir()
        unused_members_tar(tmp / "unused" / "s.tar", junk_bytes=200 * MiB)
        (tmp / "pax").mkdir()
        pax_bomb_tar(tmp / "pax" / "s.tar", header_bytes=256 * MiB)
        cases = [  # (what, data params, items)
            ("parquet, 64 cells of 12 MiB",
             {"source": "parquet", "path": str(tmp / "pq"), "max_file_bytes": MiB}, 66),
            ("tar.gz, 208 MiB unused members", {"source": "webdataset", "path": str(tmp / "unused")}, 1),
            ("tar.gz, 256 MiB PAX header", {"source": "webdataset", "path": str(tmp / "pax")}, 2),
        ]  # fmt: skip
        print(f"peak resident set of ingest, hostile vs a normal sidecar folder as big; goal {GOAL}x")
        for i, (what, data, items) in enumerate(cases):
            normal = normal_folder(tmp / f"normal{i}", items)
            sidecar = base | {"source": "sidecar", "path": str(normal)}
            _, _, at_normal = ingest_peak(sidecar, tmp / f"out-n{i}")
            size = sum(f.stat().st_size for f in Path(data["path"]).iterdir())
            report, _, at_hostile = ingest_peak(base | data, tmp / f"out-h{i}")
            ratio = at_hostile / at_normal
            worst = max(worst, ratio)
            counts = f"accepted {report['accepted']}, rejected {report['rejected']}"
            print(f"M {what:<32} ({size / 1024:6.0f} KiB): {at_hostile:5.0f} MiB vs {at_normal:5.0f} MiB "
                  f"normal: {ratio:.2f}x ({counts})")  # fmt: skip
    print(f"worst {worst:.2f}x ({'within' if worst <= GOAL else 'over'} the goal of {GOAL}x)")


if __name__ == "__main__":
    main()
