"""Stage outputs that appear whole or not at all.

A stage writes its output folder into a staging folder beside it (`.NAME.staging`), and only a complete
one is swapped in: the old output is renamed aside (`.NAME.old`), the new one renamed into place, the old
one removed. A stage that fails or is killed while writing leaves the previous output as it was. A kill
between the two renames leaves no output but the old one aside; the next write of that output, or any
reader that calls `recover`, puts it back first.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _aside(out: Path, what: str) -> Path:
    return out.with_name(f".{out.name}.{what}")


def recover(out: Path) -> None:
    """Undo what a kill between the swap's renames left: the old output aside, none in place."""
    old = _aside(out, "old")
    if old.exists() and not out.exists():
        old.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def swap_in(new: Path, out: Path) -> None:
    """Put the complete folder `new` in place of `out` (which may not exist)."""
    old = _aside(out, "old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    new.rename(out)  # a kill just before this: `recover` puts `old` back
    shutil.rmtree(old, ignore_errors=True)


def staging_dir(out: Path, keep: bool = False) -> Path:
    """The folder to write `out` into before `swap_in` (a swap killed midway is recovered first): emptied,
    unless `keep` (a resumed stage carries on with what its killed attempt wrote there)."""
    recover(out)
    staging = _aside(out, "staging")
    if not keep:
        shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    return staging


@contextmanager
def replaced_dir(out: Path) -> Iterator[Path]:
    """An empty staging folder for the block to write `out` into; swapped in when the block completes,
    removed when it raises."""
    staging = staging_dir(out)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, out)
