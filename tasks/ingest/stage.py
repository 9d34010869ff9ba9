"""The ingest stage: turn a source (the synthetic set or user data, see sources.py) into `data/ingested/`,
in the format of tasks/common/ingested.py (the only thing later stages read).

User items are decoded in jobs (preprocess.py) on the flow's task runner under `ldmflow run`, or on
`data.workers` threads under `ldmflow stage` (dvc repro); the output is the same whatever runs them.
Inputs an earlier ingest already decoded with the same preprocessing are reused (incremental.py): not
read at all when their files' stamps are unchanged, else not decoded when their bytes are. Reused images
stay in their shards: an earlier shard whose images are all kept is linked into the new output as it is,
the others' images are packed with the new ones. So a nightly run over a folder that grew by 1% reads and
writes about 1%, and now and then packs the small shards that leaves into full ones. The new output is
written beside the old one and swapped in when complete, so a failed ingest leaves the previous one
intact.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from infra.parallel import available_cores, map_on_threads
from infra.progress import progress
from tasks.common.atomic_dir import replaced_dir
from tasks.common.config import Config, DataConfig
from tasks.common.ingested import LABELS, MANIFEST_COLUMNS, ShardBuffer, read_rejects, shard_name
from tasks.common.paths import INGEST_REPORT, MANIFEST, REJECTS, ProjectPaths
from tasks.ingest import sources, synthetic
from tasks.ingest.decode import DecodeLimits
from tasks.ingest.incremental import PreviousIngest, StoredImage, place_stored
from tasks.ingest.listing import write_listing
from tasks.ingest.preprocess import DecodeJob, Prepared, Preprocessing, aspect_buckets, decode_chunk
from tasks.ingest.source_roots import Root, open_root
from tasks.ingest.sources import Reject, SourceItem

if TYPE_CHECKING:  # MLflow takes seconds to import
    from infra.tracking import Run


@dataclass
class Candidate:
    """One accepted, preprocessed item before it is placed in a shard."""

    sample_id: str
    source_item: str
    caption: str
    image: np.ndarray | None  # uint8 [H, W, 3]; None: `stored` by an earlier ingest
    sha256: str  # of the image
    orig_size: tuple[int, int]
    crop: tuple[int, int] = (0, 0)  # (left, top) in the image resized to cover the target
    labels: dict[str, str] = field(default_factory=dict)
    input_key: str | None = None  # the encoded input + preprocessing params, for incremental re-ingest
    pixels_sha256: str | None = None  # hash of the decoded pixels (see decode_rgb): exact-duplicate detection
    raw_sha256: str | None = None  # of the input's bytes
    source_stamp: str | None = None  # SourceItem.stamp
    stored: StoredImage | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as stored."""
        if self.image is None:
            return self.stored.width, self.stored.height
        return self.image.shape[1], self.image.shape[0]


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


def reused_candidate(item: Prepared, previous: PreviousIngest) -> Candidate:
    """`item` (reused: no image) as a candidate whose image stays where the earlier ingest stored it."""
    row = previous.rows[item.name]
    return Candidate(
        sample_id=item.name,
        source_item=item.where,
        caption=item.caption,
        image=None,
        sha256=row["sha256"],
        orig_size=(int(row["orig_width"]), int(row["orig_height"])),
        crop=(int(row["crop_left"]), int(row["crop_top"])),
        input_key=item.input_key,
        pixels_sha256=row["pixels_sha256"],
        raw_sha256=item.raw_sha256,
        source_stamp=item.stamp,
        stored=previous.stored(item.name),
    )


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
    """The listed items in jobs of ITEMS_PER_JOB, with the input keys an earlier ingest made from them;
    items whose files are unchanged since then go as they were made (nothing to read)."""
    listed = iter(listed)
    while chunk := list(islice(listed, ITEMS_PER_JOB)):
        items, reusable = [], set()
        for item in chunk:
            if isinstance(item, SourceItem):
                made = previous.unchanged(item, spec)
                if made is not None:
                    item = made
                elif key := previous.key_of(item.name):
                    reusable.add(key)
            items.append(item)
        yield DecodeJob(spec, items, frozenset(reusable))


def user_candidates(
    cfg: Config, previous: PreviousIngest, count: DecodeCount, map_decode: DecodeMap, root: Root | None = None
) -> Iterator[Candidate | Reject]:
    """Items of a user source (at `root` when given), decoded by `map_decode` (or reused); exact duplicates
    keep the first."""
    d = cfg.data
    listed = sources.items(d, root)
    done = map_decode(decode_jobs(listed, preprocessing(cfg), previous))
    prepared = (item for job in done for item in job)
    first_with_pixels: dict[str, str] = {}
    for item in progress(prepared, desc="ingest", unit="item"):
        if isinstance(item, Reject):
            yield item
            continue
        if item.image is None:
            candidate = reused_candidate(item, previous)
            count.reused += 1
        else:
            candidate = Candidate(
                sample_id=item.name,
                source_item=item.where,
                caption=item.caption,
                image=item.image,
                sha256=item.sha256,
                orig_size=item.orig_size,
                crop=item.crop,
                input_key=item.input_key,
                pixels_sha256=item.pixels_sha256,
                raw_sha256=item.raw_sha256,
                source_stamp=item.stamp,
            )
            count.decoded += 1
        if candidate.pixels_sha256 in first_with_pixels:
            first = first_with_pixels[candidate.pixels_sha256]
            yield Reject(item.name, "duplicate_image", f"same pixels as {first}")
            continue
        first_with_pixels[candidate.pixels_sha256] = item.name
        yield candidate


