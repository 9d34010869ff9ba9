"""Ingest stage: turn a source (the synthetic set or user data, see sources.py) into `data/ingested/`.

Output format (the only thing later stages read, through `read_ingested`):
- `images-NNNNN.safetensors`: tensor `images`, uint8 [N, H, W, 3], preprocessed to the resolution
- `manifest.parquet`: one row per accepted sample (id, sha256 of the pixels, caption, split, shard, index,
  original size, source item, and `color`/`shape` labels where the source has them)
- `report.json`: {"total", "accepted", "rejected", "by_reason"}; `rejects.jsonl`: each rejected item + reason
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file

from tasks import sources, synthetic
from tasks.config import Config, DataConfig
from tasks.decode import DecodeError, DecodeLimits, decode_image
from tasks.shards import content_key
from tasks.sources import Reject

MANIFEST = "manifest.parquet"
REPORT = "report.json"
REJECTS = "rejects.jsonl"


@dataclass
class Candidate:
    """One accepted, preprocessed item before it is placed in a shard."""

    sample_id: str
    source_item: str
    caption: str
    image: np.ndarray  # uint8 [H, W, 3]
    orig_size: tuple[int, int]
    labels: dict[str, str] = field(default_factory=dict)
    # hash of the encoded input + decode/preprocess params, for incremental re-ingest
    input_key: str | None = None
    pixels_sha256: str | None = None  # hash of the decoded full-size pixels (exact-duplicate detection)


@dataclass(frozen=True)
class Decoded:
    """What an earlier ingest computed for one input, reused when the same input comes again."""

    image: np.ndarray
    orig_size: tuple[int, int]
    pixels_sha256: str


@dataclass
class DecodeCount:
    decoded: int = 0
    reused: int = 0


def split_for(sample_id: str, val_fraction: float) -> str:
    """Deterministic split from the id's hash: adding samples never moves existing ones."""
    bucket = int(hashlib.sha256(sample_id.encode()).hexdigest()[:8], 16) / 2**32
    return "val" if bucket < val_fraction else "train"


def center_crop_resize(img: Image.Image, resolution: int) -> np.ndarray:
    """Resize the shorter side to `resolution`, then center-crop to a square."""
    img = ImageOps.fit(img, (resolution, resolution), method=Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


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
            orig_size=(data.resolution, data.resolution),
            labels={"color": sample.color, "shape": sample.shape},
        )


