"""Where user image-caption pairs come from: each reader yields (image, caption) items or rejects.

- `imagefolder`: the Hugging Face convention, `metadata.jsonl` or `metadata.csv` with `file_name`, `text`
- `sidecar`: the kohya convention, `img.png` + `img.txt` side by side (any depth below the root)
- `parquet`: `*.parquet` files with an image column (raw bytes, or the `{bytes, path}` struct Hugging Face
  datasets write) and a text column
- `webdataset`: `*.tar` shards of `key.jpg|png|webp` + `key.txt` or `key.json` ({"text"| "caption": ...})
File names that escape the root (`../`, absolute paths, symlinks pointing out) are rejected.
"""

from __future__ import annotations

import csv
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class SourceItem:
    name: str  # the sample id: file name relative to the root, or the image's name inside a shard
    image: Path | bytes  # a resolved file inside the root, or encoded image bytes
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
    return SourceItem(found.name, found.image, text, found.where)


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


def parquet_items(root: Path, image_column: str, caption_column: str) -> Iterator[SourceItem | Reject]:
    import pyarrow.parquet as pq

    files = sorted(root.rglob("*.parquet")) if root.is_dir() else [root]
    for file in files:
        table = pq.read_table(file)
        missing = [c for c in (image_column, caption_column) if c not in table.column_names]
        if missing:
            raise ValueError(f"{file}: no column(s) {missing} (data.image_column / data.caption_column); "
                             f"columns are {table.column_names}")  # fmt: skip
        rel = file.relative_to(root).as_posix() if root.is_dir() else file.name
        images, captions = table.column(image_column).to_pylist(), table.column(caption_column).to_pylist()
        for row, (cell, caption) in enumerate(zip(images, captions, strict=True)):
            where = f"{rel}:row {row}"
            if isinstance(cell, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
                data, name = cell.get("bytes"), cell.get("path") or where
            else:
                data, name = cell, where
            if not isinstance(data, bytes):
                yield Reject(where, "missing_image", f"no image bytes in column {image_column!r}")
                continue
            yield SourceItem(str(name), data, caption if isinstance(caption, str) else None, where)


def _tar_caption(members: dict[str, bytes]) -> str | None:
    if "txt" in members:
        return members["txt"].decode("utf-8", errors="replace").strip()
    if "json" in members:
        meta = json.loads(members["json"])
        return meta.get("text", meta.get("caption")) if isinstance(meta, dict) else None
    return None


def webdataset_items(root: Path) -> Iterator[SourceItem | Reject]:
    """WebDataset convention: members sharing a key (the name up to the basename's first dot) are a sample."""
    image_exts = ("jpg", "jpeg", "png", "webp")
    for shard in sorted(root.rglob("*.tar")) if root.is_dir() else [root]:
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                key, _, ext = base.partition(".")
                sample = samples.setdefault(f"{folder}/{key}" if folder else key, {})
                sample[ext.lower()] = tar.extractfile(member).read()
        for key, members in samples.items():
            where = f"{shard.name}:{key}"
            ext = next((e for e in image_exts if e in members), None)
            if ext is None:
                yield Reject(where, "missing_image", f"no image among {sorted(members)}")
                continue
            try:
                caption = _tar_caption(members)
            except json.JSONDecodeError as err:
                yield Reject(where, "malformed_metadata", f"{key}.json: {err}")
                continue
            yield SourceItem(f"{key}.{ext}", members[ext], caption, where)


def items(
    source: str, path: str | None, image_column: str = "image", caption_column: str = "text"
) -> Iterator[SourceItem | Reject]:
    if not path:
        raise ValueError(f"data.path: required when data.source is {source!r}")
    root = Path(path).resolve()
    if source == "parquet":
        return parquet_items(root, image_column, caption_column)
    if source == "webdataset":
        return webdataset_items(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.path: {root} is not a directory")
    readers = {"imagefolder": imagefolder_items, "sidecar": sidecar_items}
    return readers[source](root)
