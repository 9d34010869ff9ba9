"""train_unet stage: a text-conditioned diffusers U-Net trained on the S3 latent and text caches.

The loop: global batches stream from the latent shards (tasks/loader.py), each process takes its
micro-batches (tasks/training_set.py), UnetTraining steps (tasks/unet_training.py); checkpoints go to
object storage (tasks/checkpoints.py) and `resume: latest` picks the newest one of this very run up;
validation (tasks/validation.py) every so many steps. Writes `artifacts/unet/` (the EMA weights as a
diffusers model dir, the training noise scheduler under `scheduler/`) and `artifacts/unet/metrics.json`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from accelerate.utils import gather_object

from models.device import PeakMemory
from tasks.checkpoints import Checkpoints
from tasks.config import Config
from tasks.keys import content_key
from tasks.loader import LatentStream
from tasks.progress import progress
from tasks.storage import ObjectStore
from tasks.tracking import Run
from tasks.training_set import TrainingSet, load_training_set, micro_batches
from tasks.unet_training import UnetTraining, make_accelerator, rng_state, set_rng_state
from tasks.validation import Validation

METRICS = "metrics.json"
SAMPLES_LOG = "samples.jsonl"  # unet.log_samples: each step's loss and sample ids


RUN_CONTROL = {"checkpoint_every", "checkpoints_total_limit", "resume", "log_every", "log_samples",
               "prefetch_shards", "shard_cache_mb", "batch_size", "gradient_accumulation",
               "validation"}  # fmt: skip


def run_identity(cfg: Config, data: TrainingSet, global_batch: int) -> str:
    """What a checkpoint must match to be resumed from: everything that decides the weights step by step.
    The split of the global batch over processes and micro-batches does not (tasks/sample_draws.py)."""
    unet = {k: v for k, v in cfg.unet.model_dump(mode="json").items() if k not in RUN_CONTROL}
    return content_key({"seed": cfg.seed, "unet": unet, "global_batch": global_batch}, data.identity)


@dataclass
class Position:
    step: int = 0  # optimisation steps done
    epoch: int = 0  # where the next batch comes from in the data plan
    batch: int = 0


def open_samples_log(path: Path, from_step: int) -> TextIO:
    """The per-step log of losses and sample ids, keeping what steps before `from_step` wrote (a resumed
    run writes the rest again; a killed run may have left later steps and half a line)."""
    kept = []
    if from_step and path.is_file():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] < from_step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, KeyError):
                continue
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.open("w")
    log.writelines(kept)
    return log


def save_checkpoint(
    training: UnetTraining, checkpoints: Checkpoints, position: Position, folder: Path, info: dict
) -> None:
    acc = training.accelerator
    rngs = gather_object([rng_state()])  # one per process
    if acc.is_main_process:
        files = training.save_state(folder)
        torch.save(rngs, folder / "rng.pt")
        files["rng.pt"] = folder / "rng.pt"
        where = checkpoints.save(
            position.step, files, {**info, "epoch": position.epoch, "batch": position.batch}
        )
        print(f"train_unet: checkpoint at step {position.step}: {where}")
    acc.wait_for_everyone()


def resume(training: UnetTraining, checkpoints: Checkpoints, step: int, folder: Path) -> Position:
    acc = training.accelerator
    marker = checkpoints.load(step, folder)
    training.load_state(folder)
    rngs = torch.load(folder / "rng.pt", weights_only=False)
    if len(rngs) == acc.num_processes:
        set_rng_state(rngs[acc.process_index])
    print(f"train_unet: resumed from step {step} ({checkpoints.store.uri(checkpoints.prefix)})")
    return Position(marker["step"], marker["epoch"], marker["batch"])


def run_train_unet(
    cfg: Config,
    latents_dir: Path,
    text_dir: Path,
    out: Path,
    store: ObjectStore,
    tracker: Run | None = None,
    shard_cache: Path | None = None,
    vae_dir: Path | None = None,
) -> dict:
    """Train the U-Net on the caches; latent shards stream through `shard_cache` (a local folder).
    `vae_dir` decodes the validation grid (none without it).

    Under torchrun / `accelerate launch` every process runs this; only the main one logs and writes.
    """
    u = cfg.unet
    acc = make_accelerator(u)
    main, rank, processes = acc.is_main_process, acc.process_index, acc.num_processes
    tracker = tracker if main else None
    torch.manual_seed(cfg.seed)
    data = load_training_set(latents_dir, text_dir, store)
    n = len(data.items)
    shapes = [tuple(shape) for shape in data.latent_shapes.values()]  # (C, h, w) of each bucket
    factor = 2 ** (len(u.block_out_channels) - 1)
    for _, lh, lw in shapes:
        if lh % factor or lw % factor:
            raise ValueError(
                f"latents of {lw}x{lh} do not divide by the U-Net's downsampling {factor}: make "
                f"data.buckets.step a multiple of the VAE's factor x {factor}"
            )
    # the model's default sample size: the square bucket when there is one, else the largest
    c, h, _ = max(shapes, key=lambda s: (s[1] == s[2], s[1] * s[2]))

    # 1. model, EMA, noise schedule, optimiser; the last checkpoint of this very run, if any
    training = UnetTraining.build(u, acc, h, c, data.hidden.shape[-1])
    global_batch = u.batch_size * processes * u.gradient_accumulation
    identity = run_identity(cfg, data, global_batch)
    checkpoints = Checkpoints(store, store.key("checkpoints", identity), u.checkpoints_total_limit)
    # local copies of the checkpoints this process writes or reads, beside the shard cache
    local = (shard_cache or out.parent / ".shard-cache").parent / "checkpoints" / identity / f"rank{rank}"
    position = Position()
    latest = checkpoints.latest() if u.resume == "latest" else None
    if latest is not None:
        position = resume(training, checkpoints, latest, local / "resume")
    params = sum(p.numel() for p in training.model.parameters())
    if tracker:
        tracker.log_metrics({"unet_parameters": params, "train_samples": n, "global_batch": global_batch,
                             "processes": processes, "resumed_from_step": position.step})  # fmt: skip

    validation = None
    if main and not data.held_out.empty:
        vae = vae_dir if tracker else None  # the grid goes to MLflow only
        validation = Validation.load(u.validation, data, store, u.num_train_timesteps, vae, cfg.seed)

    def validate(step: int, grid: bool) -> dict[str, float]:
        """Held-out loss (online weights) and, with `grid`, the prompts drawn with the EMA weights."""
        found = validation.loss(training.model, training.noise_scheduler)
        if tracker:
            tracker.log_metrics(found, step=step)
            if grid and validation.vae is not None:
                training.ema.store(training.model.parameters())
                training.ema.copy_to(training.model.parameters())
                image = validation.grid(training.model, dict(training.noise_scheduler.config))
                training.ema.restore(training.model.parameters())
                tracker.log_image(image, f"validation/step-{step:07d}.png")
        return found

    val_start = validate(position.step, grid=False) if validation else {}

    # 2. training loop: global batches streamed from the latent shards, epoch after epoch
    stream = LatentStream(
        store, data.items, global_batch, cfg.seed, shard_cache or out.parent / ".shard-cache",
        max_bytes=u.shard_cache_mb * 2**20, window=u.shuffle_window, prefetch=u.prefetch_shards,
    )  # fmt: skip
    batches = stream.batches(position.epoch, position.batch)
    samples_log = open_samples_log(out / SAMPLES_LOG, position.step) if main and u.log_samples else None
    sample_ids = data.items["sample_id"].to_numpy()
    bar = progress(range(position.step, u.steps), desc="train_unet", unit="step", disable=not main)
    memory = PeakMemory(acc.device)
    memory.reset()
    memory_start = memory.current_mb()
    start, done_here, loss = time.perf_counter(), 0, float("nan")
    for step in bar:
        batch, cached = next(batches)  # one latent shape per batch
        parts = micro_batches(cfg, data, step, batch.rows, cached, rank, processes)
        loss = training.step(parts)
        position = Position(step + 1, batch.epoch, batch.index + 1)
        done_here += 1
        if samples_log:
            record = {
                "step": step,
                "epoch": batch.epoch,
                "loss": loss,
                "samples": sample_ids[batch.rows].tolist(),
            }
            samples_log.write(json.dumps(record) + "\n")
            samples_log.flush()
        if u.checkpoint_every and position.step % u.checkpoint_every == 0 and position.step < u.steps:
            save_checkpoint(training, checkpoints, position, local / "save", {"global_batch": global_batch})
        every = u.validation.every
        if validation and every and position.step % every == 0 and position.step < u.steps:
            validate(position.step, grid=True)
        if step % u.log_every == 0 or step == u.steps - 1:
            seconds = time.perf_counter() - start
            speed = {
                "steps_per_second": done_here / seconds,
                "samples_per_second": done_here * global_batch / seconds,
            }
            speed["eta_seconds"] = (u.steps - position.step) / speed["steps_per_second"]
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{speed['samples_per_second']:.0f}")
            if tracker:
                lr = training.lr_schedule.get_last_lr()[0]
                tracker.log_metrics({"train_loss": loss, "lr": lr, **speed}, step=step)
    seconds = time.perf_counter() - start
    memory_peak = memory.peak_mb()
    if samples_log:
        samples_log.close()

    val_end = validate(u.steps, grid=True) if validation else {}

    # 3. save the EMA weights as the model, plus the noise schedule it was trained with
    metrics = {
        "val_loss_start": val_start.get("val_loss"),  # at the first step this run made (0 unless resumed)
        "val_loss": val_end.get("val_loss"),
        "final_train_loss": loss,
        "steps": u.steps,
        "resumed_from_step": u.steps - done_here,
        "train_seconds": round(seconds, 2),
        "steps_per_second": round(done_here / seconds, 3) if done_here else None,
        "global_batch": global_batch,
        "processes": processes,
        "parameters": params,
        # CUDA: allocated memory; CPU: the process's resident set (validation included)
        "memory_at_start_mb": round(memory_start, 1) if memory_start else None,
        "peak_memory_mb": round(memory_peak, 1) if memory_peak else None,
    }
    if main:
        training.ema.copy_to(training.model.parameters())
        out.mkdir(parents=True, exist_ok=True)
        training.model.to("cpu").save_pretrained(out, safe_serialization=True)
        training.noise_scheduler.save_pretrained(out / "scheduler")
        (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
        if tracker and done_here:
            summary = ("train_seconds", "steps_per_second", "peak_memory_mb")
            tracker.log_metrics({k: metrics[k] for k in summary if metrics[k] is not None})
    acc.wait_for_everyone()
    return metrics
