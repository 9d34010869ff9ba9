"""Everything a training run needs before its first step: the accelerator, the data, the model with its
optimiser and EMA, this run's checkpoints (resumed from when there is one), and validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from infra.storage import ObjectStore
from infra.tracking import Run
from models.fingerprint import module_fingerprint
from tasks.common.config import Config
from tasks.train_unet.checkpoints import Checkpoints, Position, resume_latest, run_identity
from tasks.train_unet.data import TrainingSet, load_training_set
from tasks.train_unet.trainer import UnetTraining, make_accelerator
from tasks.train_unet.validation import Validation


@dataclass
class Setup:
    accelerator: Accelerator
    data: TrainingSet
    training: UnetTraining
    global_batch: int  # batch_size x processes x gradient_accumulation
    checkpoints: Checkpoints  # this very run's, in object storage
    local: Path  # local copies of the checkpoints this process writes or reads
    position: Position  # where training starts: step 0, or the checkpoint resumed from
    validation: Validation | None  # main process only, when there are held-out samples


def default_latent_shape(latent_shapes: list[tuple[int, ...]]) -> tuple[int, int, int]:
    """(C, h, w) the model samples by default: the square bucket when there is one, else the largest."""
    return max(latent_shapes, key=lambda s: (s[1] == s[2], s[1] * s[2]))


def check_latents_fit(model: torch.nn.Module, latent_shapes: list[tuple[int, ...]]) -> None:
    """Every latent size must divide by the U-Net's downsampling (the built or pretrained model's own)."""
    factor = 2 ** (len(model.config.block_out_channels) - 1)
    for _, lh, lw in latent_shapes:
        if lh % factor or lw % factor:
            raise ValueError(
                f"latents of {lw}x{lh} do not divide by the U-Net's downsampling {factor}: make "
                f"data.buckets.step a multiple of the VAE's factor x {factor}"
            )


def check_processes_agree(identity: str, step: int) -> None:
    """Every process must train the same run from the same step: one that resumed another run, or none,
    would go through its steps out of step with the others (collectives that never match, or other
    weights). Fails on every process at once, naming what each one found."""
    found = gather_object([(identity, step)])  # one per process, by rank
    if len(set(found)) > 1:
        each = ", ".join(
            f"process {rank}: run {run[:12]} at step {at}" for rank, (run, at) in enumerate(found)
        )
        raise RuntimeError(f"train_unet: the processes disagree on the run or its resume step ({each})")


def set_up(
    cfg: Config,
    latents_dir: Path,
    text_dir: Path,
    store: ObjectStore,
    local_shards: Path,
    local_checkpoints: Path,
    vae_dir: Path | None,
    tracker: Run | None,
) -> Setup:
    u = cfg.unet
    acc = make_accelerator(u)
    torch.manual_seed(cfg.seed)

    # 1. data: the training samples (streamed later), the caption embeddings, the held-out samples
    data = load_training_set(latents_dir, text_dir, store, local_shards / "text")
    shapes = [tuple(shape) for shape in data.latent_shapes.values()]  # (C, h, w) of each bucket

    # 2. model, EMA, noise schedule, optimiser
    training = UnetTraining.build(u, acc, default_latent_shape(shapes), data.captions.hidden_size)
    check_latents_fit(training.model, shapes)
    global_batch = u.batch_size * acc.num_processes * u.gradient_accumulation

    # 3. the last checkpoint of this very run, if any
    start_weights = module_fingerprint(training.model) if u.pretrained else None  # before any resume
    identity = run_identity(cfg, data, global_batch, start_weights)
    checkpoints = Checkpoints(store, store.key("checkpoints", identity), u.checkpoints_total_limit)
    local = local_checkpoints / identity / f"rank{acc.process_index}"
    position = resume_latest(training, checkpoints, local / "resume") if u.resume == "latest" else Position()
    check_processes_agree(identity, position.step)

    # 4. validation (the grid goes to MLflow only, so it needs the VAE only with a tracker)
    validation = None
    if acc.is_main_process and not data.held_out.empty:
        vae = vae_dir if tracker else None
        validation = Validation.load(u.validation, data, store, u.num_train_timesteps, vae, cfg.seed)
    return Setup(acc, data, training, global_batch, checkpoints, local, position, validation)
