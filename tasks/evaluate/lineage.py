"""Where a registered model comes from, as tags of its registry version: the git commit of the code, the
ingested manifest's hash, the params' hash, and the md5 of each stage output it was built from.

Those md5s come from dvc.lock only when the lock describes the run: its params are params.yaml's and the
outputs it read are the ones the lock records (a run of params.yaml, `dvc repro`, `dvc exp run`). The run's
dvc.lock is then logged beside the model (LOCK_ARTIFACT): with it, `git checkout` and `dvc checkout` (or
`dvc pull`) bring that exact data and code back, even when the lock was never committed.

A run with other params (`ldmflow run --set ...`, `--params FILE`) leaves dvc.lock alone, so the lock says
nothing about what it read: its version gets lineage of its own (`lineage.source` "run"): the `--set`
overrides that turn params.yaml into its params, the md5s DVC gives the outputs it read as they were (what
`dvc commit` would write, computed without touching the lock), and why the lock does not describe it. Every
run's effective params are logged beside the model (PARAMS_ARTIFACT), a params file to run it again with."""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.common.config import Config, ConfigError, load_config
from tasks.common.keys import content_key, file_sha256
from tasks.common.paths import MANIFEST
from tasks.graph import STAGES

LOCK_ARTIFACT = "lineage/dvc.lock"
PARAMS_ARTIFACT = "lineage/params.yaml"  # the run's params, overrides applied
RECORDED_PARAMS = "params.yaml"  # the params file dvc.lock describes
FROM_LOCK, FROM_RUN = "dvc.lock", "run"  # lineage.source: where a version's input md5s come from


@dataclass(frozen=True)
class Lineage:
    tags: dict[str, str]  # the registered version's lineage.* tags
    from_lock: bool  # dvc.lock describes the run: its params are params.yaml's, its inputs the lock's


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _inputs(stage: str) -> list[str]:
    """The outputs of the stages `stage` reads, in the graph's order."""
    return [out for upstream in STAGES[stage].upstream for out in STAGES[upstream].outs]


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


def current_outputs(root: Path, stage: str) -> dict[str, str]:
    """{output path: md5} of the stages `stage` reads, as DVC hashes them now: the md5s `dvc commit` would
    write to dvc.lock for the stage's deps (a folder's is its `.dir` md5). The lock is not touched; DVC's
    state keeps the hashes of unchanged files, so outputs that a run of params.yaml just recorded are not
    read again."""
    from dvc.repo import Repo

    wanted = _inputs(stage)
    with Repo(str(root)) as repo:
        (declared,) = repo.stage.collect(f"{root.resolve() / 'dvc.yaml'}:{stage}")  # not the cwd's dvc.yaml
        found = {dep.def_path: dep.get_hash().value for dep in declared.deps if dep.def_path in wanted}
    return {path: found[path] for path in wanted if path in found}


def _yaml_value(value: Any) -> str:
    """`value` as `--set` reads it back (one line of YAML: tasks/common/config.py's apply_override)."""
    return yaml.safe_dump(value, default_flow_style=True, width=2**31).strip().removesuffix("...").strip()


def overrides_between(base: dict[str, Any], params: dict[str, Any], prefix: str = "") -> list[str]:
    """The `key.path=value` overrides (`--set`) that turn params `base` into `params`, in params' order."""
    found = []
    for key, value in params.items():
        path, was = f"{prefix}{key}", base.get(key)
        if isinstance(value, dict) and isinstance(was, dict) and set(was) <= set(value):
            found += overrides_between(was, value, f"{path}.")
        elif key not in base or was != value:
            found.append(f"{path}={_yaml_value(value)}")
    return found


