"""Builders of small user datasets for the ingest tests: one set of images, written in every convention."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png_bytes(size: tuple[int, int], seed: int = 0) -> bytes:
    """A random-noise RGB PNG of `size` (width, height)."""
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def make_dataset(root: Path, n: int = 6) -> list[dict]:
    """n distinct images with captions, written to `root`; returns the metadata rows."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = Image.new("RGB", (24 + i, 20), (40 * i, 255 - 30 * i, 90))
        img.save(root / f"img{i}.png")
        rows.append({"file_name": f"img{i}.png", "text": f"a picture number {i}"})
    return rows


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_every_convention(base: Path, n: int = 6) -> dict[str, tuple[str, dict]]:
    """The same n image-caption pairs in each convention under `base`.

    Returns {folder: (data.source, extra data params)}, one entry per convention.
    """
    rows = make_dataset(base / "jsonl", n)
    (base / "jsonl" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    make_dataset(base / "csv", n)
    pd.DataFrame(rows).to_csv(base / "csv" / "metadata.csv", index=False)
    make_dataset(base / "side", n)
    for r in rows:
        (base / "side" / r["file_name"]).with_suffix(".txt").write_text(r["text"] + "\n")

    png = {r["file_name"]: (base / "jsonl" / r["file_name"]).read_bytes() for r in rows}
    (base / "pq").mkdir()
    images = [{"bytes": png[r["file_name"]], "path": r["file_name"]} for r in rows]  # HF datasets' Image
    pq.write_table(
        pa.table({"image": images, "caption": [r["text"] for r in rows]}), base / "pq" / "a.parquet"
    )
    (base / "wds").mkdir()
    members = {}
    for r in rows:
        key = r["file_name"].removesuffix(".png")
        members[f"{key}.png"] = png[r["file_name"]]
        members[f"{key}.json"] = json.dumps({"caption": r["text"]}).encode()
    write_tar(base / "wds" / "shard-000.tar", members)
    return {
        "jsonl": ("imagefolder", {}),
        "csv": ("imagefolder", {}),
        "side": ("sidecar", {}),
        "pq": ("parquet", {"caption_column": "caption"}),
        "wds": ("webdataset", {}),
    }


TONES = {"red": (200, 60, 50), "green": (60, 170, 80), "blue": (50, 90, 200), "golden": (220, 180, 60)}


def write_photo_folder(root: Path, n: int, seed: int = 0) -> None:
    """An unlabelled image folder (`metadata.jsonl`) of photo-like pictures: a lit gradient, a few soft blobs
    of one tone, sensor noise, in several sizes and aspect ratios; each caption says what is drawn, in
    free words, and carries no label columns."""
    from PIL import ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        w, h = [(40, 30), (30, 40), (36, 36), (48, 32)][i % 4]
        tone, blobs, light = (
            list(TONES)[rng.integers(len(TONES))],
            int(rng.integers(1, 4)),
            bool(rng.integers(2)),
        )
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = (150 if light else 40) + 40 * (x / w)[..., None] * rng.uniform(0.5, 1, 3)
        img = Image.fromarray(np.clip(base + rng.normal(0, 5, (h, w, 3)), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(blobs):
            cx, cy, r = rng.integers(6, w - 6), rng.integers(6, h - 6), int(rng.integers(4, 9))
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=TONES[tone])
        img = img.filter(ImageFilter.GaussianBlur(0.6))
        img.save(root / f"photo{i:03d}.jpg", quality=92)
        count = ["one", "two", "three"][blobs - 1]
        sky = "a bright" if light else "a dark"
        rows.append(
            {"file_name": f"photo{i:03d}.jpg", "text": f"{count} {tone} spots against {sky} backdrop"}
        )
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
