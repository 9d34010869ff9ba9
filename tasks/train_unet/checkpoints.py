"""Training checkpoints in object storage, and what a run saves and resumes through them.

`<prefix>/step-00000500/` holds the checkpoint's files and,
written last, `checkpoint.json` (each file's sha256, plus what the trainer saved about itself). A
checkpoint without `checkpoint.json` is incomplete (the writer was killed) and never resumed from.

A checkpoint is read as data: only the file names in FILES are downloaded, tensors load with
`weights_only`, the RNG state is JSON. A checkpoint that fails any check (checksum, names, contents) is
reported and the one before it is tried.

Only the newest `total_limit` complete checkpoints are kept; incomplete ones older than the newest
complete one are removed with them. A run that reaches its last step writes `<prefix>/finished.json`:
its checkpoints are no longer needed (`ldmflow gc` removes them).
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

from accelerate.utils import gather_object
from safetensors import SafetensorError

from infra.storage import ObjectNotFound, ObjectStore, StorageError
from tasks.common.config import Config
from tasks.common.keys import content_key, file_sha256
from tasks.common.paths import FINISHED
from tasks.train_unet.data import TrainingSet
from tasks.train_unet.trainer import UnetTraining, rng_state, set_rng_state

MARKER = "checkpoint.json"
STEP_DIR = re.compile(r"step-(\d+)/")
RNG = "rng.json"
FILES = frozenset({"unet.safetensors", "state.pt", RNG})  # what a checkpoint may hold besides MARKER


class CorruptCheckpoint(RuntimeError):
    pass


@dataclass(frozen=True)
class Checkpoints:
    store: ObjectStore
    prefix: str  # a full key prefix (no trailing slash); one per training run identity
    total_limit: int = 2

    def _dir(self, step: int) -> str:
        return f"{self.prefix}/step-{step:08d}"

    def _listed(self) -> tuple[set[int], set[int]]:
        """(steps with a checkpoint.json, every step with any object)."""
        complete, seen = set(), set()
        for key in self.store.list_keys(self.prefix + "/"):
            m = STEP_DIR.match(key[len(self.prefix) + 1 :])
            if m:
                seen.add(int(m[1]))
                if key.endswith("/" + MARKER):
                    complete.add(int(m[1]))
        return complete, seen

    def steps(self) -> list[int]:
        """The steps of the complete checkpoints, oldest first."""
        return sorted(self._listed()[0])

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, files: dict[str, Path], info: dict) -> str:
        """Upload `files` (name -> local path), then the marker; prune old ones. Returns the marker's URI."""
        where = self._dir(step)
        sums = {}
        for name, path in files.items():
            sums[name] = file_sha256(path)
            self.store.upload(path, f"{where}/{name}")
        marker = {"step": step, "files": sums, **info}
        self.store.put_bytes(f"{where}/{MARKER}", json.dumps(marker, indent=2).encode())
        self._prune()
        return self.store.uri(f"{where}/{MARKER}")

    def finish(self, step: int) -> None:
        """Mark this run complete: its checkpoints are garbage from now on."""
        self.store.put_bytes(f"{self.prefix}/{FINISHED}", json.dumps({"step": step}).encode())

    def _prune(self) -> None:
        complete, seen = self._listed()
        keep = set(sorted(complete)[-self.total_limit :])
        newest = max(complete, default=-1)
        doomed = [s for s in seen if s not in keep and (s in complete or s < newest)]
        for step in doomed:
            for key in self.store.list_keys(self._dir(step) + "/"):
                self.store.delete(key)

    def load(self, step: int, folder: Path) -> dict:
        """Download checkpoint `step` into `folder`, verify each file; returns its checkpoint.json."""
        where = self._dir(step)
        try:
            marker = json.loads(self.store.get_bytes(f"{where}/{MARKER}"))
            files, marked_step = dict(marker["files"]), marker["step"]
        except (ValueError, KeyError, TypeError) as err:
            raise CorruptCheckpoint(f"{self.store.uri(f'{where}/{MARKER}')}: unreadable ({err})") from None
        unknown = sorted(str(name) for name in files if name not in FILES)
        if unknown or marked_step != step:
            why = f"files {unknown} not among {sorted(FILES)}" if unknown else f"it says step {marked_step}"
            raise CorruptCheckpoint(f"{self.store.uri(f'{where}/{MARKER}')}: {why}")
        folder.mkdir(parents=True, exist_ok=True)
        for name, sha in files.items():
            self.store.download(f"{where}/{name}", folder / name)
            if file_sha256(folder / name) != sha:
                raise CorruptCheckpoint(f"{self.store.uri(f'{where}/{name}')}: checksum mismatch")
        return marker


