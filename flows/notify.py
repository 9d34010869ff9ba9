"""What a failed pipeline run tells people: the pipeline flow's `on_failure` hook. The error and the run's
links (Prefect UI, MLflow) go to the console, to .ldmflow/failures.jsonl, and, when
`orchestration.notify_url` (or, for a webhook URL that is itself a secret, the LDMFLOW_NOTIFY_URL
environment variable) names a webhook, to it as a JSON POST."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from typing import Any

from infra.state import private_dir
from tasks.common.config import ConfigError, load_config
from tasks.common.paths import ProjectPaths

NOTIFY_TIMEOUT_S = 10
NOTIFY_URL_VARIABLE = "LDMFLOW_NOTIFY_URL"


def failure_report(flow_run: Any, state: Any, tracking_uri: str | None) -> dict[str, Any]:
    from prefect.utilities.urls import url_for

    return {
        "event": "ldmflow pipeline run failed",
        "flow_run": flow_run.name,
        "flow_run_id": str(flow_run.id),
        "deployment_id": str(flow_run.deployment_id) if flow_run.deployment_id else None,
        "error": state.message,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "links": {"prefect": url_for(flow_run), "mlflow_tracking": tracking_uri},
    }


def post_json(url: str, payload: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=NOTIFY_TIMEOUT_S) as response:
        response.read()


def on_pipeline_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect flow hook of the pipeline flow run from the command line: the project as the run's
    parameters name it. Never raises: a failed notification must not hide the run's own error."""
    params = flow_run.parameters or {}
    root, params_file = params.get("root", "."), params.get("params_file", "params.yaml")
    notify_failure(flow_run, state, root, params_file, params.get("overrides") or [])


def notify_failure(flow_run: Any, state: Any, root: str, params_file: str, overrides: list[str]) -> None:
    """Report a failed run of the pipeline of the project at `root`, configured by `params_file` and
    `overrides`. Never raises (see `on_pipeline_failure`)."""
    paths = ProjectPaths.at(root)
    try:
        cfg = load_config(paths.root / params_file, overrides)
        url, tracking_uri = cfg.orchestration.notify_url, cfg.tracking.uri
    except (ConfigError, OSError):  # the run may have failed on its config: report without it
        url, tracking_uri = None, None
    url = url or os.environ.get(NOTIFY_URL_VARIABLE)  # a webhook URL that is itself a secret
    report = failure_report(flow_run, state, tracking_uri)
    print(f"ldmflow: run {report['flow_run']} failed: {report['error']} ({report['links']['prefect']})",
          file=sys.stderr)  # fmt: skip
    try:
        private_dir(paths.state)
        with open(paths.state / "failures.jsonl", "a") as log:
            log.write(json.dumps(report) + "\n")
        if url:
            post_json(url, report)
    except Exception as err:  # noqa: BLE001 - reported, never raised (see docstring)
        print(f"ldmflow: could not deliver the failure notice: {err}", file=sys.stderr)
