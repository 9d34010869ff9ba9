"""evaluate stage: sample the trained model for held-out captions, measure it, register it, and move the
`champion` alias only when it beats the current champion.

On any data, the samples are scored in the space of a judge trained on the real train split (judge.py,
scores.py): R-precision with chance and the real-image ceiling, Fréchet distance, KID, precision and
recall with the real-vs-real floor. Labelled data (the synthetic set) adds prompt adherence from a
probe (adherence.py). Writes `artifacts/eval/metrics.json` (flat {name: number}) and
`artifacts/eval/samples.png`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from infra.storage import ObjectStore, object_store_from_config
from infra.tracking import Run
from models.fingerprint import module_fingerprint
from models.sampler.device import pick_device
from models.sampler.images import make_grid
from models.sampler.pipeline import LatentDiffusionPipeline
from models.sampler.text_encoder import load_text_encoder
from tasks.common.atomic_dir import replaced_dir
from tasks.common.captions import CaptionTable
from tasks.common.config import Config
from tasks.common.keys import content_key
from tasks.common.paths import CACHE_INFO, EVAL_REPORT, MANIFEST, METRICS, SAMPLES, ProjectPaths
from tasks.evaluate.adherence import Adherence, labelled
from tasks.evaluate.champion import JUDGE_TAG, SETTINGS_TAG
from tasks.evaluate.clip import ClipReference
from tasks.evaluate.inception import InceptionReference
from tasks.evaluate.judge import ReadyJudge, ready_judge
from tasks.evaluate.registration import gate_and_register
from tasks.evaluate.scores import RealReference, choose_rows, read_rows
from tasks.evaluate.sweep import guidance_sweep, write_sweep
from tasks.evaluate.views import ATTENTION, LATENTS, WALKS, report_markdown, write_views

VIEW_FILES = [LATENTS, *WALKS.values(), ATTENTION]


def load_pipeline(vae_dir: Path, unet_dir: Path, text_dir: Path, cfg: Config) -> LatentDiffusionPipeline:
    """Assemble the sampler from the stage outputs; the encoder must be the one the text cache used."""
    info = json.loads((text_dir / CACHE_INFO).read_text())
    tokenizer, encoder = load_text_encoder(info["encoder"])
    if module_fingerprint(encoder) != info["encoder_fingerprint"]:
        raise ValueError(
            f"text encoder {info['encoder']!r} no longer matches the one the U-Net was trained with "
            f"({text_dir / CACHE_INFO}); re-run embed_text and train_unet"
        )
    scheduler_config = dict(json.loads((unet_dir / "scheduler" / "scheduler_config.json").read_text()))
    return LatentDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(vae_dir),
        unet=UNet2DConditionModel.from_pretrained(unet_dir),
        tokenizer=tokenizer,
        text_encoder=encoder,
        scheduler=scheduler_config,
        max_length=int(info["max_length"]),
        device=pick_device(),
        clip_skip=int(info.get("clip_skip", 0)),
    )


class Measurement:
    """What a model is measured against: held-out captions and their real images, as many real train
    images for the floor, the judge, and (labelled data) the probe's labels."""

    def __init__(self, cfg: Config, ingested: Path, ready: ReadyJudge) -> None:
        e = cfg.eval
        self.cfg, self.ingested, self.ready = cfg, ingested, ready
        self.prompts = choose_rows(ingested, "val", e.samples, cfg.seed)
        self.reference = RealReference(ready, ingested, self.prompts, cfg.seed)
        attributes = labelled(ingested)
        self.adherence = Adherence(ingested, attributes, e.probe_steps, cfg.seed) if attributes else None
        self.clip = ClipReference(e.clip_model, self.reference.held_out) if e.clip_model else None
        self.inception = None
        if e.inception_weights:
            train = read_rows(ingested, self.reference.train_rows)
            self.inception = InceptionReference(e.inception_weights, self.reference.held_out, train, cfg.seed)
        # what the numbers depend on besides the model; not the gate, the sweep or the sampling batch size
        measured = e.model_dump(
            mode="json", exclude={"gate", "guidance_sweep", "sweep_samples", "batch_size", "views"}
        )
        settings_key = content_key({"eval": measured, "seed": cfg.seed}, list(self.prompts["sample_id"]))
        self.alike = {JUDGE_TAG: ready.key, SETTINGS_TAG: settings_key}

    def samples(self, pipe: LatentDiffusionPipeline) -> np.ndarray:
        e = self.cfg.eval
        return pipe.generate(
            self.prompts["caption"].tolist(),
            num_inference_steps=e.inference_steps,
            guidance_scale=e.guidance_scale,
            seed=self.cfg.seed,
            batch_size=e.batch_size,
        )

    def of(self, pipe: LatentDiffusionPipeline) -> dict[str, float]:
        """The scores of `pipe`'s samples."""
        return self.scores(self.samples(pipe))

    def scores(self, samples: np.ndarray) -> dict[str, float]:
        metrics = self.reference.scores(samples, self.prompts["caption"].tolist())
        if self.adherence:
            metrics |= self.adherence.scores(samples, self.prompts)
        if self.clip:
            metrics |= self.clip.scores(samples, self.prompts["caption"].tolist())
        if self.inception:
            metrics |= self.inception.scores(samples)
        return metrics | {"eval_samples": len(samples)}


