"""Guidance-scale sweep: the judge's metrics of samples at each classifier-free guidance scale, for the
first `eval.sweep_samples` held-out captions (the same seed, so only the scale changes). Written as
`guidance_sweep.json` (a DVC plot) and drawn as `guidance_sweep.png` (logged to MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure  # drawn straight to a file: no pyplot, no display

from models.sampler.pipeline import LatentDiffusionPipeline
from tasks.common.paths import SWEEP, SWEEP_PLOT
from tasks.evaluate.scores import RealReference

SHOWN = ("r_precision_judge", "fd_judge")  # what the picture shows; the json keeps every judge metric


def guidance_sweep(measure, pipe: LatentDiffusionPipeline) -> list[dict[str, float]]:
    """One row of judge metrics per scale in `eval.guidance_sweep`."""
    e, seed = measure.cfg.eval, measure.cfg.seed
    prompts = measure.prompts.head(e.sweep_samples)
    reference = RealReference(measure.ready, measure.ingested, prompts, seed)
    captions = prompts["caption"].tolist()
    rows = []
    for scale in e.guidance_sweep:
        samples = pipe.generate(captions, num_inference_steps=e.inference_steps, guidance_scale=scale,
                                seed=seed, batch_size=e.batch_size)  # fmt: skip
        scores = reference.scores(samples, captions)
        rows.append(
            {"guidance_scale": float(scale)} | {k: v for k, v in scores.items() if k not in reference.frame}
        )
    return rows


def write_sweep(rows: list[dict[str, float]], out: Path) -> list[Path]:
    (out / SWEEP).write_text(json.dumps(rows, indent=2) + "\n")
    fig = Figure(figsize=(4 * len(SHOWN), 3), dpi=100)
    axes = fig.subplots(1, len(SHOWN))
    scales = [r["guidance_scale"] for r in rows]
    for ax, name in zip(axes, SHOWN, strict=True):
        ax.plot(scales, [r[name] for r in rows], marker="o")
        ax.set_xlabel("guidance scale")
        ax.set_title(name)
    axes[0].axhline(rows[0]["r_precision_chance"], color="grey", linestyle=":", label="chance")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / SWEEP_PLOT)
    return [out / SWEEP, out / SWEEP_PLOT]