def user_candidates(
    data: DataConfig, reuse: dict[str, Decoded] | None = None, count: DecodeCount | None = None
) -> Iterator[Candidate | Reject]:
    """Items of a user source, decoded (or reused from `reuse`); exact pixel duplicates keep the first."""
    reuse, count = reuse or {}, count or DecodeCount()
    limits = DecodeLimits(tuple(data.background), data.max_pixels, data.min_size)
    params = {"resolution": data.resolution, "crop": "center", **asdict(limits)}
    first_with_pixels: dict[str, str] = {}
    for item in sources.items(data.source, data.path, data.image_column, data.caption_column):
        if isinstance(item, Reject):
            yield item
            continue
        caption = (item.caption or "").strip()
        if not caption and data.empty_captions == "reject":
            yield Reject(item.name, "empty_caption", f"listed at {item.where}")
            continue
        raw = item.image if isinstance(item.image, bytes) else item.image.read_bytes()
        key = content_key(hashlib.sha256(raw).hexdigest(), params)
        if key in reuse:
            done = reuse[key]
            count.reused += 1
        else:
            try:
                pixels, orig = decode_image(raw, limits)
            except DecodeError as err:
                yield Reject(item.name, err.reason, err.detail)
                continue
            digest = hashlib.sha256(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()
            done = Decoded(center_crop_resize(Image.fromarray(pixels), data.resolution), orig, digest)
            count.decoded += 1
        if done.pixels_sha256 in first_with_pixels:
            yield Reject(
                item.name, "duplicate_image", f"same pixels as {first_with_pixels[done.pixels_sha256]}"
            )
            continue
        first_with_pixels[done.pixels_sha256] = item.name
        yield Candidate(
            sample_id=item.name,
            source_item=item.where,
            caption=caption,
            image=done.image,
            orig_size=done.orig_size,
            input_key=key,
            pixels_sha256=done.pixels_sha256,
        )


def previous_decodes(out: Path) -> dict[str, Decoded]:
    """input_key -> what an earlier ingest into `out` decoded, so a re-ingest decodes only new inputs."""
    try:
        manifest, images = read_ingested(out)
    except (FileNotFoundError, ValueError):
        return {}
    if "input_key" not in manifest:
        return {}
    rows = zip(manifest["input_key"], images, manifest["orig_width"], manifest["orig_height"],
               manifest["pixels_sha256"], strict=True)  # fmt: skip
    return {k: Decoded(img, (int(w), int(h)), p) for k, img, w, h, p in rows if isinstance(k, str)}


def candidates(cfg: Config, reuse: dict[str, Decoded], count: DecodeCount) -> Iterator[Candidate | Reject]:
    if cfg.data.source == "synthetic":
        return synthetic_candidates(cfg.data, cfg.seed)
    return user_candidates(cfg.data, reuse, count)


def write_ingested(items: Iterator[Candidate | Reject], out: Path, data: DataConfig) -> dict:
    """Shard accepted items, write manifest and rejects; return the report (the caller writes it)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("images-*.safetensors"):
        old.unlink()
    rows: list[dict] = []
    rejects: list[Reject] = []
    buffer: list[np.ndarray] = []
    seen_ids: set[str] = set()

    def flush() -> None:
        shard = rows[-1]["shard"]
        save_file({"images": torch.from_numpy(np.stack(buffer))}, str(out / f"{shard}.safetensors"))
        buffer.clear()

    for item in items:
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        if item.sample_id in seen_ids:
            rejects.append(Reject(item.source_item, "duplicate_id", item.sample_id))
            continue
        seen_ids.add(item.sample_id)
        index = len(rows) % data.shard_size
        rows.append(
            {
                "sample_id": item.sample_id,
                "sha256": hashlib.sha256(item.image.tobytes()).hexdigest(),
                "caption": item.caption,
                "split": split_for(item.sample_id, data.val_fraction),
                "shard": f"images-{len(rows) // data.shard_size:05d}",
                "index": index,
                "orig_width": item.orig_size[0],
                "orig_height": item.orig_size[1],
                "source_item": item.source_item,
                "color": item.labels.get("color"),
                "shape": item.labels.get("shape"),
                "input_key": item.input_key,
                "pixels_sha256": item.pixels_sha256,
            }
        )
        buffer.append(item.image)
        if len(buffer) == data.shard_size:
            flush()
    if buffer:
        flush()

    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_parquet(out / MANIFEST, index=False)
    with open(out / REJECTS, "w") as f:
        for r in rejects:
            f.write(json.dumps({"item": r.item, "reason": r.reason, "detail": r.detail}) + "\n")
    report = {
        "total": len(rows) + len(rejects),
        "accepted": len(rows),
        "rejected": len(rejects),
        "by_reason": dict(sorted(Counter(r.reason for r in rejects).items())),
        "accepted_with_empty_caption": sum(row["caption"] == "" for row in rows),
    }
    return report


MANIFEST_COLUMNS = [
    "sample_id", "sha256", "caption", "split", "shard", "index",
    "orig_width", "orig_height", "source_item", "color", "shape", "input_key", "pixels_sha256",
]  # fmt: skip


def run_ingest(cfg: Config, out: Path) -> dict:
    """The whole stage: read the configured source, write `out`, return the report.

    Inputs already ingested into `out` with the same decode params are reused, not decoded again.
    """
    count = DecodeCount()
    report = write_ingested(candidates(cfg, previous_decodes(out), count), out, cfg.data)
    if cfg.data.source != "synthetic":
        report.update(decoded=count.decoded, reused=count.reused)
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def read_ingested(path: Path, split: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Load the manifest and the matching images (uint8 [N, H, W, 3]), optionally one split."""
    manifest = pd.read_parquet(path / MANIFEST)
    if split is not None:
        manifest = manifest[manifest["split"] == split].reset_index(drop=True)
    if manifest.empty:
        raise ValueError(f"{path / MANIFEST}: no samples" + (f" in split {split!r}" if split else ""))
    shards = {s: load_file(str(path / f"{s}.safetensors"))["images"] for s in manifest["shard"].unique()}
    images = np.stack(
        [shards[s][i].numpy() for s, i in zip(manifest["shard"], manifest["index"], strict=True)]
    )
    return manifest, images
