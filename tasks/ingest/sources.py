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
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from tasks.common.config import DataConfig
from tasks.ingest.parquet_pages import BadPage, batch_rows, pages
from tasks.ingest.parquet_pages import refusal as page_refusal
from tasks.ingest.source_roots import FileRef, MissingFile, OutsideRoot, Root, TooLarge, open_root, over_limit
from tasks.ingest.tar_reader import TarLimit, regular_members

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SOURCES = ("imagefolder", "sidecar", "parquet", "webdataset")


@dataclass(frozen=True)
class SourceItem:
    name: str  # the sample id: file name relative to the root, or the image's name inside a shard
    image: FileRef | bytes  # a file inside the root, or encoded image bytes
    caption: str | FileRef | None  # the text, or the sidecar file holding it; None/blank: empty caption
    where: str  # where it was listed, for messages ("metadata.csv:12")

    @property
    def stamp(self) -> str | None:
        """The stamps of the item's files (the image's, and its caption file's when it has one): unchanged
        stamps, unchanged item. None when the image is bytes inside a bigger file (parquet, tar)."""
        if not isinstance(self.image, FileRef) or not self.image.stamp:
            return None
        return self.image.stamp + (f"|{self.caption.stamp}" if isinstance(self.caption, FileRef) else "")


@dataclass(frozen=True)
class Reject:
    item: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class ReadLimits:
    """Byte limits, checked before anything is read (and again while reading)."""

    max_file_bytes: int  # an image: file, tar member or parquet cell
    max_caption_bytes: int  # a caption: sidecar file, metadata field, tar member or parquet cell
    max_metadata_bytes: int  # metadata.jsonl / metadata.csv
    max_tar_bytes: int  # a tar shard, decompressed

    @classmethod
    def of(cls, data: DataConfig) -> ReadLimits:
        return cls(data.max_file_bytes, data.max_caption_bytes, data.max_metadata_bytes, data.max_tar_bytes)


# Lone surrogates: what undecodable bytes in a file name or a CSV become, or a JSON "\udXXX" escape. No
# valid text holds them, and the manifest (parquet) cannot store them.
_SURROGATE = re.compile("[\ud800-\udfff]")
_BAD_NAME = re.compile("[\ud800-\udfff\x00]")  # and NUL, which no file name holds


def _as_text(found: SourceItem | Reject) -> SourceItem | Reject:
    """`found`, unless a name or place in it is not valid UTF-8 (or holds NUL): no manifest, JSON log or
    table can hold such a string, so the item is rejected, and a reject is told with escapes."""
    if isinstance(found, SourceItem):
        if not _BAD_NAME.search(found.name + found.where):
            return found
        detail = f"the name is not valid UTF-8 or holds NUL ({found.where})"
        found = Reject(found.where, "malformed_metadata", detail)
    if not _BAD_NAME.search(found.item + found.detail):
        return found
    item, detail = (t.encode("utf-8", "backslashreplace").decode("utf-8") for t in (found.item, found.detail))
    return Reject(item, found.reason, detail)


def _too_large(item: str, size: int, limit: int, setting: str, where: str) -> Reject | None:
    refused = over_limit(size, limit, f"data.{setting}")
    return Reject(item, "too_large", f"{refused} ({where})") if refused else None


def _caption_problem(item: str, caption: object, limits: ReadLimits, where: str) -> Reject | None:
    """Why a caption given inline (a metadata field, a parquet cell, a JSON member) is refused, if it is."""
    if caption is not None and not isinstance(caption, str):
        kind = type(caption).__name__
        return Reject(item, "malformed_metadata", f"the caption is {kind}, not text ({where})")
    if caption and _SURROGATE.search(caption):
        return Reject(item, "malformed_metadata", f"the caption is not valid UTF-8 ({where})")
    size = len(caption.encode("utf-8")) if caption else 0
    return _too_large(item, size, limits.max_caption_bytes, "max_caption_bytes", where)


def _located(root: Root, name: str, limit: int, setting: str, item: str, told: str) -> FileRef | Reject:
    """`name`'s file in the root, to be read at most `limit` bytes (`data.<setting>`); a Reject of `item`
    saying why not (`told`: where the name was found)."""
    try:
        return root.locate(name, limit, f"data.{setting}")
    except OutsideRoot:
        return Reject(item, "path_outside_root", told)
    except MissingFile:
        return Reject(item, "missing_file", told)
    except TooLarge as err:
        return Reject(item, "too_large", f"{err} ({told})")


