"""Ingest throughput: the ingest stage vs a bare PIL decode + resize loop over the same files, in one run.

Makes a folder of photo-like JPEGs with sidecar captions, then times, for each resolution: a
single-process loop that opens, converts and resizes (ImageOps.fit) each file with PIL; and `run_ingest`
on the same folder (listing, reading, hashing, EXIF, decoding, cropping, duplicate checks, sharding,
manifest) with 1 and with 2 decode threads. Goal (issue 3): the stage with 2 threads at >= 1.5x the
bare loop's images/s.

    .venv/bin/python benchmarks/ingest.py [--images 2000] [--resolutions 32,256] [--scale 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

ROOT = Path(__file__).resolve().parents[1]


def make_photos(root: Path, n: int, seed: int = 0, scale: int = 1) -> list[Path]:
    """Photo-like JPEGs (gradients, shapes, sensor noise), landscape and portrait, 0.25-0.5 megapixels
    times scale^2."""
    rng = np.random.default_rng(seed)
    sizes = [(640 * scale, 480 * scale), (480 * scale, 640 * scale), (800 * scale, 600 * scale),
             (512 * scale, 512 * scale), (720 * scale, 540 * scale)]  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(0, 255, 3) * (x / w)[..., None] + rng.uniform(0, 255, 3) * (y / h)[..., None]
        img = Image.fromarray(np.clip(base / 2 + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            box = (x0, y0, x0 + int(rng.integers(30, 200)), y0 + int(rng.integers(30, 200)))
            draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        path = root / f"{i:05d}.jpg"
        img.save(path, quality=90)
        path.with_suffix(".txt").write_text(f"photo number {i} with six round things\n")
        paths.append(path)
    return paths


def bare_loop(paths: list[Path], resolution: int) -> float:
    start = time.perf_counter()
    for p in paths:
        with Image.open(p) as img:
            out = ImageOps.fit(img.convert("RGB"), (resolution, resolution), Image.Resampling.BICUBIC)
            np.asarray(out)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--resolutions", default="32,256", help="data.resolution values (params.yaml: 32)")
    ap.add_argument("--scale", type=int, default=1, help="photo side lengths x this (4: 4-8 megapixels)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tasks.common.config import load_config
    from tasks.ingest.stage import run_ingest

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "photos"
        paths = make_photos(src, args.images, scale=args.scale)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        mp = f"{0.25 * args.scale**2:g}-{0.48 * args.scale**2:g}"
        print(f"{args.images} photo-like JPEGs, {mp} megapixels, {mb:.0f} MB; images/s, higher is better")
        header = ("resolution", "bare PIL loop", "stage 1 thread", "stage 2 threads", "ratio")
        print("{:>10} {:>14} {:>14} {:>15} {:>6}".format(*header))
        for resolution in (int(r) for r in args.resolutions.split(",")):
            rates = [args.images / bare_loop(paths, resolution)]
            for workers in (1, 2):
                overrides = [
                    "data.source=sidecar", f"data.path={src}", f"data.resolution={resolution}",
                    f"data.workers={workers}",
                ]  # fmt: skip
                cfg = load_config(ROOT / "params.yaml", overrides)
                start = time.perf_counter()
                report = run_ingest(cfg, Path(tmp) / f"ingested-{resolution}-{workers}")
                rates.append(args.images / (time.perf_counter() - start))
                assert report["accepted"] == args.images, report
            bare, one, two = rates
            print(f"{resolution:>10} {bare:>14.0f} {one:>14.0f} {two:>15.0f} {two / bare:>5.2f}x")
    print("ratio: stage with 2 threads / bare loop (goal >= 1.5x)")


if __name__ == "__main__":
    main()
