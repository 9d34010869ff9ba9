"""Cross-attention maps drawn over their samples: one row per prompt, the sample first, then one panel per
token of the prompt with its map laid over the sample, bright where the token is attended to most
(models/views/attention_maps.py records them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # drawn straight to a file: no pyplot, no display

from models.views.attention_maps import Explanation


def attention_figure(explained: list[Explanation], prompts: list[str], out: Path) -> None:
    """Draw each explanation as a row to `out` (PNG)."""
    columns = 1 + max(len(e.tokens) for e in explained)
    fig = Figure(figsize=(1.5 * columns, 1.75 * len(explained)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(explained), columns, squeeze=False))
    for row, (found, prompt) in zip(axes, zip(explained, prompts, strict=True), strict=True):
        grey = found.image.mean(-1) / 3  # dimmed, so a bright object does not read as attention
        row[0].imshow(found.image, interpolation="nearest")
        row[0].set_title(prompt if len(prompt) <= 28 else prompt[:27] + "…", fontsize=7)
        for ax, token, heat in zip(row[1:], found.tokens, found.maps, strict=False):
            ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.imshow(heat, cmap="inferno", alpha=0.75, vmin=0, vmax=1, interpolation="bilinear")
            ax.set_title(token, fontsize=8)
        for ax in row:
            ax.axis("off")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
