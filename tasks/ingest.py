"""Ingest stage: turn a source (the synthetic set or user data, see sources.py) into `data/ingested/`.

Output format (the only thing later stages read, through `read_ingested`):
- `images-<W>x<H>-NNNNN.safetensors`: tensor `images`, uint8 [N, H, W, 3]; a shard holds one image size
  (the square resolution, or one aspect-ratio bucket when `data.buckets.enabled`)
- `manifest.parquet`: one row per accepted sample (id, sha256 of the pixels, caption, split, shard, index,
  stored size and bucket, original size, where the crop sits, source item, and `color`/`shape` labels
  where the source has them)
- `report.json`: {"total", "accepted", "rejected", "by_reason"}; `rejects.jsonl`: each rejected item + reason

User items are decoded on `data.workers` processes (preprocess.py); the output is the same whatever
their number. The new output is written beside the old one and swapped in when complete, so a failed
ingest leaves the previous one intact.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import save_file

from tasks import sources, synthetic
from tasks.config import Config, DataConfig
from tasks.decode import DecodeLimits
from tasks.parallel import available_cores, ordered_map
from tasks.preprocess import Prepared, Preprocessing, aspect_buckets, init_worker, prepare
from tasks.progress import progress
from tasks.sources import Reject

MANIFEST = "manifest.parquet"
REPORT = "report.json"
REJECTS = "rejects.jsonl"

MANIFEST_COLUMNS = [
    "sample_id", "sha256", "caption", "split", "shard", "index", "width", "height", "bucket",
    "orig_width", "orig_height",
    "crop_left", "crop_top", "source_item", "color", "shape", "input_key", "pixels_sha256",
]  # fmt: skip


@dataclass
class Candidate:
    """One accepted, preprocessed item before it is placed in a shard."""

    sample_id: str
    source_item: str
    caption: str
    image: np.ndarray  # uint8 [H, W, 3]
    sha256: str  # of `image`
    orig_size: tuple[int, int]
    crop: tuple[int, int] = (0, 0)  # (left, top) in the image resized to cover the target
    labels: dict[str, str] = field(default_factory=dict)
    input_key: str | None = None  # the encoded input + preprocessing params, for incremental re-ingest
    pixels_sha256: str | None = None  # hash of the decoded pixels (see decode_rgb): exact-duplicate detection


@dataclass
class DecodeCount:
    decoded: int = 0
    reused: int = 0


def split_for(sample_id: str, val_fraction: float) -> str:
    """Deterministic split from the id's hash: adding samples never moves existing ones."""
    bucket = int(hashlib.sha256(sample_id.encode()).hexdigest()[:8], 16) / 2**32
    return "val" if bucket < val_fraction else "train"


def synthetic_candidates(data: DataConfig, seed: int) -> Iterator[Candidate | Reject]:
    s = data.synthetic
    for sample in synthetic.generate(
        s.count, data.resolution, s.colors, s.shapes, s.sizes, s.positions, seed=seed
    ):
        yield Candidate(
            sample_id=f"synthetic-{sample.index:06d}",
            source_item=f"synthetic:{sample.index}",
            caption=sample.caption,
            image=sample.image,
            sha256=hashlib.sha256(sample.image.tobytes()).hexdigest(),
            orig_size=(data.resolution, data.resolution),
            labels={"color": sample.color, "shape": sample.shape},
        )


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


class PreviousIngest:
    """What an earlier ingest into the same folder made, by input key; images are read lazily."""

    def __init__(self, out: Path) -> None:
        self.rows: dict[str, dict] = {}
        self.shards = ImageShards(out)
        try:
            manifest = pd.read_parquet(out / MANIFEST)
        except (FileNotFoundError, OSError):
            return
        if list(manifest.columns) != MANIFEST_COLUMNS:  # written by another version: decode everything
            return
        records = manifest.to_dict("records")
        self.rows = {r["input_key"]: r for r in records if isinstance(r["input_key"], str)}

    def keys(self) -> frozenset[str]:
        return frozenset(self.rows)

    def complete(self, item: Prepared) -> Prepared:
        """`item` (reused: no image) with the image and facts the earlier ingest stored for its input."""
        row = self.rows[item.input_key]
        image = self.shards.image(row["shard"], row["index"])
        return Prepared(
            item.name, item.where, item.caption, item.input_key, image, row["sha256"],
            (int(row["orig_width"]), int(row["orig_height"])), row["pixels_sha256"],
            (int(row["crop_left"]), int(row["crop_top"])),
        )  # fmt: skip