def lineage(cfg: Config, root: Path, ingested: Path, stage: str = "evaluate") -> Lineage:
    """The lineage of a model `stage` builds with `cfg` in the project at `root` (see the module's doc)."""
    commit = _git(root, "rev-parse", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    params = cfg.model_dump(mode="json")
    tags = {
        "lineage.git_commit": commit or "none (not a git checkout)",
        "lineage.git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
        "lineage.manifest_sha256": file_sha256(ingested / MANIFEST),
        "lineage.params_hash": content_key(params),  # every section, as used
    }
    why = []  # what dvc.lock does not describe
    try:
        overrides = overrides_between(load_config(root / RECORDED_PARAMS).model_dump(mode="json"), params)
        if overrides:
            why.append(f"params differ from {RECORDED_PARAMS} ({len(overrides)} override(s))")
    except ConfigError as err:
        overrides = None
        why.append(f"no params to compare with: {err}")
    recorded = recorded_outputs(root, stage)
    from dvc.exceptions import DvcException

    current: dict[str, str] = {}
    try:
        if not (root / ".dvc").is_dir():  # (DVC would look for one in the folders above)
            raise DvcException(f"{root} is not a DVC project")
        current = current_outputs(root, stage)
    except DvcException as err:
        why.append(f"inputs not hashed by DVC: {' '.join(str(err).split())}")
    if current and not recorded:
        why.append("dvc.lock records none of its inputs")
    elif recorded:
        why += [f"{path} differs from dvc.lock" for path, md5 in current.items() if recorded.get(path) != md5]
    if not why:
        tags["lineage.source"] = FROM_LOCK
        tags |= {f"lineage.dvc_lock.{path}": md5 for path, md5 in recorded.items()}
        return Lineage(tags, from_lock=True)
    tags |= {"lineage.source": FROM_RUN, "lineage.why": "; ".join(why)}
    if overrides is not None:
        tags["lineage.overrides"] = json.dumps(overrides)
    tags |= {f"lineage.run.{path}": md5 for path, md5 in current.items()}
    return Lineage(tags, from_lock=False)


def lineage_report(name: str, version: str, aliases: list[str], run_id: str, tags: dict[str, str]) -> str:
    """The lineage tags of one registered version, and the commands that bring its code and data back (a
    version from dvc.lock) or run it again (a version from a run the lock does not describe)."""
    lineage = {k.removeprefix("lineage."): v for k, v in sorted(tags.items()) if k.startswith("lineage.")}
    if not lineage:
        return f"{name} version {version} carries no lineage tags (registered before ldmflow recorded them)"
    uri, commit = f"models:/{name}/{version}", lineage.get("git_commit", "unknown")
    from_run = lineage.get("source") == FROM_RUN  # versions registered before `source` are dvc.lock's
    prefix = "run." if from_run else "dvc_lock."
    inputs = {k.removeprefix(prefix): v for k, v in lineage.items() if k.startswith(prefix)}
    overrides = json.loads(lineage["overrides"]) if "overrides" in lineage else None
    lines = [
        f"{name} version {version}" + (f" ({', '.join(aliases)})" if aliases else "") + f", run {run_id}",
        f"  code     git commit {commit}"
        + (" with uncommitted changes" if lineage.get("git_dirty") == "true" else ""),
        f"  data     ingested manifest sha256 {lineage.get('manifest_sha256', 'unknown')}",
        f"  params   hash {lineage.get('params_hash', 'unknown')}",
        *(f"  input    {path}  md5 {md5}" for path, md5 in inputs.items()),
    ]
    if not from_run:
        return "\n".join([
            *lines,
            "To bring this exact code and data back:",
            f"  ldmflow lineage {uri} --dvc-lock > run.dvc.lock   # the run's own dvc.lock",
            f"  git checkout {commit}",
            "  mv run.dvc.lock dvc.lock",
            "  dvc checkout     # from this machine's DVC cache, or: dvc pull (from the DVC remote)",
        ])  # fmt: skip
    if overrides is not None:
        lines.insert(4, f"  params   {RECORDED_PARAMS} with " + (" ".join(overrides) or "no override"))
    rerun = "ldmflow run" + "".join(f" --set {shlex.quote(o)}" for o in overrides or [])
    return "\n".join([
        *lines,
        f"dvc.lock does not describe it ({lineage.get('why', 'a run of other params')}):",
        "the input md5s above are those of the files the run read, as DVC hashes them.",
        "To run it again:",
        f"  git checkout {commit}",
        *([f"  {rerun}"] if overrides is not None else []),
        f"  {'or, ' if overrides is not None else ''}with its exact params: "
        f"ldmflow lineage {uri} --run-params > run.params.yaml && ldmflow run --params run.params.yaml",
    ])  # fmt: skip
