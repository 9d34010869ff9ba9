"""The latent-space view of a VAE on the project's held-out images, as one figure: a 2-D projection of their
latents coloured by what their captions say, the per-channel mean and std, and decodes of random N(0, I)
latents beside decodes of real ones (models/autoencoder/latent_space.py measures; this draws)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from diffusers import AutoencoderKL
from matplotlib.figure import Figure  # drawn straight to a file: no pyplot, no display

from models.autoencoder.latent_space import (
    channel_stats,
    decode_normalised,
    encode_normalised,
    project_2d,
    random_latents,
    umap_installed,
)
from models.sampler.images import make_grid
from tasks.common.ingested import LABELS, image_groups

ARTICLES = {"a", "an", "the", "this", "that", "some"}
MOST_WORDS = 8  # leading words coloured one each; the rest are "other"


def leading_words(captions: list[str], most: int = MOST_WORDS) -> list[str]:
    """Each caption's first word that is not an article, the `most` commonest kept and the rest "other"."""
    first = []
    for caption in captions:
        words = [w.strip(".,;:!?\"'()").lower() for w in str(caption).split()]
        first.append(next((w for w in words if w and w not in ARTICLES), "(empty)"))
    kept = {w for w, _ in Counter(first).most_common(most)}
    return [w if w in kept else "other" for w in first]


def colourings(rows: pd.DataFrame) -> dict[str, list[str]]:
    """What to colour the points by: each caption attribute the data is labelled with, else the captions'
    leading words."""
    labelled = {a: rows[a].astype(str).tolist() for a in LABELS if a in rows and rows[a].notna().all()}
    return labelled or {"leading caption word": leading_words(rows["caption"].tolist())}


def held_out(ingested: Path, most: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Up to `most` held-out rows and their images, of the commonest image size (latents of one shape)."""
    rows, images = max(image_groups(ingested, "val"), key=lambda group: len(group[0]))
    picked = np.sort(np.random.default_rng(seed).permutation(len(rows))[:most])
    return rows.iloc[picked].reset_index(drop=True), images[picked]


def latent_space_view(vae: AutoencoderKL, ingested: Path, out: Path, seed: int, points: int = 512,
                      decodes: int = 16) -> dict:  # fmt: skip
    """Draw the view to `out` (PNG); returns what it measured: the projection's method, the number of
    points, and each channel's mean and std."""
    rows, images = held_out(ingested, points, seed)
    latents = encode_normalised(vae, images)
    method = "umap" if umap_installed() else "pca"
    xy = project_2d(latents, method, seed)
    stats = channel_stats(latents)
    real = decode_normalised(vae, latents[:decodes])
    fake = decode_normalised(vae, random_latents(decodes, tuple(latents.shape[1:]), seed))

    colours = colourings(rows)
    fig = Figure(figsize=(4.2 * max(3, len(colours)), 8.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    for ax, (name, labels) in zip(np.atleast_1d(top.subplots(1, len(colours))), colours.items(), strict=True):
        for label in sorted(set(labels)):
            at = np.array([lab == label for lab in labels])
            ax.scatter(xy[at, 0], xy[at, 1], s=9, label=label, alpha=0.8)
        ax.set_title(f"{method.upper()} of {len(xy)} held-out latents, by {name}", fontsize=9)
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax_stats, ax_fake, ax_real = bottom.subplots(1, 3)
    channels = np.arange(len(stats["mean"]))
    ax_stats.bar(channels - 0.2, stats["mean"], width=0.4, label="mean")
    ax_stats.bar(channels + 0.2, stats["std"], width=0.4, label="std")
    ax_stats.axhline(0, color="grey", lw=0.5)
    ax_stats.axhline(1, color="grey", lw=0.5, ls="--")
    ax_stats.set(xticks=channels, xlabel="latent channel", title="held-out latents, normalised")
    ax_stats.legend(fontsize=7)
    for ax, grid, title in ((ax_fake, fake, "decodes of random N(0, I) latents"),
                            (ax_real, real, "decodes of real held-out latents")):  # fmt: skip
        ax.imshow(make_grid(grid, ncols=int(np.ceil(np.sqrt(len(grid))))), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return {"projection": method, "points": len(xy), **{f"channel_{k}": v for k, v in stats.items()}}
