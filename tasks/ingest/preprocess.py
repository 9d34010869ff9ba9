"""The per-item ingest work that decode workers run: read the bytes, decode, crop, resize.

Torch-free on purpose, so worker processes start fast. Everything an output depends on is in
`Preprocessing`; `input_key` hashes an input's bytes with it, so a re-ingest reuses what an earlier
ingest made from the same input and decodes only what is new.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Literal

import numpy as np
from PIL import Image

from tasks.common.keys import Framed, content_key, sha256_hex
from tasks.ingest.decode import DecodeError, DecodeLimits, decode_rgb
from tasks.ingest.source_roots import MissingFile, OutsideRoot, TooLarge, read_ref
from tasks.ingest.sources import Reject, SourceItem

# Part of every input key: bump it when a code change alters what the same input and params produce.
PREPROCESS_VERSION = 1


@dataclass(frozen=True)
class Preprocessing:
    resolution: int
    crop: Literal["center", "random"]
    seed: int  # random crops: each sample's offset follows from (seed, sample id) alone
    limits: DecodeLimits
    empty_captions: Literal["reject", "keep"]
    buckets: tuple[tuple[int, int], ...] = ()  # (width, height) targets; empty: the square resolution

    def target(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) an image of `size` is made: its aspect-ratio bucket, or the square."""
        if not self.buckets:
            return (self.resolution, self.resolution)
        return nearest_bucket(size, self.buckets)

    @property
    def longest_target_side(self) -> int:
        return max((max(b) for b in self.buckets), default=self.resolution)

    @cached_property
    def _key_settings(self) -> Framed:
        settings = {"version": PREPROCESS_VERSION, "resolution": self.resolution, "crop": self.crop}
        return Framed(settings | asdict(self.limits) | {"buckets": [list(b) for b in self.buckets]})

    def input_key(self, raw_sha256: str, sample_id: str) -> str:
        if self.crop == "center":
            return content_key(raw_sha256, self._key_settings)
        # a random crop's offset depends on the seed and the sample id too
        return content_key(raw_sha256, self._key_settings, str(self.seed), sample_id)


@dataclass(frozen=True)
class Prepared:
    """One item made ready for its shard, or (`image` None) one an earlier ingest already made."""

    name: str
    where: str
    caption: str
    input_key: str
    image: np.ndarray | None = None  # uint8 [H, W, 3]
    sha256: str | None = None  # of `image`
    orig_size: tuple[int, int] | None = None  # (width, height) before preprocessing
    pixels_sha256: str | None = None  # of the decoded pixels (see decode_rgb): exact-duplicate detection
    crop: tuple[int, int] | None = None  # (left, top) of the crop in the image resized to cover the target
    raw_sha256: str | None = None  # of the encoded input's bytes
    stamp: str | None = None  # SourceItem.stamp when it was read


def aspect_buckets(resolution: int, step: int, max_ratio: float) -> tuple[tuple[int, int], ...]:
    """Equal-area aspect-ratio buckets, as SD trainers make them: every (width, height) with sides that are
    multiples of `step`, the largest height for each width with width x height <= resolution^2, and the
    long side at most `max_ratio` times the short one. Sorted from tallest to widest."""
    area = resolution * resolution
    found = set()
    for width in range(step, int(resolution * max_ratio) + step, step):
        height = area // width // step * step
        if height >= step and max(width / height, height / width) <= max_ratio + 1e-9:
            found.add((width, height))
    if not found:
        raise ValueError(
            f"data.buckets: no bucket fits resolution {resolution} with step {step} and max_ratio {max_ratio}"
        )
    return tuple(sorted(found, key=lambda b: b[0] / b[1]))


