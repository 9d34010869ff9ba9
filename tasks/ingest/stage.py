"""The ingest stage: turn a source (the synthetic set or user data, see sources.py) into `data/ingested/`,
in the format of tasks/common/ingested.py (the only thing later stages read).

User items are decoded in jobs (preprocess.py) on the flow's task runner under `ldmflow run`, or on
`data.workers` threads under `ldmflow stage` (dvc repro); the output is the same whatever runs them.
Inputs an earlier ingest already decoded with the same preprocessing are reused. The new output is
written beside the old one and swapped in when complete, so a failed ingest leaves the previous one intact.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tasks.common.config import Config, DataConfig
from tasks.common.ingested import (
    LABELS,
    MANIFEST,
    MANIFEST_COLUMNS,
    REJECTS,
    REPORT,
    ImageShards,
    ShardBuffer,
    read_rejects,
)
from tasks.common.parallel import available_cores, map_on_threads
from tasks.common.paths import ProjectPaths
from tasks.common.progress import progress
from tasks.ingest import sources, synthetic
from tasks.ingest.decode import DecodeLimits
from tasks.ingest.listing import write_listing
from tasks.ingest.preprocess import DecodeJob, Prepared, Preprocessing, aspect_buckets, decode_chunk
from tasks.ingest.sources import Reject, SourceItem

if TYPE_CHECKING:  # MLflow takes seconds to import
    from tasks.common.tracking import Run


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
            labels={
                "color": sample.color,
                "shape": sample.shape,
                "size": sample.size,
                "position": sample.position,
            },
        )


class PreviousIngest:
    """What an earlier ingest into the same folder made, by input key; images are read lazily."""

    def __init__(self, out: Path) -> None:
        self.rows: dict[str, dict] = {}  # input key -> its manifest row
        self.key_of: dict[str, str] = {}  # sample id -> its input key
        self.shards = ImageShards(out)
        try:
            manifest = pd.read_parquet(out / MANIFEST)
        except (FileNotFoundError, OSError):
            return
        if list(manifest.columns) != MANIFEST_COLUMNS:  # written by another version: decode everything
            return
        records = manifest.to_dict("records")
        self.rows = {r["input_key"]: r for r in records if isinstance(r["input_key"], str)}
        self.key_of = {r["sample_id"]: key for key, r in self.rows.items()}

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


# Runs decode jobs, in order, wherever it likes: here, on threads, on a Prefect task runner.
DecodeMap = Callable[[Iterator[DecodeJob]], Iterator[list[Prepared | Reject]]]
ITEMS_PER_JOB = 32


def decode_on_threads(workers: int) -> DecodeMap:
    """Decode jobs on `workers` threads of this process (1: in this thread), a few jobs ahead. Decoding and
    resizing release the GIL, so threads use every core."""
    return lambda jobs: map_on_threads(decode_chunk, jobs, workers)


def decode_jobs(
    listed: Iterator[SourceItem | Reject], spec: Preprocessing, previous: PreviousIngest
) -> Iterator[DecodeJob]:
    """The listed items in jobs of ITEMS_PER_JOB, with the input keys an earlier ingest made from them."""
    listed = iter(listed)
    while chunk := list(islice(listed, ITEMS_PER_JOB)):
        made = (previous.key_of.get(item.name) for item in chunk if isinstance(item, SourceItem))
        yield DecodeJob(spec, chunk, frozenset(key for key in made if key))


def user_candidates(
    cfg: Config, previous: PreviousIngest, count: DecodeCount, map_decode: DecodeMap
) -> Iterator[Candidate | Reject]:
    """Items of a user source, decoded by `map_decode` (or reused); exact duplicates keep the first."""
    d = cfg.data
    listed = sources.items(d.source, d.path, d.image_column, d.caption_column, d.endpoint_url)
    done = map_decode(decode_jobs(listed, preprocessing(cfg), previous))
    prepared = (item for job in done for item in job)
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
                **{label: item.labels.get(label) for label in LABELS},
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


def run_ingest(cfg: Config, out: Path, map_decode: DecodeMap | None = None) -> dict:
    """The whole stage: read the configured source, write `out`, return the report.

    Inputs already ingested into `out` with the same preprocessing are reused, not decoded again. Items are
    decoded by `map_decode` (default: on `data.workers` threads); the output is the same whatever
    runs them.
    """
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if cfg.data.source == "synthetic":
            report = write_ingested(synthetic_candidates(cfg.data, cfg.seed), staging, cfg.data)
        else:
            count = DecodeCount()
            map_decode = map_decode or decode_on_threads(cfg.data.workers or available_cores())
            candidates = user_candidates(cfg, PreviousIngest(out), count, map_decode)
            report = write_ingested(candidates, staging, cfg.data)
            report.update(decoded=count.decoded, reused=count.reused)
        (staging / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _replace_dir(staging, out)
    return report


def main(cfg: Config, paths: ProjectPaths, tracker: Run, map_decode: DecodeMap | None = None) -> dict:
    """Ingest into the project's `data/ingested/`; the report and the rejects go to the stage's run. The
    source's listing is written first: DVC records the listing of what was read."""
    write_listing(cfg.data, paths.source_listing)
    report = run_ingest(cfg, paths.ingested, map_decode)
    tracker.log_metrics(
        {"total": report["total"], "accepted": report["accepted"], "rejected": report["rejected"]}
        | {f"rejected.{reason}": n for reason, n in report["by_reason"].items()}
    )
    tracker.log_artifact(paths.ingested / REPORT)
    tracker.log_artifact(paths.ingested / REJECTS)
    rejects = read_rejects(paths.ingested)
    if rejects:
        tracker.log_table(rejects, "rejects_table.json")
    return report
