"""Where user image-caption pairs come from: each reader yields (image, caption) items or rejects.

- `imagefolder`: the Hugging Face convention, `metadata.jsonl` or `metadata.csv` with `file_name`, `text`
- `sidecar`: the kohya convention, `img.png` + `img.txt` side by side (any depth below the root)
- `parquet`: `*.parquet` files with an image column (raw bytes, or the `{bytes, path}` struct Hugging Face
  datasets write) and a text column
- `webdataset`: `*.tar` shards of `key.jpg|png|webp` + `key.txt` or `key.json` ({"text"| "caption": ...})
Each reads from a local folder or an `s3://` prefix alike (source_roots.py). File names that escape the
root (`../`, absolute paths, symlinks pointing out) are rejected. Items only point at their bytes; the
decode workers (preprocess.py) read them.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from tasks.ingest.source_roots import FileRef, MissingFile, OutsideRoot, Root, open_root

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SOURCES = ("imagefolder", "sidecar", "parquet", "webdataset")


@dataclass(frozen=True)
class SourceItem:
    name: str  # the sample id: file name relative to the root, or the image's name inside a shard
    image: FileRef | bytes  # a file inside the root, or encoded image bytes
    caption: str | FileRef | None  # the text, or the sidecar file holding it; None/blank: empty caption
    where: str  # where it was listed, for messages ("metadata.csv:12")


@dataclass(frozen=True)
class Reject:
    item: str
    reason: str
    detail: str = ""


def _listed(root: Root, name: str, caption: object, where: str) -> SourceItem | Reject:
    try:
        ref = root.locate(name)
    except OutsideRoot:
        return Reject(name, "path_outside_root", f"listed at {where}")
    except MissingFile:
        return Reject(name, "missing_file", f"listed at {where}")
    return SourceItem(name, ref, caption if isinstance(caption, str) else None, where)


def imagefolder_items(root: Root) -> Iterator[SourceItem | Reject]:
    if root.exists("metadata.jsonl"):
        for lineno, line in enumerate(root.read_text("metadata.jsonl").splitlines(), start=1):
            where = f"metadata.jsonl:{lineno}"
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name, caption = row["file_name"], row.get("text")
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                yield Reject(where, "malformed_metadata", f"{type(err).__name__}: {err}")
                continue
            yield _listed(root, str(name), caption, where)
    elif root.exists("metadata.csv"):
        reader = csv.DictReader(io.StringIO(root.read_text("metadata.csv"), newline=""))
        if "file_name" not in (reader.fieldnames or []):
            raise ValueError(
                f"{root.describe('metadata.csv')}: needs a `file_name` column (and `text`); "
                f"found {reader.fieldnames}"
            )
        for lineno, row in enumerate(reader, start=2):  # line 1 is the header
            where = f"metadata.csv:{lineno}"
            if not row.get("file_name") or None in row:  # None key: more fields than the header
                yield Reject(where, "malformed_metadata", f"row {row}")
                continue
            yield _listed(root, row["file_name"], row.get("text"), where)
    else:
        raise FileNotFoundError(f"data.path: {root.describe()} has neither metadata.jsonl nor metadata.csv")


def sidecar_items(root: Root) -> Iterator[SourceItem | Reject]:
    names = root.files((*IMAGE_SUFFIXES, ".txt"))
    texts = {n for n in names if n.endswith(".txt")}
    for name in names:
        if name in texts:
            continue
        found = _listed(root, name, None, name)
        txt = name.rpartition(".")[0] + ".txt"
        if isinstance(found, SourceItem) and txt in texts:
            caption = _listed(root, txt, None, name)
            if isinstance(caption, Reject):  # the caption file is a symlink pointing out, say
                found = Reject(name, caption.reason, f"caption file {txt}")
            else:
                found = SourceItem(found.name, found.image, caption.image, found.where)
        yield found


def parquet_items(root: Root, image_column: str, caption_column: str) -> Iterator[SourceItem | Reject]:
    import pyarrow.parquet as pq

    for name in root.files((".parquet",)):
        with root.local_path(name) as path:
            file = pq.ParquetFile(path)
            missing = [c for c in (image_column, caption_column) if c not in file.schema_arrow.names]
            if missing:
                raise ValueError(f"{root.describe(name)}: no column(s) {missing} (data.image_column / "
                                 f"data.caption_column); columns are {file.schema_arrow.names}")  # fmt: skip
            row = 0
            for batch in file.iter_batches(batch_size=256, columns=[image_column, caption_column]):
                cells, captions = batch.column(0).to_pylist(), batch.column(1).to_pylist()
                for cell, caption in zip(cells, captions, strict=True):
                    where = f"{name}:row {row}"
                    row += 1
                    if isinstance(cell, dict):  # Hugging Face datasets' Image feature: {"bytes", "path"}
                        data, item = cell.get("bytes"), cell.get("path") or where
                    else:
                        data, item = cell, where
                    if not isinstance(data, bytes):
                        yield Reject(where, "missing_image", f"no image bytes in column {image_column!r}")
                        continue
                    yield SourceItem(str(item), data, caption if isinstance(caption, str) else None, where)


def _tar_caption(members: dict[str, bytes]) -> str | None:
    if "txt" in members:
        return members["txt"].decode("utf-8", errors="replace").strip()
    if "json" in members:
        meta = json.loads(members["json"])
        return meta.get("text", meta.get("caption")) if isinstance(meta, dict) else None
    return None


def _tar_sample(shard: str, key: str, members: dict[str, bytes]) -> SourceItem | Reject:
    where = f"{shard}:{key}"
    ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in members), None)
    if ext is None:
        return Reject(where, "missing_image", f"no image among {sorted(members)}")
    try:
        caption = _tar_caption(members)
    except json.JSONDecodeError as err:
        return Reject(where, "malformed_metadata", f"{key}.json: {err}")
    return SourceItem(f"{key}.{ext}", members[ext], caption, where)


def webdataset_items(root: Root) -> Iterator[SourceItem | Reject]:
    """WebDataset convention: adjacent members sharing a key (the name up to the basename's first dot)
    are one sample. Tars are streamed, never held whole in memory."""
    for shard in root.files((".tar",)):
        with root.open(shard) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            key, members = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                member_key = f"{folder}/{stem}" if folder else stem
                if member_key != key and key is not None:
                    yield _tar_sample(shard, key, members)
                    members = {}
                key = member_key
                members[ext.lower()] = tar.extractfile(member).read()
            if key is not None:
                yield _tar_sample(shard, key, members)


def items(
    source: str,
    path: str | None,
    image_column: str = "image",
    caption_column: str = "text",
    endpoint_url: str | None = None,
) -> Iterator[SourceItem | Reject]:
    """Every item the source lists, in a stable order; `path` is a local path or an s3:// URI."""
    if not path:
        raise ValueError(f"data.path: required when data.source is {source!r}")
    if source not in SOURCES:
        raise ValueError(f"data.source: {source!r} is not one of {', '.join(SOURCES)}")
    root = open_root(path, endpoint_url)
    if source == "parquet":
        return parquet_items(root, image_column, caption_column)
    if source == "webdataset":
        return webdataset_items(root)
    if root.only is not None:
        raise ValueError(f"data.path: {root.describe(root.only)} is a file; {source} reads a folder")
    return imagefolder_items(root) if source == "imagefolder" else sidecar_items(root)
