"""What a training run reports (`Report`): the train and val curves, the samples log, the tracker's metrics,
the progress bar, speed (steps/s, samples/s, ETA), peak memory and, at the end, the stage's metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from infra.progress import progress
from infra.tracking import Run
from models.sampler.device import PeakMemory
from tasks.common.config import UnetConfig
from tasks.common.curves import Curve, lines_before
from tasks.common.paths import SAMPLES_LOG, TRAIN_CURVE, VAL_CURVE
from tasks.train_unet.latent_stream import Batch
from tasks.train_unet.setup import Setup


class Speed:
    """Steps and samples per second since the first step this process made, and the time left."""

    def __init__(self, global_batch: int, total_steps: int) -> None:
        self.global_batch, self.total_steps = global_batch, total_steps
        self.start, self.steps = time.perf_counter(), 0

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def tick(self) -> None:
        """One more step done."""
        self.steps += 1

    def now(self, steps_done: int) -> dict[str, float]:
        per_second = self.steps / self.seconds
        return {
            "steps_per_second": per_second,
            "samples_per_second": per_second * self.global_batch,
            "eta_seconds": (self.total_steps - steps_done) / per_second,
        }


class SamplesLog:
    """The per-step log of losses and sample ids. A resumed run keeps what steps before its first wrote and
    writes the rest again (a killed run may have left later steps and half a line)."""

    def __init__(self, path: Path, from_step: int) -> None:
        kept = lines_before(path, from_step, lambda line: json.loads(line)["step"])
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file: TextIO = path.open("w")
        self.file.writelines(kept)

    def write(self, step: int, epoch: int, loss: float, samples: list[str]) -> None:
        self.file.write(json.dumps({"step": step, "epoch": epoch, "loss": loss, "samples": samples}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class Report:
    """A run's bookkeeping. The loop calls `validate` before its first step, `progress` for its steps,
    `step` and `log` in each, `finish` after its last and `log_summary` once the model is saved. Only the
    main process passes a `staging` folder (curves, samples log) and a tracker; the others just count."""

    def __init__(self, u: UnetConfig, setup: Setup, staging: Path | None, tracker: Run | None) -> None:
        self.u, self.setup, self.staging, self.tracker = u, setup, staging, tracker
        self.from_step = setup.position.step
        self.parameters = sum(p.numel() for p in setup.training.model.parameters())
        if tracker:
            tracker.log_metrics({"unet_parameters": self.parameters, "train_samples": len(setup.data.items),
                                 "global_batch": setup.global_batch, "processes": self.processes,
                                 "resumed_from_step": self.from_step})  # fmt: skip
        self.curves = {
            "train": Curve(staging / TRAIN_CURVE, ["train_loss", "lr"], self.from_step),
            "val": Curve(staging / VAL_CURVE, ["val_loss"], self.from_step),
        } if staging else {}  # fmt: skip
        self.val_loss: dict[int, float] = {}  # step -> held-out loss
        self.loss = float("nan")  # the last step's

    @property
    def processes(self) -> int:
        return self.setup.accelerator.num_processes

    def validate(self, step: int, grid: bool) -> None:
        """Validate the weights after `step` steps, if there are held-out samples (main process): the loss
        to the tracker and the val curve, with `grid` the image grid to the tracker."""
        if self.setup.validation:
            found = self.setup.validation.report(self.setup.training, step, grid, self.tracker)
            self.val_loss[step] = found["val_loss"]
            if self.curves:
                self.curves["val"].write(step, val_loss=found["val_loss"])

    def progress(self, steps: range) -> tqdm:
        """The loop's steps under a progress bar; the clock and the peak memory start here."""
        sampled = self.staging and self.u.log_samples
        self.samples_log = SamplesLog(self.staging / SAMPLES_LOG, self.from_step) if sampled else None
        self.sample_ids = self.setup.data.items["sample_id"].to_numpy()
        self.memory = PeakMemory(self.setup.accelerator.device)
        self.speed = Speed(self.setup.global_batch, self.u.steps)
        self.memory.reset()
        self.memory_start = self.memory.current_mb()
        is_main = self.setup.accelerator.is_main_process
        self.bar = progress(steps, desc="train_unet", unit="step", disable=not is_main)
        return self.bar

    def step(self, step: int, batch: Batch, loss: float) -> None:
        """Step `step` made on `batch`: counted, and its loss and samples logged."""
        self.loss = loss
        self.speed.tick()
        if self.samples_log:
            self.samples_log.write(step, batch.epoch, loss, self.sample_ids[batch.rows].tolist())

    def log(self, step: int) -> None:
        """Every `log_every` steps and at the last one (the curve ends at the final loss): the loss, LR and
        speed to the progress bar, the train curve and the tracker."""
        if step % self.u.log_every and step != self.u.steps - 1:
            return
        now = self.speed.now(step + 1)
        self.bar.set_postfix(loss=f"{self.loss:.4f}", samples_s=f"{now['samples_per_second']:.0f}")
        lr = self.setup.training.lr_schedule.get_last_lr()[0]
        if self.curves:
            self.curves["train"].write(step, train_loss=self.loss, lr=lr)
        if self.tracker:
            self.tracker.log_metrics({"train_loss": self.loss, "lr": lr, **now}, step=step)

    def finish(self) -> dict:
        """After the last step: the clock stops, the final validation (with the grid), the stage's metrics."""
        u, speed, memory_start = self.u, self.speed, self.memory_start
        seconds, memory_peak = speed.seconds, self.memory.peak_mb()
        if self.samples_log:
            self.samples_log.close()
        self.validate(u.steps, True)
        for curve in self.curves.values():
            curve.close()
        self.metrics = {
            # at the first step this run made (0 unless resumed)
            "val_loss_start": self.val_loss.get(self.from_step),
            "val_loss": self.val_loss.get(u.steps),
            "final_train_loss": self.loss,
            "steps": u.steps,
            "resumed_from_step": u.steps - speed.steps,
            "train_seconds": round(seconds, 2),
            "steps_per_second": round(speed.steps / seconds, 3) if speed.steps else None,
            "global_batch": self.setup.global_batch,
            "processes": self.processes,
            "parameters": self.parameters,
            # CUDA: allocated memory; CPU: the process's resident set (validation included)
            "memory_at_start_mb": round(memory_start, 1) if memory_start else None,
            "peak_memory_mb": round(memory_peak, 1) if memory_peak else None,
        }
        return self.metrics

    def log_summary(self) -> None:
        """Speed and peak memory to the tracker, for a run that made steps."""
        if self.tracker and self.speed.steps:
            summary = ("train_seconds", "steps_per_second", "peak_memory_mb")
            self.tracker.log_metrics({k: self.metrics[k] for k in summary if self.metrics[k] is not None})
