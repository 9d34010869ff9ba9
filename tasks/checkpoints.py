"""Training checkpoints in object storage: `<prefix>/step-00000500/` holds the checkpoint's files and,
written last, `checkpoint.json` (each file's sha256, plus what the trainer saved about itself). A
checkpoint without `checkpoint.json` is incomplete (the writer was killed) and never resumed from.

Only the newest `total_limit` complete checkpoints are kept; incomplete ones older than the newest
complete one are removed with them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tasks.keys import file_sha256
from tasks.storage import ObjectStore

MARKER = "checkpoint.json"
STEP_DIR = re.compile(r"step-(\d+)/")


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
        marker = json.loads(self.store.get_bytes(f"{where}/{MARKER}"))
        folder.mkdir(parents=True, exist_ok=True)
        for name, sha in marker["files"].items():
            self.store.download(f"{where}/{name}", folder / name)
            if file_sha256(folder / name) != sha:
                raise CorruptCheckpoint(f"{self.store.uri(f'{where}/{name}')}: checksum mismatch")
        return marker
