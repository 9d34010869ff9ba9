"""evaluate stage: sample from the trained model, measure prompt adherence, register the model.

`prompt_adherence` is the fraction of generated samples whose colour AND shape, as judged by a small
probe classifier trained on the real ingested train images, match what the prompt asked for. Prompts are
validation-split captions, `eval.prompts_per_class` for each (colour, shape) class, so the model is asked
for held-out captions. Chance level (a probe-independent random guess) is 1 / (#colours x #shapes).
Writes `artifacts/eval/metrics.json` (flat {name: number}) and `artifacts/eval/samples.png`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from models import pyfunc
from models.device import pick_device
from models.fingerprint import module_fingerprint
from models.images import make_grid
from models.pipeline import LatentDiffusionPipeline, save_sampling_config
from models.probe import predict_attributes, train_probe
from models.pyfunc import TextToImageModel, signature
from models.text_encoder import load_text_encoder
from tasks.common import tracking
from tasks.common.config import Config
from tasks.common.ingested import ingested_images
from tasks.common.paths import ProjectPaths
from tasks.common.tracking import Run

METRICS = "metrics.json"
SAMPLES = "samples.png"


def choose_prompts(val: pd.DataFrame, per_class: int, seed: int) -> pd.DataFrame:
    """`per_class` validation captions per (colour, shape) class, chosen reproducibly."""
    shuffled = val.dropna(subset=["color", "shape"]).sample(frac=1.0, random_state=seed)
    chosen = shuffled.groupby(["color", "shape"], sort=True).head(per_class)
    return chosen.sort_values(["color", "shape", "sample_id"]).reset_index(drop=True)


def load_pipeline(vae_dir: Path, unet_dir: Path, text_dir: Path, cfg: Config) -> LatentDiffusionPipeline:
    """Assemble the sampler from the stage outputs; the encoder must be the one the text cache used."""
    info = json.loads((text_dir / "cache.json").read_text())
    tokenizer, encoder = load_text_encoder(info["encoder"])
    if module_fingerprint(encoder) != info["encoder_fingerprint"]:
        raise ValueError(
            f"text encoder {info['encoder']!r} no longer matches the one the U-Net was trained with "
            f"({text_dir / 'cache.json'}); re-run embed_text and train_unet"
        )
    device = pick_device()
    scheduler_config = dict(json.loads((unet_dir / "scheduler" / "scheduler_config.json").read_text()))
    return LatentDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(vae_dir).to(device).eval(),
        unet=UNet2DConditionModel.from_pretrained(unet_dir).to(device).eval(),
        tokenizer=tokenizer,
        text_encoder=encoder.to(device),
        scheduler_config=scheduler_config,
        max_length=int(info["max_length"]),
        device=device,
    )


def prompt_adherence(
    cfg: Config, pipe: LatentDiffusionPipeline, ingested: Path
) -> tuple[dict[str, float], np.ndarray]:
    """Train the probe on real images, generate for held-out captions, score; also return the samples."""
    e = cfg.eval
    train, train_images = ingested_images(ingested, "train")  # images read a batch at a time
    val, val_images = ingested_images(ingested, "val")
    colors, shapes = sorted(train["color"].dropna().unique()), sorted(train["shape"].dropna().unique())
    c_idx = {c: i for i, c in enumerate(colors)}
    s_idx = {s: i for i, s in enumerate(shapes)}

    # 1. probe on real train images; its accuracy on real val images says how far to trust it
    probe = train_probe(
        train_images,
        train["color"].map(c_idx).to_numpy(),
        train["shape"].map(s_idx).to_numpy(),
        steps=e.probe_steps,
        seed=cfg.seed,
    )
    vc, vs = predict_attributes(probe, val_images)
    probe_acc = float(np.mean((vc == val["color"].map(c_idx)) & (vs == val["shape"].map(s_idx))))

    # 2. generate one sample per held-out caption, judge it with the probe
    prompts = choose_prompts(val, e.prompts_per_class, cfg.seed)
    samples = pipe.generate(
        prompts["caption"].tolist(),
        num_inference_steps=e.inference_steps,
        guidance_scale=e.guidance_scale,
        seed=cfg.seed,
    )
    pc, ps = predict_attributes(probe, samples)
    color_ok = pc == prompts["color"].map(c_idx).to_numpy()
    shape_ok = ps == prompts["shape"].map(s_idx).to_numpy()
    metrics = {
        "prompt_adherence": float(np.mean(color_ok & shape_ok)),
        "color_adherence": float(np.mean(color_ok)),
        "shape_adherence": float(np.mean(shape_ok)),
        "chance_level": 1.0 / (len(colors) * len(shapes)),
        "probe_val_accuracy": probe_acc,
        "eval_prompts": len(prompts),
    }
    return metrics, samples


def run_evaluate(
    cfg: Config,
    ingested: Path,
    vae_dir: Path,
    unet_dir: Path,
    text_dir: Path,
    out: Path,
    tracker: Run | None = None,
) -> dict:
    torch.manual_seed(cfg.seed)
    pipe = load_pipeline(vae_dir, unet_dir, text_dir, cfg)
    manifest = pd.read_parquet(ingested / "manifest.parquet")
    labelled = manifest["color"].notna().any() and manifest["shape"].notna().any()
    if labelled:
        metrics, samples = prompt_adherence(cfg, pipe, ingested)
        print(
            f"prompt_adherence {metrics['prompt_adherence']:.3f} (chance {metrics['chance_level']:.3f}; "
            f"colour {metrics['color_adherence']:.3f}, shape {metrics['shape_adherence']:.3f}, "
            f"probe on real val images {metrics['probe_val_accuracy']:.3f})"
        )
    else:  # user data without colour/shape labels: samples only, no adherence score
        captions = manifest["caption"].drop_duplicates().head(16).tolist()
        samples = pipe.generate(captions, num_inference_steps=cfg.eval.inference_steps,
                                guidance_scale=cfg.eval.guidance_scale, seed=cfg.seed)  # fmt: skip
        metrics = {}
        print("no colour/shape labels in the ingested data: prompt_adherence is not measured")

    out.mkdir(parents=True, exist_ok=True)
    make_grid(samples[:64], ncols=8).save(out / SAMPLES)
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    if tracker:
        tracker.log_metrics(metrics)
        tracker.log_artifact(out / SAMPLES)
        passed = metrics.get("prompt_adherence", -1.0) >= cfg.eval.gate_prompt_adherence
        version = register(cfg, pipe, tracker, promote=passed)
        print(f"registered {cfg.tracking.registered_model} version {version}; champion moved: {passed}")
    return metrics


def register(cfg: Config, pipe: LatentDiffusionPipeline, tracker: Run, promote: bool) -> str:
    """Save the sampler's parts as artifacts of a pyfunc text-to-image model and register it."""
    with tempfile.TemporaryDirectory() as tmp:
        parts = Path(tmp)
        pipe.vae.save_pretrained(parts / "vae")
        pipe.unet.save_pretrained(parts / "unet")
        pipe.text_encoder.save_pretrained(parts / "text_encoder")
        pipe.tokenizer.save_pretrained(parts / "text_encoder")
        save_sampling_config(parts / "sampling.json", pipe.scheduler_config, pipe.max_length)
        artifacts = {name: str(parts / name) for name in ("vae", "unet", "text_encoder", "sampling.json")}
        artifacts["sampling"] = artifacts.pop("sampling.json")
        return tracking.register_text_to_image(
            tracker,
            cfg,
            TextToImageModel(),
            artifacts,
            signature(),
            code_paths=[str(Path(pyfunc.__file__).parent)],  # the `models` package travels with the model
            promote=promote,
        )


def main(cfg: Config, paths: ProjectPaths, tracker: Run) -> dict:
    return run_evaluate(cfg, paths.ingested, paths.vae, paths.unet, paths.text, paths.eval, tracker)
