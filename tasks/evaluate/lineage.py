"""Where a registered model comes from, as tags of its registry version: the git commit of the code, the
dvc.lock hashes of the stage outputs it was built from, the ingested manifest's hash and the params'.
With them, `git checkout` and `dvc checkout` (or `dvc pull`) bring that exact data and code back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tasks.common.config import Config
from tasks.common.ingested import MANIFEST
from tasks.common.keys import content_key, file_sha256
from tasks.graph import STAGES


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def recorded_outputs(root: Path, stage: str) -> dict[str, str]:
    """{output path: md5} of the stages `stage` reads, as dvc.lock records them (empty without a lock)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    found = {}
    for upstream in STAGES[stage].upstream:
        for out in stages.get(upstream, {}).get("outs", []):
            found[out["path"]] = out.get("md5", "")
    return found


def lineage_tags(cfg: Config, root: Path, ingested: Path) -> dict[str, str]:
    commit = _git(root, "rev-parse", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    tags = {
        "lineage.git_commit": commit or "none (not a git checkout)",
        "lineage.git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
        "lineage.manifest_sha256": file_sha256(ingested / MANIFEST),
        "lineage.params_hash": content_key(cfg.model_dump(mode="json")),  # every section, as used
    }
    tags |= {f"lineage.dvc_lock.{path}": md5 for path, md5 in recorded_outputs(root, "evaluate").items()}
    return tags
