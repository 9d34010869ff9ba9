"""Do the cross-attention maps mean something? On a model trained on the synthetic set (`make run`), for
held-out captions such as "a small red circle at the top left": the object of each sample is found by its
colour (pixels near the caption's palette colour), and each word's map is asked where its peak is.

The shape word's peak should fall inside the object's bounding box in most samples (goal: 80%); an
article ("a") carries no place, so its peak should land there about as often as a random pixel would (the
box's share of the image, printed as chance). Padding tokens are masked: their attention is printed too.

    .venv/bin/python benchmarks/attention_maps.py [--project .] [--samples 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.views.attention_maps import CrossAttentionMaps, explain  # noqa: E402
from tasks.common.config import load_config  # noqa: E402
from tasks.common.paths import MANIFEST, ProjectPaths  # noqa: E402
from tasks.ingest.synthetic import PALETTE  # noqa: E402

GOAL = 0.8
COLOUR_DISTANCE = 90.0  # a pixel this near the caption's palette colour (RGB, Euclidean) is the object's
MIN_PIXELS = 3  # fewer: the sample has no object of that colour to locate


def object_box(image: np.ndarray, colour: str) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right), inclusive, of the pixels near `colour`, or None."""
    near = np.linalg.norm(image.astype(np.float64) - np.array(PALETTE[colour]), axis=-1) < COLOUR_DISTANCE
    if near.sum() < MIN_PIXELS:
        return None
    rows, cols = np.nonzero(near)
    return rows.min(), cols.min(), rows.max(), cols.max()


def peak_inside(heat: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    top, left, bottom, right = box
    return bool(top <= y <= bottom and left <= x <= right)


def padding_share(pipe, prompt: str, seed: int, steps: int, guidance: float) -> float:
    """The largest share of any position's attention that padding tokens get, over layers and steps."""
    hidden, mask = pipe.encode([prompt])
    noise = pipe.initial_noise(1, seed)
    with CrossAttentionMaps(pipe.unet, 1, tuple(noise.shape[-2:])) as recorder:
        pipe.sample(hidden, mask, noise, steps, guidance)
    padding = recorder.total[0, ~mask[0].bool()]
    return float((padding / recorder.calls).max()) if len(padding) else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default=".", help="a project whose champion learned the synthetic set")
    ap.add_argument("--samples", type=int, default=64, help="held-out captions, one sample each")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from infra.tracking import connect, registered_pipeline

    paths = ProjectPaths.at(args.project)
    cfg = load_config(paths.root / "params.yaml")
    connect(cfg, paths)
    uri = f"models:/{cfg.tracking.registered_model}@champion"
    pipe = registered_pipeline(uri)  # from its pipeline folder: none of the registry's code runs
    manifest = pd.read_parquet(paths.ingested / MANIFEST)
    if "shape" not in manifest or manifest["shape"].isna().any():
        print(f"{paths.ingested}: no shape labels (not the synthetic set)", file=sys.stderr)
        return 2
    held_out = manifest[manifest["split"] == "val"].sample(frac=1.0, random_state=args.seed)
    rows = held_out.drop_duplicates("caption").head(args.samples)
    steps, guidance = cfg.eval.inference_steps, cfg.eval.guidance_scale
    torch.manual_seed(args.seed)

    found = shape_in = article_in = colour_in = 0
    area = []
    for start in range(0, len(rows), 16):
        batch = rows.iloc[start : start + 16]
        explained = explain(pipe, batch["caption"].tolist(), args.seed + start, steps, guidance)
        for (_, row), result in zip(batch.iterrows(), explained, strict=True):
            box = object_box(result.image, row["color"])
            if box is None:
                continue
            found += 1
            maps = dict(zip(result.tokens, result.maps, strict=False))  # the first of a repeated token
            shape_in += peak_inside(maps[row["shape"]], box)
            article_in += peak_inside(maps["a"], box)
            colour_in += peak_inside(maps[row["color"]], box)
            top, left, bottom, right = box
            area.append((bottom - top + 1) * (right - left + 1) / result.image[..., 0].size)
    padding = padding_share(pipe, rows["caption"].iloc[0], args.seed, steps, guidance)

    print(f"model {uri} of {paths.root}; {len(rows)} held-out captions, {steps} steps, guidance {guidance}")
    print(f"object found by its colour in {found} of {len(rows)} samples")
    if not found:
        return 1
    chance = float(np.mean(area))
    print(f"{'token':<14} {'peak inside the object':>24}")
    for name, hits in (("shape word", shape_in), ("colour word", colour_in), ('"a"', article_in)):
        print(f"{name:<14} {hits / found:>23.1%}")
    print(f"{'chance':<14} {chance:>23.1%}   (the boxes' mean share of the image)")
    print(f"padding: at most {padding:.2e} of a position's attention (masked)")
    ok = shape_in / found >= GOAL
    print(f"goal: shape word inside in at least {GOAL:.0%}: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
