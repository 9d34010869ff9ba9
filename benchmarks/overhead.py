"""Orchestration overhead of the default pipeline: the wall time of `ldmflow run`, from the command to
its exit, against the time its six stages spend in their own work (each stage's `stage_work_seconds`,
logged by flows/stage_run.py). Outside the stages' work: Python and Prefect start-up, Prefect's
temporary server, the embedded S3 server, DVC's status checks and lock records, MLflow run bookkeeping and
the DVC push. Goal: at most 15% of the default pipeline.

A fresh project of the repo's params.yaml (the embedded default: its own S3 server and MLflow DB), run
twice: the first run does all the work; the second finds every stage up to date, so it is all overhead.
The servers share the machine's cores with the stages, as they do in `make run`.

    .venv/bin/python benchmarks/overhead.py [--set unet.steps=300 ...]   # --set: a cheaper pipeline
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from pinned_servers import on_cores

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the stage code, and the tests' project scaffolding
BIN = Path(sys.executable).parent
GOAL = 0.15


def make_project(project: Path, overrides: list[str]) -> None:
    """A project of the repo's stage code, dvc.yaml and params.yaml (with `overrides`), under git and DVC
    (as the tests make theirs)."""
    from projects import init_project

    from tasks.common.config import apply_override

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for assignment in overrides:
        apply_override(params, assignment)
    project.mkdir(parents=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    init_project(project, dict(os.environ))


def timed_run(project: Path, env: dict[str, str] | None = None, cores: set[int] | None = None) -> float:
    """Seconds of `ldmflow run` in `project` (with `env`, on `cores` when given)."""
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "ldmflow"), "run"], cwd=project, capture_output=True, text=True, env=env,
                          preexec_fn=on_cores(cores) if cores else None)  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(
            f"ldmflow run exited {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    return seconds


def stage_work(project: Path) -> dict[str, float]:
    """{stage: seconds of its own work} of each stage's newest run (the tracking DB under .ldmflow/)."""
    from mlflow.tracking import MlflowClient

    from flows.stage_run import WORK_METRIC
    from tasks.graph import ORDER

    uri = f"sqlite:///{project / '.ldmflow' / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ldmflow").experiment_id
    work = {}
    for run in client.search_runs([experiment], order_by=["attributes.start_time DESC"]):
        stage = run.data.tags.get("ldmflow.stage")
        if stage and WORK_METRIC in run.data.metrics:
            work.setdefault(stage, run.data.metrics[WORK_METRIC])
    return {stage: work[stage] for stage in sorted(work, key=ORDER.index)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        make_project(project, args.overrides)
        full = timed_run(project)
        again = timed_run(project)
        work = stage_work(project)
    inside = sum(work.values())
    outside = full - inside
    for stage, seconds in work.items():
        print(f"  {stage:<14} {seconds:7.1f} s of work")
    which = "default pipeline" + (f" with {' '.join(args.overrides)}" if args.overrides else "")
    print(f"{which}: {full:.1f} s wall, {inside:.1f} s in the stages' work, {outside:.1f} s outside it")
    print(f"R overhead {outside / full:.1%} of the run ({'within' if outside / full <= GOAL else 'over'} "
          f"the goal of {GOAL:.0%}); a second run, every stage up to date: {again:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
