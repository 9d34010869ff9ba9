"""Where user image-caption pairs come from: each reader yields (file, caption) items or rejects.

- `imagefolder`: the Hugging Face convention, `metadata.jsonl` or `metadata.csv` with `file_name`, `text`
- `sidecar`: the kohya convention, `img.png` + `img.txt` side by side (any depth below the root)
File names that escape the root (`../`, absolute paths, symlinks pointing out) are rejected.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class SourceItem:
    name: str  # path relative to the root, as the user wrote it: the sample id
    path: Path  # resolved, inside the root
    caption: str | None  # None or blank: an empty caption (policy applied by ingest)
    where: str  # where it was listed, for messages ("metadata.csv:12")


@dataclass(frozen=True)
class Reject:
    item: str
    reason: str
    detail: str = ""


def _resolve(root: Path, name: str, where: str) -> SourceItem | Reject:
    candidate = root / name
    if Path(name).is_absolute() or not candidate.resolve().is_relative_to(root):
        return Reject(name, "path_outside_root", f"listed at {where}")
    if not candidate.is_file():
        return Reject(name, "missing_file", f"listed at {where}")
    return SourceItem(name, candidate.resolve(), None, where)


def _with_caption(found: SourceItem | Reject, caption: object) -> SourceItem | Reject:
    if isinstance(found, Reject):
        return found
    text = caption if isinstance(caption, str) else None
    return SourceItem(found.name, found.path, text, found.where)


def imagefolder_items(root: Path) -> Iterator[SourceItem | Reject]:
    jsonl, table = root / "metadata.jsonl", root / "metadata.csv"
    if jsonl.is_file():
        for lineno, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            where = f"metadata.jsonl:{lineno}"
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name, caption = row["file_name"], row.get("text")
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                yield Reject(where, "malformed_metadata", f"{type(err).__name__}: {err}")
                continue
            yield _with_caption(_resolve(root, str(name), where), caption)
    elif table.is_file():
        with open(table, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "file_name" not in (reader.fieldnames or []):
                raise ValueError(
                    f"{table}: needs a `file_name` column (and `text`); found {reader.fieldnames}"
                )
            for lineno, row in enumerate(reader, start=2):  # line 1 is the header
                where = f"metadata.csv:{lineno}"
                if not row.get("file_name") or None in row:  # None key: more fields than the header
                    yield Reject(where, "malformed_metadata", f"row {row}")
                    continue
                yield _with_caption(_resolve(root, row["file_name"], where), row.get("text"))
    else:
        raise FileNotFoundError(f"data.path: {root} has neither metadata.jsonl nor metadata.csv")


def sidecar_items(root: Path) -> Iterator[SourceItem | Reject]:
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        name = path.relative_to(root).as_posix()
        found = _resolve(root, name, name)
        txt = path.with_suffix(".txt")
        caption = txt.read_text(encoding="utf-8", errors="replace").strip() if txt.is_file() else None
        yield _with_caption(found, caption)


def items(source: str, path: str | None) -> Iterator[SourceItem | Reject]:
    if not path:
        raise ValueError(f"data.path: required when data.source is {source!r}")
    root = Path(path).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"data.path: {root} is not a directory")
    readers = {"imagefolder": imagefolder_items, "sidecar": sidecar_items}
    return readers[source](root)
