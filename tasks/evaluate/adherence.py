"""Prompt adherence on labelled data (the synthetic set): does each sample show the colour and shape its
prompt asked for, as judged by a small probe trained on the real train images (models/probe.py)?"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.probe import predict_attributes, train_probe
from tasks.common.ingested import MANIFEST, ingested_images


def has_labels(ingested: Path) -> bool:
    manifest = pd.read_parquet(ingested / MANIFEST, columns=["color", "shape"])
    return bool(manifest["color"].notna().any() and manifest["shape"].notna().any())


def prompt_adherence(
    ingested: Path, samples: np.ndarray, prompts: pd.DataFrame, probe_steps: int, seed: int
) -> dict[str, float]:
    """Samples [N, H, W, 3] of `prompts` (rows with `color` and `shape`) scored by a probe; chance is a
    random guess of both, 1 / (#colours x #shapes)."""
    train, train_images = ingested_images(ingested, "train")  # images read a batch at a time
    val, val_images = ingested_images(ingested, "val")
    colors, shapes = sorted(train["color"].dropna().unique()), sorted(train["shape"].dropna().unique())
    c_idx = {c: i for i, c in enumerate(colors)}
    s_idx = {s: i for i, s in enumerate(shapes)}

    # the probe on real train images; its accuracy on real held-out images says how far to trust it
    colour_labels, shape_labels = train["color"].map(c_idx).to_numpy(), train["shape"].map(s_idx).to_numpy()
    probe = train_probe(train_images, colour_labels, shape_labels, steps=probe_steps, seed=seed)
    vc, vs = predict_attributes(probe, val_images)
    probe_acc = float(np.mean((vc == val["color"].map(c_idx)) & (vs == val["shape"].map(s_idx))))

    pc, ps = predict_attributes(probe, samples)
    color_ok = pc == prompts["color"].map(c_idx).to_numpy()
    shape_ok = ps == prompts["shape"].map(s_idx).to_numpy()
    return {
        "prompt_adherence": float(np.mean(color_ok & shape_ok)),
        "color_adherence": float(np.mean(color_ok)),
        "shape_adherence": float(np.mean(shape_ok)),
        "chance_level": 1.0 / (len(colors) * len(shapes)),
        "probe_val_accuracy": probe_acc,
    }
