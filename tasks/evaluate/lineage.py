"""Where a registered model comes from, as tags of its registry version: the git commit of the code, the
dvc.lock hashes of the stage outputs it was built from, the ingested manifest's hash and the params'.
The run's dvc.lock itself is logged beside the model (LOCK_ARTIFACT): with it, `git checkout` and
`dvc checkout` (or `dvc pull`) bring that exact data and code back, even when the lock was never
committed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tasks.common.config import Config
from tasks.common.keys import content_key, file_sha256
from tasks.common.paths import MANIFEST
from tasks.graph import STAGES

LOCK_ARTIFACT = "lineage/dvc.lock"


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


def lineage_report(name: str, version: str, aliases: list[str], run_id: str, tags: dict[str, str]) -> str:
    """The lineage tags of one registered version, and the commands that bring its code and data back."""
    lineage = {k.removeprefix("lineage."): v for k, v in sorted(tags.items()) if k.startswith("lineage.")}
    if not lineage:
        return f"{name} version {version} carries no lineage tags (registered before ldmflow recorded them)"
    commit = lineage.get("git_commit", "unknown")
    outputs = {k.removeprefix("dvc_lock."): v for k, v in lineage.items() if k.startswith("dvc_lock.")}
    lines = [
        f"{name} version {version}" + (f" ({', '.join(aliases)})" if aliases else "") + f", run {run_id}",
        f"  code     git commit {commit}"
        + (" with uncommitted changes" if lineage.get("git_dirty") == "true" else ""),
        f"  data     ingested manifest sha256 {lineage.get('manifest_sha256', 'unknown')}",
        f"  params   hash {lineage.get('params_hash', 'unknown')}",
        *(f"  input    {path}  md5 {md5}" for path, md5 in outputs.items()),
        "To bring this exact code and data back:",
        f"  ldmflow lineage models:/{name}/{version} --dvc-lock > run.dvc.lock   # the run's own dvc.lock",
        f"  git checkout {commit}",
        "  mv run.dvc.lock dvc.lock",
        "  dvc checkout     # from this machine's DVC cache, or: dvc pull (from the DVC remote)",
    ]
    return "\n".join(lines)