def report(metrics: dict[str, float]) -> str:
    m = metrics
    lines = [
        f"R-precision (judge) {m['r_precision_judge']:.3f}  (chance {m['r_precision_chance']:.3f}, "
        f"real images {m['r_precision_judge_ceiling']:.3f}, against shuffled captions "
        f"{m['r_precision_judge_shuffled']:.3f}; pool of {m['r_precision_pool']:.0f})",
        f"FD (judge) {m['fd_judge']:.4f}  KID (judge) {m['kid_judge']:.4f}  "
        f"(real vs real: {m['fd_judge_floor']:.4f}, {m['kid_judge_floor']:.4f})",
        f"precision {m['precision_judge']:.3f}  recall {m['recall_judge']:.3f}  "
        f"(real vs real: {m['precision_judge_real']:.3f}, {m['recall_judge_real']:.3f})",
    ]
    if "fd_judge_reconstruction" in m:
        lines.append(f"the VAE's reconstructions of the held-out images: FD (judge) "
                     f"{m['fd_judge_reconstruction']:.4f}")  # fmt: skip
    if "prompt_adherence" in m:
        adherence, chance = m["prompt_adherence"], m["chance_level"]
        lines.append(f"prompt_adherence (colour and shape) {adherence:.3f} (chance {chance:.3f})")
    if "caption_adherence" in m:
        each = [f"{k.removesuffix('_adherence')} {v:.3f}" for k, v in m.items() if k.endswith("_adherence")]
        each = [e for e in each if not e.startswith(("prompt ", "caption "))]
        lines.append(
            f"caption_adherence (every attribute) {m['caption_adherence']:.3f} (chance "
            f"{m['caption_chance']:.4f}; {', '.join(each)}; probe on real held-out images "
            f"{m['probe_val_accuracy']:.3f})"
        )
    if "clip_score" in m:
        lines.append(f"CLIP score {m['clip_score']:.2f}  (real images {m['clip_score_real']:.2f})")
    if "fid_inception" in m:
        lines.append(
            f"FID (Inception) {m['fid_inception']:.2f}  KID (Inception) {m['kid_inception']:.4f}  "
            f"(real vs real: {m['fid_inception_floor']:.2f}, {m['kid_inception_floor']:.4f})"
        )
    return "\n".join(lines)


def run_evaluate(
    cfg: Config, paths: ProjectPaths, captions: CaptionTable, store: ObjectStore, tracker: Run | None = None
) -> dict:
    torch.manual_seed(cfg.seed)
    pipe = load_pipeline(paths.vae, paths.unet, paths.text, cfg)
    ready = ready_judge(cfg, paths.ingested, paths.text, captions, store)
    print(f"judge: {'trained and stored' if ready.trained_now else 'reused'} ({store.uri(ready.key)})")
    measure = Measurement(cfg, paths.ingested, ready)
    samples = measure.samples(pipe)
    metrics = measure.scores(samples) | measure.reference.reconstruction(pipe.vae)
    print(report(metrics))

    with replaced_dir(paths.eval) as staging:  # the previous evaluation stays until this one is complete
        make_grid(samples[:64], ncols=8).save(staging / SAMPLES)
        (staging / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
        plots = write_sweep(guidance_sweep(measure, pipe), staging) if cfg.eval.guidance_sweep else []
        views = None
        if cfg.eval.views.enabled:
            captions = measure.prompts["caption"].tolist()
            views = write_views(cfg, pipe, captions, ready.judge, paths.ingested, staging)
        (staging / EVAL_REPORT).write_text(report_markdown(metrics, views))
    if tracker:
        tracker.log_metrics(metrics)
        if views:
            tracker.log_metrics({f"view_seconds_{name}": t for name, t in views["seconds"].items()})
        for path in [SAMPLES, EVAL_REPORT, *(p.name for p in plots), *(VIEW_FILES if views else [])]:
            tracker.log_artifact(paths.eval / path)
        gate_and_register(cfg, paths, pipe, tracker, metrics, measure.alike, measure.of)
    return metrics


def main(cfg: Config, paths: ProjectPaths, tracker: Run) -> dict:
    store = object_store_from_config(cfg.storage, paths.s3_state)
    text = pd.read_parquet(paths.text / MANIFEST)
    captions = CaptionTable(store, text, paths.shard_cache / "text")
    return run_evaluate(cfg, paths, captions, store, tracker)