def nearest_bucket(size: tuple[int, int], buckets: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (in log ratio: 2:1 is as far as 1:2)."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - ratio))


def crop_box(
    size: tuple[int, int], target: tuple[int, int], mode: str, rng: random.Random
) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
    """Resize-to-cover then crop, as (box in source pixels, (left, top) in resized pixels).

    The image is scaled so it covers `target` (w, h); the crop takes `target` out of it, centred or at a
    random offset. The box lets PIL resample only the cropped region in one step.
    """
    (w, h), (tw, th) = size, target
    scale = max(tw / w, th / h)
    # whole pixels of room around the target in the resized image (the epsilon absorbs float error)
    slack_x, slack_y = int(w * scale - tw + 1e-6), int(h * scale - th + 1e-6)
    if mode == "center":
        left, top = slack_x // 2, slack_y // 2
    else:
        left, top = rng.randint(0, slack_x), rng.randint(0, slack_y)
    box = (left / scale, top / scale, min(w, (left + tw) / scale), min(h, (top + th) / scale))
    return box, (left, top)


def crop_rng(seed: int, sample_id: str) -> random.Random:
    return random.Random(int(hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()[:16], 16))


def resize_crop(img: Image.Image, spec: Preprocessing, sample_id: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The image at its target size (spec.target), and where the crop sits."""
    target = spec.target(img.size)
    box, offset = crop_box(img.size, target, spec.crop, crop_rng(spec.seed, sample_id))
    out = img.resize(target, Image.Resampling.BICUBIC, box=box)
    return np.asarray(out, dtype=np.uint8), offset


@dataclass(frozen=True)
class DecodeJob:
    """A chunk of items to prepare: a unit of work for any task runner (picklable: a file is a reference
    its worker reads; parquet cells and tar members travel as bytes)."""

    spec: Preprocessing
    # items to prepare; a Prepared is one an earlier ingest made from files whose stamps have not changed
    items: list[SourceItem | Reject | Prepared]
    reusable: frozenset[str]  # input keys an earlier ingest made from these items' names: not decoded again

    @property
    def needs_reading(self) -> bool:
        """False when every item is already made or rejected: the job is worth no worker's time."""
        return any(isinstance(item, SourceItem) for item in self.items)


def decode_chunk(job: DecodeJob) -> list[Prepared | Reject]:
    """`prepare` every item of the job, in order."""
    return [prepare(item, job.spec, job.reusable) for item in job.items]


class CaptionNotText(ValueError):
    """A caption file that is not UTF-8."""


def _caption(item: SourceItem) -> str:
    text = item.caption
    if text is not None and not isinstance(text, str):  # a sidecar file
        try:
            text = read_ref(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise CaptionNotText(f"the caption file {text.path} is not UTF-8 (byte {err.start})") from None
    return (text or "").strip()


def prepare(
    item: SourceItem | Reject | Prepared, spec: Preprocessing, reusable: frozenset[str]
) -> Prepared | Reject:
    """Everything ingest does to one item that does not need the others (runs on a worker)."""
    if isinstance(item, Reject | Prepared):
        return item
    try:
        caption = _caption(item)
        if not caption and spec.empty_captions == "reject":
            return Reject(item.name, "empty_caption", f"listed at {item.where}")
        raw = read_ref(item.image)
    except TooLarge as err:  # grew past its limit after it was listed
        return Reject(item.name, "too_large", str(err))
    except OutsideRoot as err:  # swapped for a symlink, or moved out by one, after it was listed
        return Reject(item.name, "path_outside_root", str(err))
    except CaptionNotText as err:
        return Reject(item.name, "malformed_metadata", str(err))
    except (FileNotFoundError, MissingFile) as err:
        return Reject(item.name, "missing_file", str(err))
    except OSError as err:
        return Reject(item.name, "unreadable", f"{type(err).__name__}: {err}")
    raw_sha256 = sha256_hex(raw)
    key = spec.input_key(raw_sha256, item.name)
    if key in reusable:
        return Prepared(item.name, item.where, caption, key, raw_sha256=raw_sha256, stamp=item.stamp)
    try:
        # decoding at >= 2x the target keeps the resize's anti-aliasing as good as from full size
        img, orig_size = decode_rgb(raw, spec.limits, shorter_side_at_least=2 * spec.longest_target_side)
    except DecodeError as err:
        return Reject(item.name, err.reason, err.detail)
    w, h = img.size
    pixels_sha256 = hashlib.sha256(f"({h}, {w}, 3)".encode() + img.tobytes()).hexdigest()
    image, crop = resize_crop(img, spec, item.name)
    return Prepared(
        item.name,
        item.where,
        caption,
        key,
        image,
        sha256_hex(image.tobytes()),
        orig_size,
        pixels_sha256,
        crop,
        raw_sha256,
        item.stamp,
    )
