"""train_vae stage: fit a diffusers AutoencoderKL on the ingested train split, from scratch or from a
pretrained one (`vae.pretrained`: Stable Diffusion's, say), fine-tuning all of it, its decoder only, or
nothing (`vae.finetune`); or keep the registry champion's (`vae.init: champion`).

Images are read from the ingested shards a batch at a time, so memory does not grow with the data.

Writes `artifacts/vae/` (the diffusers model dir, whose config holds the latent statistics estimated
on the train split: per-channel `latents_mean`/`latents_std`, or SD's global `scaling_factor` = 1/std;
see models/sampler/latents.py) and `artifacts/vae/metrics.json` (validation PSNR and SSIM, and the per-channel
mean and std of the held-out images' normalised latents, among others).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from infra.progress import progress
from infra.tracking import Run, champion_part
from models.autoencoder.discriminator import AdversarialLoss
from models.autoencoder.lpips import LPIPS
from models.autoencoder.vae import build_vae, decoder_parameters, psnr, ssim, vae_loss
from models.pretrained import load_pretrained_vae
from models.sampler.device import autocast, pick_device
from models.sampler.images import make_grid, to_model_space, to_uint8
from models.sampler.latents import set_normalisation, to_diffusion_space
from tasks.common.atomic_dir import replaced_dir
from tasks.common.config import Config
from tasks.common.curves import Curve
from tasks.common.ingested import StoredImages, image_groups
from tasks.common.paths import METRICS, TRAIN_CURVE, ProjectPaths

CURVE_COLUMNS = ["train_loss", "recon_l1", "recon_mse", "kl"]
NORMALISATION_KEYS = ("scaling_factor", "latents_mean", "latents_std")
# The learning rate's linear warm-up: Adam's first updates, before its second-moment estimate has settled,
# are its largest relative to the fresh weights. A fixed count, not a share of `vae.steps`, so a longer run
# starts exactly as a shorter one does (the same early trajectory for the same seed).
WARMUP_STEPS = 50


def batches(images: StoredImages, limit: int, batch_size: int) -> Iterator[torch.Tensor]:
    """The first `limit` images in model space, `batch_size` at a time."""
    for start in range(0, min(len(images), limit), batch_size):
        yield to_model_space(images[start : min(start + batch_size, limit)])


def sample_batch(groups: list[StoredImages], batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """A random batch (with replacement) from one group of equal-sized images, in model space; a group is
    picked with probability proportional to its size, so every image is equally likely across steps."""
    group = groups[0]
    if len(groups) > 1:
        sizes = torch.tensor([len(g) for g in groups], dtype=torch.float)
        group = groups[int(torch.multinomial(sizes, 1, generator=gen))]
    return to_model_space(group[torch.randint(len(group), (batch_size,), generator=gen).numpy()])


def _adversary(cfg: Config, device: torch.device) -> tuple[AdversarialLoss, torch.optim.Optimizer]:
    """The PatchGAN of `vae.adversarial` and its optimiser: Adam with beta1 0.5 at the autoencoder's learning
    rate, as in the LDM paper. It is initialised from a seed of its own, so the VAE's random draws are the
    same with it as without it."""
    a = cfg.vae.adversarial
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        adversary = AdversarialLoss(a.weight, a.channels, a.layers).to(device)
    return adversary, torch.optim.Adam(adversary.parameters(), lr=cfg.vae.lr, betas=(0.5, 0.9))


def fit(
    vae: AutoencoderKL, params: list[torch.nn.Parameter], cfg: Config, train: list[StoredImages],
    device: torch.device, out: Path, tracker: Run | None, perceptual: LPIPS | None = None,
) -> dict[str, float]:  # fmt: skip
    """Train `params` of `vae` for `vae.steps` on random batches (with replacement), against a PatchGAN from
    step `vae.adversarial.start` on when `vae.adversarial.weight` is set, with LPIPS in the reconstruction
    loss when `perceptual` is given; the loss curve goes to `out`. Returns the last step's losses (the
    discriminator's too once it played) and the seconds taken."""
    v, a = cfg.vae, cfg.vae.adversarial
    opt = torch.optim.AdamW(params, lr=v.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP_STEPS))
    adversary, opt_d = _adversary(cfg, device) if a.weight > 0 else (None, None)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    curve = Curve(out / TRAIN_CURVE, CURVE_COLUMNS)
    vae.train()
    bar = progress(range(v.steps), desc="train_vae", unit="step")
    for step in bar:
        batch = sample_batch(train, v.batch_size, gen).to(device)
        playing = adversary is not None and step >= a.start
        with autocast(device):
            loss, reconstruction, parts, fakes = vae_loss(
                vae, batch, v.kl_weight, mse_weight=v.mse_weight, perceptual=perceptual,
                perceptual_weight=v.perceptual_weight,
            )  # fmt: skip
            if playing:
                term, game = adversary.autoencoder_term(reconstruction, fakes, vae.decoder.conv_out.weight)
                loss, parts = loss + term, parts | game
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if playing:
            with autocast(device):
                d_loss, game = adversary.discriminator_loss(batch, fakes)
            opt_d.zero_grad(set_to_none=True)  # (the autoencoder's backward reached the discriminator too)
            d_loss.backward()
            opt_d.step()
            parts |= game
        if step % v.log_every == 0 or step == v.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            curve.write(step, train_loss=loss.item(), **{k: parts[k] for k in CURVE_COLUMNS[1:]})
            if tracker:
                tracker.log_metrics({"train_loss": loss.item(), **parts}, step=step)
    curve.close()
    vae.eval()
    last = ("perceptual", "g_loss", "adaptive_weight", "d_loss")  # the parts that are on
    played = {f"final_{k}": parts[k] for k in last if k in parts}
    return {"final_train_loss": loss.item(), **played, "train_seconds": round(time.perf_counter() - start, 2)}


