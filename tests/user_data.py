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
