"""Incremental ingest: what an earlier ingest into the same folder made, which of it is unchanged, and how
its kept images are carried into the new output (intact shards linked, the rest packed anew)."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.ingested import MANIFEST_COLUMNS, ImageShards, parse_shard_name, shard_file
from tasks.common.paths import MANIFEST
from tasks.ingest.preprocess import Prepared, Preprocessing
from tasks.ingest.sources import SourceItem


@dataclass(frozen=True)
class StoredImage:
    """Where an earlier ingest stored an image, and its size."""

    shard: str
    index: int
    width: int
    height: int


class PreviousIngest:
    """What an earlier ingest into the same folder made, by sample id; its images are read only if asked."""

    # columns an earlier version may lack: its items are then read and hashed once more, not decoded
    OPTIONAL = ("raw_sha256", "source_stamp")

    def __init__(self, out: Path) -> None:
        self.rows: dict[str, dict] = {}  # sample id -> its manifest row (rows with an input key)
        self.shard_sizes: Counter[str] = Counter()  # shard -> images in it
        self.shards = ImageShards(out)
        try:
            manifest = pd.read_parquet(out / MANIFEST)
        except (FileNotFoundError, OSError):
            return
        for column in self.OPTIONAL:
            if column not in manifest:
                manifest[column] = None
        if sorted(manifest.columns) != sorted(MANIFEST_COLUMNS):  # another version: decode everything
            return
        self.shard_sizes = Counter(manifest["shard"])
        columns = list(manifest.columns)  # rows built from plain lists: to_dict("records") boxes every cell
        for values in zip(*(manifest[c].tolist() for c in columns), strict=True):
            row = dict(zip(columns, values, strict=True))
            if isinstance(row["input_key"], str):
                self.rows[row["sample_id"]] = row

    def key_of(self, sample_id: str) -> str | None:
        row = self.rows.get(sample_id)
        return row and row["input_key"]

    def unchanged(self, item: SourceItem, spec: Preprocessing) -> Prepared | None:
        """`item` as the earlier ingest made it, without reading it: when its files' stamps and the
        preprocessing are the ones that made it. The caption is the stored one when it came from a file."""
        row = self.rows.get(item.name)
        stamp = item.stamp
        if row is None or stamp is None or row["source_stamp"] != stamp or not row["raw_sha256"]:
            return None
        key = spec.input_key(row["raw_sha256"], item.name)
        if key != row["input_key"]:
            return None
        caption = row["caption"] if item.caption is not None and not isinstance(item.caption, str) else None
        caption = (item.caption or "").strip() if caption is None else caption
        if not caption and spec.empty_captions == "reject":
            return None  # prepare() says why
        return Prepared(item.name, item.where, caption, key, raw_sha256=row["raw_sha256"], stamp=stamp)

    def stored(self, sample_id: str) -> StoredImage:
        row = self.rows[sample_id]
        return StoredImage(row["shard"], int(row["index"]), int(row["width"]), int(row["height"]))

    def next_shard_number(self, bucket: str) -> int:
        """A number after every earlier shard's of `bucket`: new shards never take a linked one's name."""
        numbers = [number for b, number in map(parse_shard_name, self.shard_sizes) if b == bucket]
        return max(numbers, default=-1) + 1


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        target.hardlink_to(source)  # the old output goes once the new one is in place
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


# Earlier shards that are intact but not full (each ingest that adds images leaves one per image size)
# are linked as they are until an image size has this many; then they are packed into full ones.
MAX_PARTIAL_SHARDS = 8


def linked_shards(kept: Counter[str], previous: PreviousIngest, shard_size: int) -> set[str]:
    """The earlier shards to link into the new output as they are: those whose every image is kept, but
    not the partly filled ones of an image size that has MAX_PARTIAL_SHARDS of them (compaction)."""
    intact = {name for name, n in kept.items() if n == previous.shard_sizes[name]}
    bucket = {name: parse_shard_name(name)[0] for name in intact}
    partial = Counter(bucket[name] for name in intact if previous.shard_sizes[name] != shard_size)
    return {
        name
        for name in intact
        if previous.shard_sizes[name] == shard_size or partial[bucket[name]] < MAX_PARTIAL_SHARDS
    }


def place_stored(
    stored: list[tuple[dict, StoredImage]],
    previous: PreviousIngest,
    out: Path,
    place: Callable[[np.ndarray], tuple[str, int]],
    shard_size: int,
) -> None:
    """Give the rows of images an earlier ingest stored their shard and index in the new output `out`: an
    earlier shard whose every image is kept is linked as it is (see `linked_shards`); the other kept
    images are packed anew by `place` (which returns an image's shard and index)."""
    whole = linked_shards(Counter(s.shard for _, s in stored), previous, shard_size)
    for name in sorted(whole):
        _link_or_copy(shard_file(previous.shards.path, name), shard_file(out, name))
    moved = []
    for row, s in stored:
        if s.shard in whole:
            row.update(shard=s.shard, index=s.index)
        else:
            moved.append((row, s))
    moved.sort(key=lambda pair: (pair[1].height, pair[1].width))  # ImageShards.images reads one size
    for start in range(0, len(moved), shard_size):
        batch = moved[start : start + shard_size]
        sizes = {(s.width, s.height) for _, s in batch}
        for size in sorted(sizes):
            same = [(row, s) for row, s in batch if (s.width, s.height) == size]
            images = previous.shards.images([(s.shard, s.index) for _, s in same])
            for (row, _), image in zip(same, images, strict=True):
                row["shard"], row["index"] = place(image)