def _estimated_normalisation(cfg: Config, vae: AutoencoderKL, train: list[StoredImages], device) -> dict:
    """The latent statistics of the train split, into the model's own config."""
    with torch.no_grad():
        stats_batches = (b.to(device) for group in train for b in batches(group, 2048, 256))
        return set_normalisation(vae, stats_batches, cfg.vae.latent_norm)


def _configured_normalisation(vae: AutoencoderKL) -> dict:
    return {k: vae.config.get(k) for k in NORMALISATION_KEYS}


def train_new_vae(
    cfg: Config, train: list[StoredImages], device: torch.device, out: Path, tracker: Run | None,
    perceptual: LPIPS | None = None,
) -> tuple[AutoencoderKL, dict]:  # fmt: skip
    """A VAE trained from scratch on `train`, its latent statistics set from the data; and what to report."""
    v = cfg.vae
    vae = build_vae(
        block_out_channels=v.block_out_channels,
        layers_per_block=v.layers_per_block,
        norm_num_groups=v.norm_num_groups,
        latent_channels=v.latent_channels,
    ).to(device)
    if tracker:
        tracker.log_metrics({"vae_parameters": sum(p.numel() for p in vae.parameters())})
    fitted = fit(vae, list(vae.parameters()), cfg, train, device, out, tracker, perceptual)
    norm = _estimated_normalisation(cfg, vae, train, device)
    return vae, {**norm, **fitted, "steps": v.steps}


def pretrained_vae(
    cfg: Config, train: list[StoredImages], device: torch.device, out: Path, tracker: Run | None,
    perceptual: LPIPS | None = None,
) -> tuple[AutoencoderKL, dict]:  # fmt: skip
    """`vae.pretrained`, fine-tuned as `vae.finetune` says (all of it, its decoder, or none), its latent
    statistics from its config or (`vae.rescale`) estimated on `train`; and what to report."""
    v = cfg.vae
    vae = load_pretrained_vae(v.pretrained).to(device).eval()
    facts: dict = {"pretrained": v.pretrained, "finetune": v.finetune, "steps": 0, "train_seconds": 0.0}
    if v.finetune == "none":
        Curve(out / TRAIN_CURVE, CURVE_COLUMNS).close()  # no training: an empty curve
    else:
        params = list(vae.parameters()) if v.finetune == "all" else decoder_parameters(vae)
        vae.requires_grad_(False)
        for param in params:
            param.requires_grad_(True)
        facts |= fit(vae, params, cfg, train, device, out, tracker, perceptual) | {"steps": v.steps}
    if tracker:
        tracker.log_metrics(
            {"vae_parameters_trained": sum(p.numel() for p in vae.parameters() if p.requires_grad)}
        )
    norm = _estimated_normalisation(cfg, vae, train, device) if v.rescale else _configured_normalisation(vae)
    return vae, {**norm, **facts}


def kept_vae(folder: Path, version: str, device: torch.device, out: Path) -> tuple[AutoencoderKL, dict]:
    """`vae.init: champion`: the champion's VAE as it is, latent statistics included, so its latents (and
    every cached one) keep their meaning for the champion's U-Net."""
    vae = AutoencoderKL.from_pretrained(folder).to(device).eval()
    Curve(out / TRAIN_CURVE, CURVE_COLUMNS).close()  # no training: an empty curve
    return vae, {**_configured_normalisation(vae), "kept_champion_version": int(version), "steps": 0,
                 "train_seconds": 0.0}  # fmt: skip


