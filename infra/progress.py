"""Progress bars for long work: live on a terminal, a line every 30 s in logs (CI, Prefect workers)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


def progress(
    iterable: Iterable, desc: str, unit: str = "it", total: int | None = None, disable: bool = False
) -> tqdm:
    """`disable`: iterate without a bar (processes other than the main one of a distributed run)."""
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable, desc=desc, unit=unit, total=total, mininterval=0.5 if interactive else 30.0, disable=disable
    )
