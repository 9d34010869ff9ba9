"""The ingested-data format: what ingest writes to `data/ingested/` and every later stage reads.

- `images-<W>x<H>-NNNNN.safetensors`: tensor `images`, uint8 [N, H, W, 3]; a shard holds one image size
  (the square resolution, or one aspect-ratio bucket when `data.buckets.enabled`)
- `manifest.parquet`: one row per accepted sample (id, sha256 of the pixels, caption, split, shard, index,
  stored size and bucket, original size, where the crop sits, source item, and `color`/`shape` labels
  where the source has them)
- `report.json`: {"total", "accepted", "rejected", "by_reason"}; `rejects.jsonl`: each rejected item + reason
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import save_file

MANIFEST = "manifest.parquet"
REPORT = "report.json"
REJECTS = "rejects.jsonl"

MANIFEST_COLUMNS = [
    "sample_id", "sha256", "caption", "split", "shard", "index", "width", "height", "bucket",
    "orig_width", "orig_height",
    "crop_left", "crop_top", "source_item", "color", "shape", "input_key", "pixels_sha256",
]  # fmt: skip


class ImageShards:
    """Random access to stored images by (shard, index): reads just those images from disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._layout: dict[str, tuple[int, tuple[int, ...]]] = {}  # shard -> (byte offset, shape) of `images`

    def image(self, shard: str, index: int) -> np.ndarray:
        return self.images([(shard, index)])[0]

    def images(self, refs: list[tuple[str, int]]) -> np.ndarray:
        """uint8 [N, H, W, 3] for (shard, index) refs of images of one size. Each image is read straight into
        the result: a cache shard's images come from all over the ingested shards."""
        if not refs:
            raise ValueError(f"{self.path}: no images asked for")
        out: np.ndarray | None = None
        files: dict[str, Any] = {}
        try:
            for pos, (shard, index) in enumerate(refs):
                offset, shape = self._images_layout(shard)
                if out is None:
                    out = np.empty((len(refs), *shape[1:]), dtype=np.uint8)
                elif shape[1:] != out.shape[1:]:
                    raise ValueError(f"{self.path / shard}: images of {shape[1:]}, not {out.shape[1:]}")
                if shard not in files:
                    files[shard] = open(self.path / f"{shard}.safetensors", "rb", buffering=0)  # noqa: SIM115
                if not 0 <= int(index) < shape[0]:
                    raise ValueError(f"{self.path / shard}: no image {index} (it holds {shape[0]})")
                f, size = files[shard], out[pos].nbytes
                f.seek(offset + int(index) * size)
                if f.readinto(out[pos]) != size:
                    raise ValueError(f"{self.path / shard}: image {index} is cut short")
        finally:
            for f in files.values():
                f.close()
        return out

    def _images_layout(self, shard: str) -> tuple[int, tuple[int, ...]]:
        """Where tensor `images` (uint8) starts in the shard file, and its shape (the safetensors layout:
        8-byte little-endian header size, JSON header with each tensor's dtype, shape and data offsets,
        then the data)."""
        if shard not in self._layout:
            with (self.path / f"{shard}.safetensors").open("rb") as f:
                (header_size,) = struct.unpack("<Q", f.read(8))
                info = json.loads(f.read(header_size))["images"]
            if info["dtype"] != "U8":
                raise ValueError(f"{self.path / shard}: images are {info['dtype']}, not uint8")
            self._layout[shard] = (8 + header_size + info["data_offsets"][0], tuple(info["shape"]))
        return self._layout[shard]


class ShardBuffer:
    """The images of one shard being filled: preallocated, so closing it costs one write."""

    def __init__(self, name: str, number: int, size: int) -> None:
        self.name, self.number, self.size = name, number, size
        self.images: np.ndarray | None = None
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count == self.size

    def add(self, image: np.ndarray) -> int:
        """Place `image`; return its index in the shard."""
        if self.images is None:
            self.images = np.empty((self.size, *image.shape), np.uint8)
        self.images[self.count] = image
        self.count += 1
        return self.count - 1

    def save(self, out: Path) -> None:
        save_file({"images": self.images[: self.count]}, str(out / f"{self.name}.safetensors"))


def read_rejects(path: Path, limit: int | None = None) -> list[dict]:
    """The rejected items of an ingest ({"item", "reason", "detail"}), the first `limit` of them."""
    rows = []
    with open(path / REJECTS) as f:
        for line in f:
            if limit is not None and len(rows) == limit:
                break
            rows.append(json.loads(line))
    return rows


def read_buckets(path: Path, split: str | None = None) -> list[tuple[pd.DataFrame, np.ndarray]]:
    """(manifest rows, uint8 images [N, H, W, 3]) for each image size, optionally of one split.

    One group when aspect-ratio buckets are off. Each group's rows keep their manifest index, so results
    computed per group can be put back in manifest order.
    """
    manifest = pd.read_parquet(path / MANIFEST)
    if split is not None:
        manifest = manifest[manifest["split"] == split]
    if manifest.empty:
        raise ValueError(f"{path / MANIFEST}: no samples" + (f" in split {split!r}" if split else ""))
    shards = ImageShards(path)
    return [
        (rows, shards.images(list(zip(rows["shard"], rows["index"], strict=True))))
        for _, rows in manifest.groupby(["height", "width"], sort=True)
    ]


def read_ingested(path: Path, split: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """The manifest and its images (uint8 [N, H, W, 3]), optionally one split, when all share one size."""
    groups = read_buckets(path, split)
    if len(groups) > 1:
        sizes = ", ".join(rows["bucket"].iloc[0] for rows, _ in groups)
        raise ValueError(f"{path / MANIFEST}: images come in several sizes ({sizes}); use read_buckets")
    manifest, images = groups[0]
    return manifest.reset_index(drop=True), images