# What a training run saves into its checkpoints and resumes from them.
RUN_CONTROL = {"checkpoint_every", "checkpoints_total_limit", "resume", "log_every", "log_samples",
               "prefetch_shards", "shard_cache_mb", "batch_size", "gradient_accumulation",
               "validation"}  # fmt: skip


def run_identity(cfg: Config, data: TrainingSet, global_batch: int, start_weights: str | None) -> str:
    """What a checkpoint must match to be resumed from: everything that decides the weights step by step.
    The split of the global batch over processes and micro-batches does not
    (models/diffusion/sample_draws.py).

    Pretrained weights (`unet.pretrained`, or the champion `unet.init: champion` downloads) count by what
    they are, `start_weights` (their fingerprint; None for weights built from params), not by the folder
    they were read from: each process of a distributed run downloads the champion into a folder of its
    own, and each machine has paths of its own."""
    unet = {k: v for k, v in cfg.unet.model_dump(mode="json").items() if k not in RUN_CONTROL}
    unet["pretrained"] = start_weights
    return content_key({"seed": cfg.seed, "unet": unet, "global_batch": global_batch}, data.identity)


@dataclass
class Position:
    step: int = 0  # optimisation steps done
    epoch: int = 0  # where the next batch comes from in the data plan
    batch: int = 0


def save_checkpoint(
    training: UnetTraining, checkpoints: Checkpoints, position: Position, folder: Path, info: dict
) -> None:
    acc = training.accelerator
    rngs = gather_object([rng_state()])  # one per process
    if acc.is_main_process:
        files = training.save_state(folder)
        (folder / RNG).write_text(json.dumps(rngs))
        files[RNG] = folder / RNG
        where = checkpoints.save(
            position.step, files, {**info, "epoch": position.epoch, "batch": position.batch}
        )
        print(f"train_unet: checkpoint at step {position.step}: {where}")
    acc.wait_for_everyone()


def resume(training: UnetTraining, checkpoints: Checkpoints, step: int, folder: Path) -> Position:
    acc = training.accelerator
    marker = checkpoints.load(step, folder)
    weights, state = training.read_state(folder)
    rngs = json.loads((folder / RNG).read_text())
    position = Position(int(marker["step"]), int(marker["epoch"]), int(marker["batch"]))
    training.load_state(weights, state)
    if len(rngs) == acc.num_processes:
        set_rng_state(rngs[acc.process_index])
    print(f"train_unet: resumed from step {step} ({checkpoints.store.uri(checkpoints.prefix)})")
    return position


def resume_latest(training: UnetTraining, checkpoints: Checkpoints, folder: Path) -> Position:
    """Resume from the newest checkpoint that passes every check; an unusable one (corrupt, tampered
    with, cut short) is reported and the one before it tried. No usable checkpoint: step 0."""
    for step in reversed(checkpoints.steps()):
        try:
            return resume(training, checkpoints, step, folder / f"step-{step:08d}")
        except StorageError:  # the store failed, not the checkpoint
            raise
        except (CorruptCheckpoint, ObjectNotFound, SafetensorError, pickle.UnpicklingError, RuntimeError,
                ValueError, KeyError, TypeError) as err:  # fmt: skip
            print(f"train_unet: checkpoint at step {step} is unusable, trying an older one: {err}")
    return Position()
