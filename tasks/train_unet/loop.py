"""train_unet stage: a text-conditioned diffusers U-Net trained on the S3 latent and text caches.

The loop below; its parts beside it: setup.py (accelerator, data, model, resume), data.py (the caches,
and how a global batch becomes this process's micro-batches), latent_stream.py (latent shards streamed
from object storage), trainer.py (the U-Net, its optimisation step, saving), checkpoints.py, validation.py
and reporting.py. Writes `artifacts/unet/` (the EMA weights as a diffusers model dir, the training noise
scheduler under `scheduler/`) and `artifacts/unet/metrics.json`.

The output is written into a staging folder beside it (tasks/common/atomic_dir.py) and swapped in whole at
the end: a killed run leaves the previous model in place. A run that resumes from a checkpoint carries on
in the staging folder its killed attempt left, so its curves keep the steps before the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from infra.progress import progress
from infra.storage import ObjectStore, object_store_from_config
from infra.tracking import Run, champion_part
from models.device import PeakMemory
from tasks.common.atomic_dir import staging_dir, swap_in
from tasks.common.config import Config
from tasks.common.curves import Curve
from tasks.common.paths import METRICS, SAMPLES_LOG, TRAIN_CURVE, VAL_CURVE, ProjectPaths
from tasks.train_unet.checkpoints import Position, save_checkpoint
from tasks.train_unet.data import micro_batches
from tasks.train_unet.latent_stream import LatentStream
from tasks.train_unet.reporting import SamplesLog, Speed
from tasks.train_unet.setup import set_up


def run_train_unet(
    cfg: Config,
    latents_dir: Path,
    text_dir: Path,
    out: Path,
    store: ObjectStore,
    tracker: Run | None = None,
    local_shards: Path | None = None,
    vae_dir: Path | None = None,
    local_checkpoints: Path | None = None,
) -> dict:
    """Train the U-Net on the caches; latent shards stream through `local_shards` (a local folder), and
    checkpoints are written to `local_checkpoints` before they go to the object store.
    `vae_dir` decodes the validation grid (none without it).

    Under torchrun / `accelerate launch` every process runs this; only the main one logs and writes.
    """
    u, local_shards = cfg.unet, local_shards or out.parent / ".shard-cache"
    local_checkpoints = local_checkpoints or out.parent / ".checkpoints"
    # 1. setup: the data, the model and its optimiser, this run's checkpoint if any, validation
    run = set_up(cfg, latents_dir, text_dir, store, local_shards, local_checkpoints, vae_dir, tracker)
    acc, data, training, validation = run.accelerator, run.data, run.training, run.validation
    position = run.position
    main, rank, processes = acc.is_main_process, acc.process_index, acc.num_processes
    tracker = tracker if main else None
    staging = staging_dir(out, keep=position.step > 0) if main else out
    params = sum(p.numel() for p in training.model.parameters())
    if tracker:
        tracker.log_metrics({"unet_parameters": params, "train_samples": len(data.items),
                             "global_batch": run.global_batch, "processes": processes,
                             "resumed_from_step": position.step})  # fmt: skip
    curves = {
        "train": Curve(staging / TRAIN_CURVE, ["train_loss", "lr"], position.step),
        "val": Curve(staging / VAL_CURVE, ["val_loss"], position.step),
    } if main else {}  # fmt: skip

    def validate(step: int, grid: bool) -> dict[str, float]:
        found = validation.report(training, step, grid, tracker)
        if curves:
            curves["val"].write(step, val_loss=found["val_loss"])
        return found

    val_start = validate(position.step, False) if validation else {}

    # 2. the loop: global batches streamed from the latent shards, epoch after epoch
    # each process keeps its own copies: one's eviction must never delete a file another is reading
    stream = LatentStream(store, data.items, run.global_batch, cfg.seed, local_shards / f"rank{rank}",
                          max_bytes=u.shard_cache_mb * 2**20, window=u.shuffle_window,
                          prefetch=u.prefetch_shards)  # fmt: skip
    batches = stream.batches(position.epoch, position.batch)
    samples_log = SamplesLog(staging / SAMPLES_LOG, position.step) if main and u.log_samples else None
    sample_ids = data.items["sample_id"].to_numpy()
    memory, speed, loss = PeakMemory(acc.device), Speed(run.global_batch, u.steps), float("nan")
    memory.reset()
    memory_start = memory.current_mb()
    bar = progress(range(position.step, u.steps), desc="train_unet", unit="step", disable=not main)
    for step in bar:
        batch, cached = next(batches)  # one latent shape per batch
        loss = training.step(micro_batches(cfg, data, step, batch.rows, cached, rank, processes))
        position = Position(step + 1, batch.epoch, batch.index + 1)
        speed.tick()
        if samples_log:
            samples_log.write(step, batch.epoch, loss, sample_ids[batch.rows].tolist())
        if u.checkpoint_every and position.step % u.checkpoint_every == 0 and position.step < u.steps:
            save_checkpoint(training, run.checkpoints, position, run.local / "save",
                            {"global_batch": run.global_batch})  # fmt: skip
        every = u.validation.every
        if validation and every and position.step % every == 0 and position.step < u.steps:
            validate(position.step, True)
        if step % u.log_every == 0 or step == u.steps - 1:
            now = speed.now(position.step)
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{now['samples_per_second']:.0f}")
            lr = training.lr_schedule.get_last_lr()[0]
            if curves:
                curves["train"].write(step, train_loss=loss, lr=lr)
            if tracker:
                tracker.log_metrics({"train_loss": loss, "lr": lr, **now}, step=step)
    seconds, memory_peak = speed.seconds, memory.peak_mb()
    if samples_log:
        samples_log.close()
    val_end = validate(u.steps, True) if validation else {}
    for curve in curves.values():
        curve.close()

    # 3. save the EMA weights as the model, plus the noise schedule it was trained with
    metrics = {
        "val_loss_start": val_start.get("val_loss"),  # at the first step this run made (0 unless resumed)
        "val_loss": val_end.get("val_loss"),
        "final_train_loss": loss,
        "steps": u.steps,
        "resumed_from_step": u.steps - speed.steps,
        "train_seconds": round(seconds, 2),
        "steps_per_second": round(speed.steps / seconds, 3) if speed.steps else None,
        "global_batch": run.global_batch,
        "processes": processes,
        "parameters": params,
        # CUDA: allocated memory; CPU: the process's resident set (validation included)
        "memory_at_start_mb": round(memory_start, 1) if memory_start else None,
        "peak_memory_mb": round(memory_peak, 1) if memory_peak else None,
    }
    if main:
        training.save_model(staging)
        (staging / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
        swap_in(staging, out)
        run.checkpoints.finish(u.steps)
        if tracker and speed.steps:
            summary = ("train_seconds", "steps_per_second", "peak_memory_mb")
            tracker.log_metrics({k: metrics[k] for k in summary if metrics[k] is not None})
    acc.wait_for_everyone()
    return metrics


def start_from_champion(cfg: Config, paths: ProjectPaths, tracker: Run | None) -> Config:
    """`unet.init: champion`: the config with the registry champion's U-Net as `pretrained` (its EMA
    weights, trained on for `unet.steps`); unchanged, training from scratch, while there is none."""
    found = champion_part(cfg, paths, "unet")
    where = f"champion version {found[0]}" if found else "scratch (no champion yet)"
    print(f"train_unet: unet.init is champion: starting from {where}")
    if tracker:
        tracker.set_tags({"ldmflow.unet_init": where})
    if not found:
        return cfg
    return cfg.model_copy(update={"unet": cfg.unet.model_copy(update={"pretrained": str(found[1])})})


def main(cfg: Config, paths: ProjectPaths, tracker: Run | None) -> dict:
    store = object_store_from_config(cfg.storage, paths.s3_state)
    if cfg.unet.init == "champion":
        cfg = start_from_champion(cfg, paths, tracker)
    return run_train_unet(
        cfg, paths.latents, paths.text, paths.unet, store, tracker, paths.shard_cache, paths.vae,
        paths.local_checkpoints,
    )  # fmt: skip
