"""One run at a time per project: a pipeline run (by hand, scheduled, or a `dvc repro` stage) holds an
exclusive lock on .ldmflow/run.lock while it writes the project's outputs. A second run waits for it, or
fails at once with a message naming the holder (`orchestration.on_overlap`).

An OS file lock (flock), so a killed run never leaves a stale lock: the kernel drops it with the process."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.state import private_dir
from tasks.common.paths import ProjectPaths


class ProjectBusy(RuntimeError):
    """Another run of this project holds the lock, and this one was asked not to wait."""


def lock_path(paths: ProjectPaths) -> Path:
    return paths.state / "run.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"{info.get('what', 'a run')} (pid {info.get('pid', '?')}, started {started})"


@contextmanager
def project_run(paths: ProjectPaths, what: str, wait: bool) -> Iterator[None]:
    """Hold the project's run lock for the block; `what` says who holds it (shown to a second run)."""
    path = lock_path(paths)
    private_dir(path.parent)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if not wait:
                raise ProjectBusy(
                    f"{paths.root} is busy: {holder} is running in it (lock {path}); this run does not "
                    "wait because orchestration.on_overlap is 'fail'"
                ) from None
            print(f"waiting for {holder} to finish (lock {path}; orchestration.on_overlap is 'wait')")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "started": time.time(), "what": what}))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