class ShardWriter:
    """Places images in shards of `out`, one run of shards per image size (bucket), so every shard stacks
    into one array. Shard numbers start after `first_number(bucket)`'s."""

    def __init__(self, out: Path, shard_size: int, first_number: Callable[[str], int]) -> None:
        self.out, self.shard_size, self.first_number = out, shard_size, first_number
        self.filling: dict[str, ShardBuffer] = {}  # bucket -> the shard being filled

    def place(self, image: np.ndarray) -> tuple[str, int]:
        """(shard, index) of `image`, now in a shard of its size."""
        height, width = image.shape[:2]
        bucket = f"{width}x{height}"
        shard = self.filling.get(bucket)
        if shard is None or shard.full:
            number = shard.number + 1 if shard else self.first_number(bucket)
            shard = self.filling[bucket] = ShardBuffer(shard_name(bucket, number), number, self.shard_size)
        index = shard.add(image)
        if shard.full:
            shard.save(self.out)
        return shard.name, index

    def close(self) -> None:
        for shard in self.filling.values():
            if not shard.full:
                shard.save(self.out)


def write_ingested(
    items: Iterator[Candidate | Reject], out: Path, data: DataConfig, previous: PreviousIngest | None = None
) -> dict:
    """Shard accepted items into `out` (an empty folder), write manifest and rejects; return the report.
    Items without an image are in `previous`'s shards (see `place_stored`)."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    rejects: list[Reject] = []
    stored: list[tuple[dict, StoredImage]] = []  # rows whose image an earlier ingest stored
    shards = ShardWriter(out, data.shard_size, previous.next_shard_number if previous else lambda _: 0)
    seen_ids: set[str] = set()

    for item in items:
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        if item.sample_id in seen_ids:
            rejects.append(Reject(item.source_item, "duplicate_id", item.sample_id))
            continue
        seen_ids.add(item.sample_id)
        width, height = item.size
        row = {
            "sample_id": item.sample_id,
            "sha256": item.sha256,
            "caption": item.caption,
            "split": split_for(item.sample_id, data.val_fraction),
            "shard": None,
            "index": None,
            "width": width,
            "height": height,
            "bucket": f"{width}x{height}",
            "orig_width": item.orig_size[0],
            "orig_height": item.orig_size[1],
            "crop_left": item.crop[0],
            "crop_top": item.crop[1],
            "source_item": item.source_item,
            **{label: item.labels.get(label) for label in LABELS},
            "input_key": item.input_key,
            "pixels_sha256": item.pixels_sha256,
            "raw_sha256": item.raw_sha256,
            "source_stamp": item.source_stamp,
        }
        rows.append(row)
        if item.image is None:
            stored.append((row, item.stored))
        else:
            row["shard"], row["index"] = shards.place(item.image)
    if stored:
        place_stored(stored, previous, out, shards.place, data.shard_size)
    shards.close()

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


def run_ingest(cfg: Config, out: Path, map_decode: DecodeMap | None = None, root: Root | None = None) -> dict:
    """The whole stage: read the configured source (at `root` when given), write `out`, return the report.

    Inputs already ingested into `out` with the same preprocessing are reused, not decoded again. Items are
    decoded by `map_decode` (default: on `data.workers` threads); the output is the same whatever
    runs them.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with replaced_dir(out) as staging:  # (an earlier ingest killed mid-swap is recovered first)
        if cfg.data.source == "synthetic":
            report = write_ingested(synthetic_candidates(cfg.data, cfg.seed), staging, cfg.data)
        else:
            count, previous = DecodeCount(), PreviousIngest(out)
            map_decode = map_decode or decode_on_threads(cfg.data.workers or available_cores())
            candidates = user_candidates(cfg, previous, count, map_decode, root)
            report = write_ingested(candidates, staging, cfg.data, previous)
            report.update(decoded=count.decoded, reused=count.reused)
        (staging / INGEST_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(cfg: Config, paths: ProjectPaths, tracker: Run, map_decode: DecodeMap | None = None) -> dict:
    """Ingest into the project's `data/ingested/`; the report and the rejects go to the stage's run. The
    source's listing is written first, from the one walk of the source that ingest reads: DVC records the
    listing of what was read."""
    d = cfg.data
    root = None if d.source == "synthetic" else open_root(d.path, d.endpoint_url)
    write_listing(d, paths.source_listing, root)
    report = run_ingest(cfg, paths.ingested, map_decode, root)
    tracker.log_metrics(
        {"total": report["total"], "accepted": report["accepted"], "rejected": report["rejected"]}
        | {f"rejected.{reason}": n for reason, n in report["by_reason"].items()}
    )
    tracker.log_artifact(paths.ingested / INGEST_REPORT)
    tracker.log_artifact(paths.ingested / REJECTS)
    rejects = read_rejects(paths.ingested)
    if rejects:
        tracker.log_table(rejects, "rejects_table.json")
    return report
