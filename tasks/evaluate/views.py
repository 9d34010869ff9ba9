"""The evaluated model's report: its metrics and the views that show what it learned, in one `report.md`
beside the PNGs it shows (artifacts/eval/).

- the latent space of its VAE on held-out images (tasks/evaluate/latent_view.py);
- interpolations: one prompt between two seeds, two prompts at one seed, a sheet over four seeds
  (models/views/walks.py), each with how far apart neighbouring frames are against its two ends, in pixels and
  in the judge's image space (a smooth walk moves less per frame than from end to end);
- the cross-attention map of every token of a few held-out captions (models/views/attention_maps.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.judges.judge import Judge, embed_images
from models.sampler.images import make_grid
from models.sampler.pipeline import LatentDiffusionPipeline
from models.views.attention_maps import explain
from models.views.interpolation import fractions
from models.views.walks import prompt_walk, refine_walk, seed_sheet, seed_walk
from tasks.common.config import Config
from tasks.evaluate.attention_view import attention_figure
from tasks.evaluate.latent_view import latent_space_view

LATENTS, ATTENTION = "latents.png", "attention.png"
WALKS = {"seeds": "walk_seeds.png", "prompts": "walk_prompts.png", "sheet": "walk_sheet.png"}


@dataclass
class Smoothness:
    """How far neighbouring frames of a walk are apart (the largest step and the mean one) against the
    distance between its two ends. A walk can be smooth on average and still jump once: a prompt walk
    between two colours passes through the hues between them, which the judge tells apart."""

    frames: int
    pixel_step: float  # mean absolute difference in uint8 levels
    pixel_mean_step: float
    pixel_ends: float
    judge_step: float  # 1 - cosine similarity of the judge's image embeddings
    judge_mean_step: float
    judge_ends: float


def _steps(frames: np.ndarray, judge: Judge) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(pixel steps, judge steps, pixel ends apart, judge ends apart) of frames uint8 [N, H, W, 3]."""
    x = frames.astype(np.float64)
    emb = embed_images(judge, frames).double().numpy()  # unit vectors
    pixel = np.abs(x[1:] - x[:-1]).mean(axis=(1, 2, 3))
    judged = 1 - (emb[1:] * emb[:-1]).sum(1)
    return pixel, judged, float(np.abs(x[-1] - x[0]).mean()), float(1 - emb[-1] @ emb[0])


def smoothness(frames: np.ndarray, judge: Judge) -> Smoothness:
    """Of a walk's frames uint8 [N, H, W, 3], in order."""
    pixel, judged, pixel_ends, judge_ends = _steps(frames, judge)
    return Smoothness(
        len(frames), float(pixel.max()), float(pixel.mean()), pixel_ends,
        float(judged.max()), float(judged.mean()), judge_ends,
    )  # fmt: skip


def step_widths(frames: np.ndarray, judge: Judge) -> np.ndarray:
    """Each step of a walk as a share of its ends' distance, the larger of pixels' and the judge's (what
    `refine_walk` halves first)."""
    pixel, judged, pixel_ends, judge_ends = _steps(frames, judge)
    return np.maximum(pixel / max(pixel_ends, 1e-9), judged / max(judge_ends, 1e-9))


def write_views(cfg: Config, pipe: LatentDiffusionPipeline, prompts: list[str], judge: Judge, ingested: Path,
                out: Path) -> dict:  # fmt: skip
    """Draw every view into `out`; returns what they measured and how long each took (seconds)."""
    v, e = cfg.eval.views, cfg.eval
    sampling = {"steps": e.inference_steps, "guidance": e.guidance_scale}
    distinct = list(dict.fromkeys(prompts))
    first, second = distinct[0], distinct[1 % len(distinct)]
    seeds = [cfg.seed + i for i in range(4)]
    took, measured = {}, {}

    started = time.perf_counter()
    measured["latents"] = latent_space_view(pipe.vae, ingested, out / LATENTS, cfg.seed)
    took["latents"] = time.perf_counter() - started

    started = time.perf_counter()
    even = fractions(v.frames)
    pairwise = {
        "seeds": lambda at: seed_walk(pipe, first, (seeds[0], seeds[1]), at, **sampling),
        "prompts": lambda at: prompt_walk(pipe, (first, second), seeds[0], at, **sampling),
    }
    walks, measured["walk_fractions"] = {}, {}
    for name, walk in pairwise.items():
        at, frames = refine_walk(walk, even, v.refine, lambda frames: step_widths(frames, judge))
        make_grid(frames, ncols=v.frames).save(out / WALKS[name])
        measured["walk_fractions"][name] = at
        walks[f"{name}, even"] = frames[[at.index(t) for t in even]]
        if v.refine:
            walks[f"{name}, refined"] = frames
    sheet = seed_sheet(pipe, first, (seeds[0], seeds[1], seeds[2], seeds[3]), v.frames, **sampling)
    make_grid(sheet, ncols=v.frames).save(out / WALKS["sheet"])
    walks["sheet, left edge"] = sheet[:: v.frames]  # seed 0 down to seed 2 (row-major)
    measured["walks"] = {name: smoothness(frames, judge) for name, frames in walks.items()}
    measured["walk_prompts"] = {"first": first, "second": second, "seeds": seeds}
    took["interpolation"] = time.perf_counter() - started

    started = time.perf_counter()
    shown = distinct[: v.attention_prompts]
    explained = explain(pipe, shown, cfg.seed, e.inference_steps, e.guidance_scale)
    attention_figure(explained, shown, out / ATTENTION)
    measured["attention_tokens"] = [found.tokens for found in explained]
    took["attention"] = time.perf_counter() - started
    measured["seconds"] = took
    return measured


