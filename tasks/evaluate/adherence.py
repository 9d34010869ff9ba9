"""Prompt adherence on labelled data (the synthetic set): does each sample show what its prompt asked for
(colour, shape, size, position, whichever the data labels), as judged by a small probe trained on the real
train images (models/judges/probe.py)?"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.judges.probe import predict_attributes, train_probe
from tasks.common.ingested import LABELS, ingested_images
from tasks.common.paths import MANIFEST


def labelled(ingested: Path) -> list[str]:
    """The attributes every image of the data is labelled with (none for a user's own data)."""
    manifest = pd.read_parquet(ingested / MANIFEST)
    return [a for a in LABELS if a in manifest and manifest[a].notna().all()]


class Adherence:
    """A probe trained once on the real train images (its accuracy on real held-out images says how far to
    trust it), then `scores` for any samples: `<attribute>_adherence` for each attribute,
    `prompt_adherence` for colour and shape together and `caption_adherence` for every attribute at once,
    each beside the chance of a random guess."""

    def __init__(self, ingested: Path, attributes: list[str], probe_steps: int, seed: int) -> None:
        train, train_images = ingested_images(ingested, "train")  # images read a batch at a time
        val, val_images = ingested_images(ingested, "val")
        self.attributes = attributes
        self.classes = {a: {v: i for i, v in enumerate(sorted(train[a].unique()))} for a in attributes}
        labels = {a: train[a].map(self.classes[a]).to_numpy() for a in attributes}
        self.probe = train_probe(train_images, labels, steps=probe_steps, seed=seed)
        self.probe_val_accuracy = float(np.mean(np.all(list(self._hits(val_images, val).values()), axis=0)))

    def _hits(self, images, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        predicted = predict_attributes(self.probe, images)
        return {a: predicted[a] == rows[a].map(self.classes[a]).to_numpy() for a in self.attributes}

    def scores(self, samples: np.ndarray, prompts: pd.DataFrame) -> dict[str, float]:
        """Samples [N, H, W, 3] of `prompts` (held-out rows, with their labels)."""
        made = self._hits(samples, prompts)
        metrics = {f"{a}_adherence": float(np.mean(ok)) for a, ok in made.items()}
        metrics["caption_adherence"] = float(np.mean(np.all(list(made.values()), axis=0)))
        metrics["caption_chance"] = 1.0 / float(np.prod([len(self.classes[a]) for a in self.attributes]))
        metrics["probe_val_accuracy"] = self.probe_val_accuracy  # every attribute right, real images
        if {"color", "shape"} <= set(self.attributes):
            metrics["prompt_adherence"] = float(np.mean(made["color"] & made["shape"]))
            metrics["chance_level"] = 1.0 / (len(self.classes["color"]) * len(self.classes["shape"]))
        return metrics
