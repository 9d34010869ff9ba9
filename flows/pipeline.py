"""The pipeline flow: the six stage flows in order, each skipped when DVC says it is up to date; and the
same flow as `ldmflow serve` deploys it, its project and params fixed at deploy time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Flow, flow

from flows import dvc_state
from flows.notify import notify_failure, on_pipeline_failure
from flows.run_lock import project_run
from flows.runners import task_runner
from flows.stage_flows import STAGE_FLOWS
from infra import tracking
from infra.s3.embedded import serving_unless_configured
from tasks.common.config import Config, load_config
from tasks.common.paths import ProjectPaths
from tasks.graph import ORDER, STAGES, with_upstream
from tasks.ingest.listing import write_listing

DEFAULT_PARAMS = "params.yaml"


@flow(name="ldmflow-pipeline", log_prints=True, on_failure=[on_pipeline_failure])
def pipeline(
    stages: list[str] | None = None,
    params_file: str = DEFAULT_PARAMS,
    overrides: list[str] | None = None,
    force: bool = False,
    root: str = ".",
) -> dict[str, str]:
    """Run the named stages (and what they depend on), or all; returns {stage: "ran" | "up to date"}.
    One run at a time per project (see flows/run_lock.py); the embedded S3 server runs for the run's
    length when no endpoint is configured."""
    return run_pipeline(stages, params_file, overrides, force, root)


def served_pipeline(root: str, params_file: str, overrides: list[str]) -> Flow[..., dict[str, str]]:
    """The pipeline flow as `ldmflow serve` deploys it. Whoever can reach the Prefect API can start a run
    and choose its parameters, so the project, its params file and the overrides are fixed here, at
    deploy time, in the flow object itself (Prefect's runner cloudpickles this object into each run's
    process): a run chooses only `stages` and `force`, which pick what runs of this project as configured.
    A run given any other parameter fails before the flow body runs (Prefect checks the parameters
    against the signature)."""
    fixed: dict[str, Any] = {"root": root, "params_file": params_file, "overrides": list(overrides)}

    def on_failure(_flow: Any, flow_run: Any, state: Any) -> None:
        notify_failure(flow_run, state, **fixed)

    @flow(name="ldmflow-pipeline", log_prints=True, on_failure=[on_failure])
    def served(stages: list[str] | None = None, force: bool = False) -> dict[str, str]:
        """Run the named stages (and what they depend on), or all, of the project served."""
        return run_pipeline(stages=stages, force=force, **fixed)

    return served


def run_pipeline(
    stages: list[str] | None, params_file: str, overrides: list[str] | None, force: bool, root: str
) -> dict[str, str]:
    """The body of both flows: see `pipeline`."""
    paths = ProjectPaths.at(root)
    overrides = list(overrides or [])
    cfg = load_config(paths.root / params_file, overrides)
    wait = cfg.orchestration.on_overlap == "wait"
    run_alone = project_run(paths, "ldmflow pipeline run", wait)
    with run_alone, serving_unless_configured(cfg.storage, paths.s3_state):
        return _run_stages(cfg, paths, stages, params_file, overrides, force)


def _run_stages(
    cfg: Config, paths: ProjectPaths, stages: list[str] | None, params_file: str, overrides: list[str],
    force: bool,
) -> dict[str, str]:  # fmt: skip
    # dvc.lock describes params.yaml; a run with other params must not claim to be that state.
    recorded = Path(params_file) == Path(DEFAULT_PARAMS) and not overrides
    if not recorded:
        print("params differ from params.yaml: the named stages run as asked and dvc.lock is left untouched")
    selected = with_upstream(stages or ORDER) if recorded else [n for n in ORDER if n in (stages or ORDER)]
    scanning = [name for name in selected if STAGES[name].scans_source]
    if recorded and scanning and write_listing(cfg.data, paths.source_listing):
        print(f"the source changed ({paths.source_listing.relative_to(paths.root)}): {scanning[0]} will run")
    outcome: dict[str, str] = {}
    with tracking.run(cfg, paths, "pipeline", tags={"ldmflow.stages": ",".join(stages or ORDER)}) as parent:
        for name in selected:
            if recorded and not force and dvc_state.is_up_to_date(paths.root, name):
                print(f"{name}: up to date, skipped")
                outcome[name] = "up to date"
                continue
            STAGE_FLOWS[name].with_options(task_runner=task_runner(cfg.orchestration))(
                cfg, str(paths.root), parent.run_id
            )
            if recorded:
                dvc_state.record(paths.root, name)
            outcome[name] = "ran"
        parent.log_dict(outcome, "stages.json")
        if recorded and cfg.orchestration.dvc_push:
            url = dvc_state.ensure_remote(paths.root, cfg.storage, paths.s3_state)
            sent = dvc_state.push(paths.root)
            print(f"dvc push: {sent} file(s) sent to {url} (DVC remote {dvc_state.REMOTE!r})")
    return outcome