def report_markdown(metrics: dict[str, float], views: dict | None) -> str:
    """report.md: the metrics, then each view with what it measured."""
    lines = ["# Evaluation report", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4g} |" for name, value in sorted(metrics.items())]
    if views is None:
        return "\n".join([*lines, "", "The views are off (`eval.views.enabled: false`)."]) + "\n"
    return (
        "\n".join([*lines, *_latent_section(views), *_walk_section(views), *_attention_section(views)]) + "\n"
    )


def _latent_section(views: dict) -> list[str]:
    space = views["latents"]
    pairs = zip(space["channel_mean"], space["channel_std"], strict=True)
    channels = ", ".join(f"{m:+.2f} / {sd:.2f}" for m, sd in pairs)
    return [
        "", "## Latent space", "",
        f"{space['projection'].upper()} of {space['points']} held-out latents, in the normalised space the "
        f"U-Net samples in; per channel mean / std: {channels}. Beside it, decodes of random N(0, I) latents "
        "and of real ones: a well-formed latent space decodes both to plausible images.",
        "", f"![latent space]({LATENTS})",
    ]  # fmt: skip


def _walk_section(views: dict) -> list[str]:
    w = views["walk_prompts"]
    seeds, first, second = w["seeds"], repr(w["first"]), repr(w["second"])
    at = views["walk_fractions"]
    lines = [
        "", "## Interpolation", "",
        f"{first}, seed {seeds[0]} to seed {seeds[1]} (the initial noise slerped), at "
        f"{_fractions(at['seeds'])}:", "", f"![seed walk]({WALKS['seeds']})", "",
        f"{first} to {second} at seed {seeds[0]} (the text embeddings interpolated), at "
        f"{_fractions(at['prompts'])}:", "", f"![prompt walk]({WALKS['prompts']})", "",
        f"{first} over a sheet with seeds {', '.join(map(str, seeds))} at its corners (top left, top right, "
        "bottom left, bottom right; slerp both ways):", "",
        f"![seed sheet]({WALKS['sheet']})", "",
        "| walk | frames | pixels: largest step | mean step | ends apart "
        "| judge: largest step | mean step | ends apart |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, d in views["walks"].items():
        pixels = f"{d.pixel_step:.2f} | {d.pixel_mean_step:.2f} | {d.pixel_ends:.2f}"
        judged = f"{d.judge_step:.4f} | {d.judge_mean_step:.4f} | {d.judge_ends:.4f}"
        lines.append(f"| {name} | {d.frames} | {pixels} | {judged} |")
    lines += [
        "",
        "Pixels: mean absolute difference in uint8 levels; judge: 1 - cosine similarity of the "
        "judge's image embeddings. A smooth walk's steps are all shorter than its ends are apart. "
        "*even*: the walk's evenly spaced frames; *refined*: with frames added, each half-way across the "
        "step that was widest (as a share of the ends' distance, in pixels or for the judge). Refining "
        "shrinks the steps of a walk that only moves fast in places; a jump stays as wide.",
    ]
    return lines


def _fractions(at: list[float]) -> str:
    return "t = " + ", ".join(f"{t:.4g}" for t in at)


def _attention_section(views: dict) -> list[str]:
    took = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in views["seconds"].items())
    return [
        "", "## Cross-attention", "",
        "Each token's attention, summed over the U-Net's cross-attention layers and the sampling steps (the "
        "conditional half of guidance only; padding left out), over the sample it steered:",
        "", f"![attention maps]({ATTENTION})", "", f"The views took {took}.",
    ]  # fmt: skip
