"""train_unet stage: a text-conditioned diffusers U-Net trained on the S3 latent and text caches.

Writes `artifacts/unet/` (the EMA weights as a diffusers model dir, the training noise scheduler under
`scheduler/`, metrics.json, the curves) into a staging folder swapped in whole at the end
(tasks/common/atomic_dir.py): a killed run leaves the previous model in place, and a run resumed from a
checkpoint carries on in the staging folder its killed attempt left. The loop's parts: setup.py, data.py,
latent_stream.py, trainer.py (the step), checkpoints.py, validation.py, reporting.py (all bookkeeping).
"""

from __future__ import annotations

import json
from pathlib import Path

from infra.storage import ObjectStore, object_store_from_config
from infra.tracking import Run, champion_part
from tasks.common.atomic_dir import staging_dir, swap_in
from tasks.common.config import Config
from tasks.common.paths import METRICS, ProjectPaths
from tasks.train_unet.checkpoints import Position, save_checkpoint
from tasks.train_unet.data import micro_batches
from tasks.train_unet.latent_stream import LatentStream
from tasks.train_unet.reporting import Report
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
    setup = set_up(cfg, latents_dir, text_dir, store, local_shards, local_checkpoints, vae_dir, tracker)
    acc, data, training, position = setup.accelerator, setup.data, setup.training, setup.position
    is_main, rank, processes = acc.is_main_process, acc.process_index, acc.num_processes
    staging = staging_dir(out, keep=position.step > 0) if is_main else None
    report = Report(u, setup, staging, tracker if is_main else None)
    report.validate(position.step, grid=False)  # where this run starts from
    # global batches streamed from the latent shards, epoch after epoch; each process keeps its own copies
    # of the shards: one's eviction must never delete a file another is reading
    stream = LatentStream(store, data.items, setup.global_batch, cfg.seed, local_shards / f"rank{rank}",
                          max_bytes=u.shard_cache_mb * 2**20, window=u.shuffle_window,
                          prefetch=u.prefetch_shards)  # fmt: skip
    batches = stream.batches(position.epoch, position.batch)

    # 2. the loop: batch -> step -> report -> checkpoint -> validate -> log
    for step in report.progress(range(position.step, u.steps)):
        batch, cached = next(batches)  # one latent shape per batch
        loss = training.step(micro_batches(cfg, data, step, batch.rows, cached, rank, processes))
        position = Position(step + 1, batch.epoch, batch.index + 1)
        report.step(step, batch, loss)
        # neither after the last step: the final validation (grid included) and the model follow the loop
        # at once, and a finished run's checkpoints are garbage (`ldmflow gc`)
        if u.checkpoint_every and position.step % u.checkpoint_every == 0 and position.step < u.steps:
            save_checkpoint(training, setup.checkpoints, position, setup.local / "save",
                            {"global_batch": setup.global_batch})  # fmt: skip
        if u.validation.every and position.step % u.validation.every == 0 and position.step < u.steps:
            report.validate(position.step, grid=True)
        report.log(step)  # every log_every steps and at the last: loss, LR and speed
    metrics = report.finish()  # the clock stops; the final validation; the metrics

    # 3. save the EMA weights as the model, plus the noise schedule it was trained with
    if is_main:
        training.save_model(staging)
        (staging / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
        swap_in(staging, out)
        setup.checkpoints.finish(u.steps)
        report.log_summary()
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