def _listed(root: Root, name: str, caption: object, where: str, limits: ReadLimits) -> SourceItem | Reject:
    if _BAD_NAME.search(name):  # before the file system sees it: it refuses NUL
        return Reject(where, "malformed_metadata", f"the name is not valid UTF-8 or holds NUL ({where})")
    told = f"listed at {where}"
    ref = _located(root, name, limits.max_file_bytes, "max_file_bytes", name, told)
    if isinstance(ref, Reject):
        return ref
    return _caption_problem(name, caption, limits, told) or SourceItem(name, ref, caption, where)


def _metadata(root: Root, name: str, limits: ReadLimits) -> bytes:
    """A metadata file's bytes: it must lie inside the root (not a symlink pointing out) and within
    `data.max_metadata_bytes`."""
    try:
        ref = root.locate(name, limits.max_metadata_bytes, "data.max_metadata_bytes")
        return ref.read()
    except OutsideRoot:
        raise ValueError(f"{root.describe(name)} points outside data.path; it is not read") from None
    except TooLarge as err:
        raise ValueError(f"{root.describe(name)}: {err}") from None


def _jsonl_row(line: bytes) -> tuple[str, object]:
    """(file name, caption) of one metadata.jsonl line; ValueError (or RecursionError) says why not."""
    row = json.loads(line.decode("utf-8"))  # invalid UTF-8: UnicodeDecodeError, a ValueError
    if not isinstance(row, dict):
        raise ValueError(f"a line must be a JSON object, not {type(row).__name__}")
    name = row.get("file_name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"file_name must be a non-empty string, not {name!r}")
    return name, row.get("text")


def imagefolder_items(root: Root, limits: ReadLimits) -> Iterator[SourceItem | Reject]:
    if root.exists("metadata.jsonl"):
        for lineno, line in enumerate(_metadata(root, "metadata.jsonl", limits).splitlines(), start=1):
            where = f"metadata.jsonl:{lineno}"
            if not line.strip():
                continue
            try:
                name, caption = _jsonl_row(line)
            except (ValueError, RecursionError) as err:  # RecursionError: JSON nested past Python's limit
                yield Reject(where, "malformed_metadata", f"{type(err).__name__}: {str(err)[:200]}")
                continue
            yield _listed(root, name, caption, where, limits)
    elif root.exists("metadata.csv"):
        # undecodable bytes are kept as surrogates, so only the rows holding them are refused
        text = _metadata(root, "metadata.csv", limits).decode("utf-8", errors="surrogateescape")
        csv.field_size_limit(max(limits.max_metadata_bytes, 1 << 17))  # rows are checked one by one below
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if "file_name" not in (reader.fieldnames or []):
            raise ValueError(
                f"{root.describe('metadata.csv')}: needs a `file_name` column (and `text`); "
                f"found {reader.fieldnames}"
            )
        for lineno, row in enumerate(reader, start=2):  # line 1 is the header
            where = f"metadata.csv:{lineno}"
            if not row.get("file_name") or None in row:  # None key: more fields than the header
                yield Reject(where, "malformed_metadata", f"row {str(row)[:200]}")
            else:
                yield _listed(root, row["file_name"], row.get("text"), where, limits)
    else:
        raise FileNotFoundError(f"data.path: {root.describe()} has neither metadata.jsonl nor metadata.csv")


def sidecar_items(root: Root, limits: ReadLimits) -> Iterator[SourceItem | Reject]:
    names = root.files((*IMAGE_SUFFIXES, ".txt"))
    texts = {n for n in names if n.endswith(".txt")}
    for name in names:
        if name in texts:
            continue
        found = _listed(root, name, None, name, limits)
        txt = name.rpartition(".")[0] + ".txt"
        if isinstance(found, SourceItem) and txt in texts:
            limit = limits.max_caption_bytes
            caption = _located(root, txt, limit, "max_caption_bytes", name, f"caption file {txt}")
            found = caption if isinstance(caption, Reject) else SourceItem(name, found.image, caption, name)
        yield found


def parquet_items(
    root: Root, image_column: str, caption_column: str, limits: ReadLimits
) -> Iterator[SourceItem | Reject]:
    """Each row of each `.parquet` file. A row group is read only when its pages' headers show it can hold
    no cell above its byte limit's worth (parquet_pages.py), in batches whose cells are bounded; a cell
    above its limit is rejected before it is copied out of Arrow."""
    import pyarrow.parquet as pq

    for name in root.files((".parquet",)):
        try:
            with root.local_copy(name) as f:
                file = pq.ParquetFile(f)
                missing = [c for c in (image_column, caption_column) if c not in file.schema_arrow.names]
                if missing:
                    raise ValueError(
                        f"{root.describe(name)}: no column(s) {missing} (data.image_column / "
                        f"data.caption_column); columns are {file.schema_arrow.names}"
                    )
                yield from _parquet_rows(file, f, name, image_column, caption_column, limits)
        except OutsideRoot as err:
            yield Reject(name, "path_outside_root", f"{err}; not read")


def _parquet_rows(file, f, name: str, image_column: str, caption_column: str, limits: ReadLimits):
    meta, columns = file.metadata, (image_column, caption_column)
    caps = {image_column: (limits.max_file_bytes, "max_file_bytes"),
            caption_column: (limits.max_caption_bytes, "max_caption_bytes")}  # fmt: skip
    plans = [_row_group_plan(meta.row_group(i), f, caps) for i in range(meta.num_row_groups)]  # all, first
    row = 0
    for group, (refused, rows) in enumerate(plans):
        first, row = row, row + meta.row_group(group).num_rows
        if refused:
            for r in range(first, row):
                yield Reject(f"{name}:row {r}", "too_large", f"{refused} ({name}: row group {group})")
            continue
        batches = file.iter_batches(
            batch_size=rows, row_groups=[group], columns=list(columns), use_threads=False
        )
        for batch in batches:
            yield from _parquet_batch(batch, name, first, image_column, limits)
            first += batch.num_rows


def _row_group_plan(group, f, caps: dict[str, tuple[int, str]]) -> tuple[str | None, int]:
    """(why the row group is refused, or None; rows per batch) from its pages' headers."""
    largest = 0
    for j in range(group.num_columns):
        chunk = group.column(j)
        column = chunk.path_in_schema.split(".")[0]
        if column not in caps:
            continue
        limit, setting = caps[column]
        start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
        try:
            found = pages(f, start, chunk.total_compressed_size)
        except BadPage as err:
            return f"column {chunk.path_in_schema!r}: {err}", 1
        refused = page_refusal(found, limit)
        if refused:
            return f"column {chunk.path_in_schema!r}: {refused}, above data.{setting}={limit} each", 1
        largest = max([largest, *(page.uncompressed for page in found)])
    return None, batch_rows(largest)


def _sizes(column) -> list[int | None]:
    """Each cell's bytes, for a binary or string column (None for a null); 0s for any other."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = column.type
    if any(
        f(t)
        for f in (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_string, pa.types.is_large_string)
    ):
        return pc.binary_length(column).to_pylist()
    return [0] * len(column)


def _parquet_batch(batch, name: str, first: int, image_column: str, limits: ReadLimits):
    import pyarrow as pa

    images, captions = batch.column(0), batch.column(1)
    text = pa.types.is_string(captions.type) or pa.types.is_large_string(captions.type)
    if text:  # as the bytes it holds (no copy): text that is not UTF-8 is then rejected by row, not fatal
        captions = captions.cast(
            pa.large_binary() if pa.types.is_large_string(captions.type) else pa.binary()
        )
    struct = pa.types.is_struct(images.type)  # Hugging Face datasets' Image feature: {"bytes", "path"}
    data = images.field("bytes") if struct and images.type.get_field_index("bytes") >= 0 else images
    sizes, caption_sizes = _sizes(data), _sizes(captions)
    for i in range(batch.num_rows):
        where = f"{name}:row {first + i}"
        refused = _too_large(
            where, sizes[i] or 0, limits.max_file_bytes, "max_file_bytes", where
        ) or _too_large(where, caption_sizes[i] or 0, limits.max_caption_bytes, "max_caption_bytes", where)
        if refused:  # not copied out of Arrow
            yield refused
            continue
        cell, caption = images[i].as_py(), captions[i].as_py()
        if (
            text and caption is not None
        ):  # undecodable bytes become surrogates: `_caption_problem` refuses them
            caption = caption.decode("utf-8", errors="surrogateescape")
        if isinstance(cell, dict):
            cell, item = cell.get("bytes"), cell.get("path") or where
        else:
            item = where
        if not isinstance(cell, bytes):
            yield Reject(where, "missing_image", f"no image bytes in column {image_column!r}")
            continue
        yield _caption_problem(str(item), caption, limits, where) or SourceItem(
            str(item), cell, caption, where
        )


IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")  # in the order a sample's image is chosen
CAPTION_MEMBERS = ("txt", "json")


def _tar_caption(members: dict[str, bytes]) -> object:
    """The caption of a tar sample: its `.txt`, or the "text" (or "caption") of its `.json`; ValueError
    (UnicodeDecodeError when the text is not UTF-8) or RecursionError when it does not parse."""
    if "txt" in members:
        return members["txt"].decode("utf-8").strip()
    if "json" in members:
        meta = json.loads(members["json"])
        return meta.get("text", meta.get("caption")) if isinstance(meta, dict) else None
    return None


def _tar_sample(shard: str, key: str, members: dict[str, bytes], limits: ReadLimits) -> SourceItem | Reject:
    where = f"{shard}:{key}"
    ext = next((e for e in IMAGE_MEMBERS if e in members), None)
    if ext is None:
        return Reject(where, "missing_image", f"no image among {sorted(members)}")
    try:
        caption = _tar_caption(members)
    except (ValueError, RecursionError) as err:  # invalid JSON or UTF-8, or nested past Python's limit
        member = f"{key}.{'txt' if 'txt' in members else 'json'}"
        return Reject(where, "malformed_metadata", f"{member}: {type(err).__name__}: {str(err)[:200]}")
    refused = _caption_problem(where, caption, limits, "its .txt or .json")
    return refused or SourceItem(f"{key}.{ext}", members[ext], caption, where)


def webdataset_items(root: Root, limits: ReadLimits) -> Iterator[SourceItem | Reject]:
    """WebDataset convention: adjacent members sharing a key (the name up to the basename's first dot)
    are one sample. Tars are streamed, never held whole in memory (tar_reader.py: its limits hold before
    anything is decompressed); only a sample's image and caption members are read, none above its byte
    limit, and its images together within `data.max_file_bytes`, its captions within
    `data.max_caption_bytes`."""
    for shard in root.files((".tar",)):
        try:
            yield from _tar_samples(root, shard, limits)
        except OutsideRoot as err:
            yield Reject(shard, "path_outside_root", f"{err}; not read")
        except TarLimit as err:  # what came before it stays
            yield Reject(shard, "too_large", f"{err}; the rest of the shard is not read")
        except (tarfile.TarError, EOFError) as err:  # cut short or damaged: what came before it stays
            yield Reject(shard, "unreadable", f"the tar ends or breaks here: {type(err).__name__}: {err}")


def _tar_samples(root: Root, shard: str, limits: ReadLimits) -> Iterator[SourceItem | Reject]:
    with root.open(shard) as stream:
        key, members, refused, held = None, {}, None, {}
        try:
            for member, read in regular_members(stream, limits.max_tar_bytes):
                folder, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                member_key = f"{folder}/{stem}" if folder else stem
                if member_key != key and key is not None:
                    yield refused or _tar_sample(shard, key, members, limits)
                    members, refused, held = {}, None, {}
                key, ext = member_key, ext.lower()
                if refused is not None or ext not in IMAGE_MEMBERS + CAPTION_MEMBERS:
                    continue  # not read: no reader uses it
                if ext in CAPTION_MEMBERS:
                    kind, limit, setting = "captions", limits.max_caption_bytes, "max_caption_bytes"
                else:
                    kind, limit, setting = "images", limits.max_file_bytes, "max_file_bytes"
                held[kind] = held.get(kind, 0) + member.size
                item = f"{shard}:{member_key}"
                refused = _too_large(item, member.size, limit, setting, member.name) or _too_large(
                    item, held[kind], limit, setting, f"{member.name}: the sample's {kind} together"
                )
                if refused is None:
                    members[ext] = read()
        except (
            tarfile.TarError,
            EOFError,
        ):  # the sample read whole before the break stays (the caller says why)
            if refused or any(e in members for e in IMAGE_MEMBERS):
                yield refused or _tar_sample(shard, key, members, limits)
            raise
        if key is not None:
            yield refused or _tar_sample(shard, key, members, limits)


def items(data: DataConfig, root: Root | None = None) -> Iterator[SourceItem | Reject]:
    """Every item `data`'s source lists, in a stable order; `data.path` is a local path or an s3:// URI
    (`root`: that path already opened)."""
    source, path = data.source, data.path
    if not path:
        raise ValueError(f"data.path: required when data.source is {source!r}")
    if source not in SOURCES:
        raise ValueError(f"data.source: {source!r} is not one of {', '.join(SOURCES)}")
    root = root or open_root(path, data.endpoint_url)
    limits = ReadLimits.of(data)
    if source == "parquet":
        found = parquet_items(root, data.image_column, data.caption_column, limits)
    elif source == "webdataset":
        found = webdataset_items(root, limits)
    elif root.only is not None:
        raise ValueError(f"data.path: {root.describe(root.only)} is a file; {source} reads a folder")
    else:
        found = imagefolder_items(root, limits) if source == "imagefolder" else sidecar_items(root, limits)
    return map(_as_text, found)
