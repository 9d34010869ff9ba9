"""What a training run reports as it goes: speed (steps/s, samples/s, ETA) and, with `unet.log_samples`,
each step's loss and sample ids in `artifacts/unet/samples.jsonl`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TextIO

from tasks.common.curves import lines_before


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