@torch.no_grad()
def validate(
    vae: AutoencoderKL, val: list[torch.Tensor], device: torch.device, perceptual: LPIPS | None = None
) -> tuple[dict, list[torch.Tensor]]:
    """PSNR and SSIM (and LPIPS, given `perceptual`) of the held-out images' reconstructions (from the
    posterior mean), and the per-channel mean and std of their normalised latents (about 0 and 1 when the
    statistics fit this data)."""
    recon, channels = [], []
    for group in val:
        parts = []
        for batch in group.split(256):
            z = vae.encode(batch.to(device)).latent_dist.mode()
            parts.append(vae.decode(z).sample.float().cpu())
            channels.append(to_diffusion_space(z.float(), vae.config).cpu().transpose(0, 1).flatten(1))
        recon.append(torch.cat(parts))
    per_channel = torch.cat(channels, dim=1).double()  # [C, every position of every image]
    metrics = {
        "val_psnr": psnr(torch.cat([r.flatten() for r in recon]), torch.cat([g.flatten() for g in val])),
        "val_ssim": sum(ssim(r, g) * len(g) for r, g in zip(recon, val, strict=True)) / sum(map(len, val)),
        "val_latent_mean": per_channel.mean(1).tolist(),
        "val_latent_std": per_channel.std(1).tolist(),
    }
    if perceptual is not None:
        distances = []
        for rebuilt, real in zip(recon, val, strict=True):
            for r, g in zip(rebuilt.split(64), real.split(64), strict=True):
                distances.append(perceptual(r.to(device), g.to(device)).cpu())
        metrics["val_lpips"] = float(torch.cat(distances).mean())
    return metrics, recon


def run_train_vae(
    cfg: Config, ingested: Path, out: Path, tracker: Run | None = None, keep: tuple[str, Path] | None = None
) -> dict:
    """Train the VAE (or, given `keep` = (champion version, its VAE folder), keep that one), validate it on
    the held-out images, save it to `out`; return the metrics."""
    torch.manual_seed(cfg.seed)
    device = pick_device()
    # one group per image size: a single one, or one per aspect-ratio bucket; read a batch at a time
    train = [images for _, images in image_groups(ingested, "train")]
    try:
        val = [to_model_space(images[:512]) for _, images in image_groups(ingested, "val")]
    except ValueError:  # no val split (val_fraction 0): report on a train subset rather than nothing
        val = [to_model_space(group[:256]) for group in train]
    perceptual = LPIPS.from_folder(cfg.vae.lpips_weights).to(device) if cfg.vae.lpips_weights else None
    with replaced_dir(out) as staging:  # the previous VAE stays until this one is complete
        if keep:
            vae, facts = kept_vae(keep[1], keep[0], device, staging)
        elif cfg.vae.pretrained:
            vae, facts = pretrained_vae(cfg, train, device, staging, tracker, perceptual)
        else:
            vae, facts = train_new_vae(cfg, train, device, staging, tracker, perceptual)
        facts["perceptual_loss"] = f"LPIPS from {cfg.vae.lpips_weights}" if perceptual else "off"
        measured, recon = validate(vae, val, device, perceptual)
        norm = {k: facts.pop(k) for k in NORMALISATION_KEYS}
        metrics = {**measured, **{k: v for k, v in norm.items() if v is not None}, **facts}
        vae.to("cpu").save_pretrained(staging, safe_serialization=True)
        (staging / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    if tracker:
        tracker.log_metrics(
            {k: metrics[k] for k in ("val_psnr", "val_ssim", "scaling_factor", "train_seconds")}
        )
        tracker.log_dict(norm, "latent_normalisation.json")
        # originals, then reconstructions, of the largest group
        largest = max(range(len(val)), key=lambda i: len(val[i]))
        pairs = np.concatenate([to_uint8(val[largest][:16]), to_uint8(recon[largest][:16])])
        tracker.log_image(make_grid(pairs, ncols=16), "reconstructions.png")
    return metrics


def main(cfg: Config, paths: ProjectPaths, tracker: Run) -> dict:
    keep = None
    if cfg.vae.init == "champion":
        keep = champion_part(cfg, paths, "vae")
        where = f"champion version {keep[0]}, kept as it is" if keep else "scratch (no champion yet)"
        print(f"train_vae: vae.init is champion: {where}")
        tracker.set_tags({"ldmflow.vae_init": where})
    return run_train_vae(cfg, paths.ingested, paths.vae, tracker, keep)