def preprocessing(cfg: Config) -> Preprocessing:
    d = cfg.data
    limits = DecodeLimits(tuple(d.background), d.max_pixels, d.min_size)
    b = d.buckets
    buckets = aspect_buckets(d.resolution, b.step, b.max_ratio) if b.enabled else ()
    return Preprocessing(d.resolution, d.crop, cfg.seed, limits, d.empty_captions, buckets)


def user_candidates(
    cfg: Config, previous: PreviousIngest, count: DecodeCount
) -> Iterator[Candidate | Reject]:
    """Items of a user source, decoded on worker processes (or reused); exact duplicates keep the first."""
    d = cfg.data
    listed = sources.items(d.source, d.path, d.image_column, d.caption_column, d.endpoint_url)
    workers = d.workers or available_cores()
    prepared = ordered_map(
        prepare, listed, workers, initializer=init_worker, initargs=(preprocessing(cfg), previous.keys())
    )
    first_with_pixels: dict[str, str] = {}
    for item in progress(prepared, desc="ingest", unit="item"):
        if isinstance(item, Reject):
            yield item
            continue
        if item.image is None:
            item = previous.complete(item)
            count.reused += 1
        else:
            count.decoded += 1
        if item.pixels_sha256 in first_with_pixels:
            first = first_with_pixels[item.pixels_sha256]
            yield Reject(item.name, "duplicate_image", f"same pixels as {first}")
            continue
        first_with_pixels[item.pixels_sha256] = item.name
        yield Candidate(
            sample_id=item.name,
            source_item=item.where,
            caption=item.caption,
            image=item.image,
            sha256=item.sha256,
            orig_size=item.orig_size,
            crop=item.crop,
            input_key=item.input_key,
            pixels_sha256=item.pixels_sha256,
        )


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


def write_ingested(items: Iterator[Candidate | Reject], out: Path, data: DataConfig) -> dict:
    """Shard accepted items into `out` (a new folder), write manifest and rejects; return the report.

    Each image size (bucket) fills shards of its own, so every shard stacks into one array.
    """
    out.mkdir(parents=True)
    rows: list[dict] = []
    rejects: list[Reject] = []
    filling: dict[str, ShardBuffer] = {}  # bucket -> the shard being filled
    seen_ids: set[str] = set()

    for item in items:
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        if item.sample_id in seen_ids:
            rejects.append(Reject(item.source_item, "duplicate_id", item.sample_id))
            continue
        seen_ids.add(item.sample_id)
        height, width = item.image.shape[:2]
        bucket = f"{width}x{height}"
        shard = filling.get(bucket)
        if shard is None or shard.full:
            number = shard.number + 1 if shard else 0
            shard = filling[bucket] = ShardBuffer(f"images-{bucket}-{number:05d}", number, data.shard_size)
        rows.append(
            {
                "sample_id": item.sample_id,
                "sha256": item.sha256,
                "caption": item.caption,
                "split": split_for(item.sample_id, data.val_fraction),
                "shard": shard.name,
                "index": shard.add(item.image),
                "width": width,
                "height": height,
                "bucket": bucket,
                "orig_width": item.orig_size[0],
                "orig_height": item.orig_size[1],
                "crop_left": item.crop[0],
                "crop_top": item.crop[1],
                "source_item": item.source_item,
                "color": item.labels.get("color"),
                "shape": item.labels.get("shape"),
                "input_key": item.input_key,
                "pixels_sha256": item.pixels_sha256,
            }
        )
        if shard.full:
            shard.save(out)
    for shard in filling.values():
        if not shard.full:
            shard.save(out)

    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_parquet(out / MANIFEST, index=False)
    with open(out / REJECTS, "w") as f:
        for r in rejects:
            f.write(json.dumps({"item": r.item, "reason": r.reason, "detail": r.detail}) + "\n")
    return {
        "total": len(rows) + len(rejects),
        "accepted": len(rows),
        "rejected": len(rejects),
        "by_reason": dict(sorted(Counter(r.reason for r in rejects).items())),
        "accepted_with_empty_caption": sum(row["caption"] == "" for row in rows),
    }


def _replace_dir(new: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def run_ingest(cfg: Config, out: Path) -> dict:
    """The whole stage: read the configured source, write `out`, return the report.

    Inputs already ingested into `out` with the same preprocessing are reused, not decoded again.
    """
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if cfg.data.source == "synthetic":
            report = write_ingested(synthetic_candidates(cfg.data, cfg.seed), staging, cfg.data)
        else:
            count = DecodeCount()
            report = write_ingested(user_candidates(cfg, PreviousIngest(out), count), staging, cfg.data)
            report.update(decoded=count.decoded, reused=count.reused)
        (staging / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _replace_dir(staging, out)
    return report


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
