"""Prompt adherence on labelled data (the synthetic set): does each sample show what its prompt asked for
(colour, shape, size, position, whichever the data labels), as judged by a small probe trained on the real
train images (models/probe.py)?"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.probe import predict_attributes, train_probe
from tasks.common.ingested import LABELS, MANIFEST, ingested_images


def labelled(ingested: Path) -> list[str]:
    """The attributes every image of the data is labelled with (none for a user's own data)."""
    manifest = pd.read_parquet(ingested / MANIFEST)
    return [a for a in LABELS if a in manifest and manifest[a].notna().all()]


def prompt_adherence(
    ingested: Path,
    samples: np.ndarray,
    prompts: pd.DataFrame,
    attributes: list[str],
    probe_steps: int,
    seed: int,
) -> dict[str, float]:
    """Samples [N, H, W, 3] of `prompts` (held-out rows with their labels) scored by a probe:
    `<attribute>_adherence` for each, `prompt_adherence` for colour and shape together, and
    `caption_adherence` for every attribute at once; each chance level is a random guess."""
    train, train_images = ingested_images(ingested, "train")  # images read a batch at a time
    val, val_images = ingested_images(ingested, "val")
    classes = {a: {v: i for i, v in enumerate(sorted(train[a].unique()))} for a in attributes}

    # the probe on real train images; its accuracy on real held-out images says how far to trust it
    probe = train_probe(train_images, {a: train[a].map(classes[a]).to_numpy() for a in attributes},
                        steps=probe_steps, seed=seed)  # fmt: skip

    def hits(images, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        predicted = predict_attributes(probe, images)
        return {a: predicted[a] == rows[a].map(classes[a]).to_numpy() for a in attributes}

    real, made = hits(val_images, val), hits(samples, prompts)
    metrics = {f"{a}_adherence": float(np.mean(ok)) for a, ok in made.items()}
    metrics["caption_adherence"] = float(np.mean(np.all(list(made.values()), axis=0)))
    metrics["caption_chance"] = 1.0 / float(np.prod([len(classes[a]) for a in attributes]))
    metrics["probe_val_accuracy"] = float(np.mean(np.all(list(real.values()), axis=0)))  # every attribute
    if {"color", "shape"} <= set(attributes):
        metrics["prompt_adherence"] = float(np.mean(made["color"] & made["shape"]))
        metrics["chance_level"] = 1.0 / (len(classes["color"]) * len(classes["shape"]))
    return metrics
