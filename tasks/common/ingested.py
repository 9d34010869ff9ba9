"""The ingested-data format: what ingest writes to `data/ingested/` and every later stage reads.

- `images-<W>x<H>-NNNNN.safetensors`: tensor `images`, uint8 [N, H, W, 3]; a shard holds one image size
  (the square resolution, or one aspect-ratio bucket when `data.buckets.enabled`)
- `manifest.parquet`: one row per accepted sample (id, sha256 of the pixels, caption, split, shard, index,
  stored size and bucket, original size, where the crop sits, source item, and the LABELS where the
  source has them: the synthetic set's colour, shape, size and position; for user items, what a later
  ingest needs to reuse them: the input key, the sha256 of the decoded pixels and of the file's bytes, and
  the files' stamps)
- `report.json`: {"total", "accepted", "rejected", "by_reason"}; `rejects.jsonl`: each rejected item + reason
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors import safe_open
from safetensors.numpy import save_file

from tasks.common.paths import MANIFEST, REJECTS

MANIFEST_COLUMNS = [
    "sample_id", "sha256", "caption", "split", "shard", "index", "width", "height", "bucket",
    "orig_width", "orig_height",
    "crop_left", "crop_top", "source_item", "color", "shape", "size", "position", "input_key",
    "pixels_sha256", "raw_sha256", "source_stamp",
]  # fmt: skip
LABELS = ("color", "shape", "size", "position")  # what a caption asks for, where the source knows it


def shard_name(bucket: str, number: int) -> str:
    """The name of image shard `number` of `bucket` ("<W>x<H>"): `images-<W>x<H>-NNNNN`."""
    return f"images-{bucket}-{number:05d}"


def shard_file(folder: Path, name: str) -> Path:
    """Where the image shard `name` is stored in an ingested folder."""
    return folder / f"{name}.safetensors"


def parse_shard_name(name: str) -> tuple[str, int]:
    """(bucket, number) of a shard named by `shard_name`."""
    bucket, sep, number = name.removeprefix("images-").rpartition("-")
    if not (name.startswith("images-") and sep and number.isdigit()):
        raise ValueError(f"{name!r} is not an image shard's name (images-<W>x<H>-NNNNN)")
    return bucket, int(number)


class ImageShards:
    """Random access to stored images by (shard, index): reads just those images from disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def image(self, shard: str, index: int) -> np.ndarray:
        return self.images([(shard, index)])[0]

    def images(self, refs: list[tuple[str, int]]) -> np.ndarray:
        """uint8 [N, H, W, 3] for (shard, index) refs of images of one size. Each shard is opened once
        (safetensors' lazy `safe_open`) and only the asked images are read: a cache shard's images come
        from all over the ingested shards."""
        if not refs:
            raise ValueError(f"{self.path}: no images asked for")
        out: np.ndarray | None = None
        with ExitStack() as opened:
            stored: dict[str, Any] = {}  # shard -> its lazily read `images` tensor
            for pos, (shard, index) in enumerate(refs):
                if shard not in stored:
                    file = opened.enter_context(safe_open(shard_file(self.path, shard), "numpy"))
                    stored[shard] = file.get_slice("images")
                    dtype = stored[shard].get_dtype()
                    if dtype != "U8":
                        raise ValueError(f"{self.path / shard}: images are {dtype}, not uint8")
                shape = tuple(stored[shard].get_shape())  # [N, H, W, 3]
                if out is None:
                    out = np.empty((len(refs), *shape[1:]), dtype=np.uint8)
                elif shape[1:] != out.shape[1:]:
                    raise ValueError(f"{self.path / shard}: images of {shape[1:]}, not {out.shape[1:]}")
                if not 0 <= int(index) < shape[0]:
                    raise ValueError(f"{self.path / shard}: no image {index} (it holds {shape[0]})")
                out[pos] = stored[shard][int(index)]
        return out


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
        save_file({"images": self.images[: self.count]}, str(shard_file(out, self.name)))


def read_rejects(path: Path, limit: int | None = None) -> list[dict]:
    """The rejected items of an ingest ({"item", "reason", "detail"}), the first `limit` of them."""
    rows = []
    with open(path / REJECTS) as f:
        for line in f:
            if limit is not None and len(rows) == limit:
                break
            rows.append(json.loads(line))
    return rows


class StoredImages:
    """The images of some manifest rows, read from their shards only when indexed, so a split of any size
    costs memory only for what a batch takes. Indexes like an array of uint8 images [N, H, W, 3]: an int
    gives one image, a slice or an array of positions gives [n, H, W, 3]."""

    def __init__(self, path: Path, rows: pd.DataFrame, shards: ImageShards | None = None) -> None:
        self.refs = list(zip(rows["shard"], rows["index"].astype(int), strict=True))
        self.shards = shards or ImageShards(path)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, which: int | slice | np.ndarray) -> np.ndarray:
        picked = np.arange(len(self.refs))[which]
        if picked.ndim == 0:
            return self.shards.image(*self.refs[int(picked)])
        return self.shards.images([self.refs[i] for i in picked])


def image_groups(path: Path, split: str | None = None) -> list[tuple[pd.DataFrame, StoredImages]]:
    """(manifest rows, their images, read on demand) for each image size, optionally of one split.

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
        (rows, StoredImages(path, rows, shards))
        for _, rows in manifest.groupby(["height", "width"], sort=True)
    ]


def ingested_images(path: Path, split: str | None = None) -> tuple[pd.DataFrame, StoredImages]:
    """The manifest and its images (read on demand), optionally one split, when all share one size."""
    groups = image_groups(path, split)
    if len(groups) > 1:
        sizes = ", ".join(rows["bucket"].iloc[0] for rows, _ in groups)
        raise ValueError(f"{path / MANIFEST}: images come in several sizes ({sizes}); use image_groups")
    manifest, images = groups[0]
    return manifest.reset_index(drop=True), images


def read_ingested(path: Path, split: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """`ingested_images` with every image read into memory (for small sets: tests, notebooks)."""
    manifest, images = ingested_images(path, split)
    return manifest, images[:]
