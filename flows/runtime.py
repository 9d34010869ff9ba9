"""Process environment for the embedded default stack; call `prepare` before importing Prefect."""

from __future__ import annotations

import os
import secrets

from infra.state import private_dir
from tasks.common.paths import ProjectPaths


def prepare(paths: ProjectPaths) -> None:
    """Project-local Prefect home (the temporary server keeps its SQLite there); no telemetry, no hub."""
    private_dir(paths.state)
    paths.prefect_home.mkdir(exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(paths.prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_API_ENABLE_HTTP2", "false")
    if not os.environ.get("PREFECT_API_URL"):
        # the run's server (infra/prefect_server.py) listens on 127.0.0.1 for as long as the run: its API
        # would take flow runs, with any parameters, from anyone on the host. It and this process's
        # clients (and their children, which inherit the environment) share a password made for this run.
        password = f"ldmflow:{secrets.token_urlsafe(24)}"
        os.environ.setdefault("PREFECT_SERVER_API_AUTH_STRING", password)
        os.environ.setdefault("PREFECT_API_AUTH_STRING", os.environ["PREFECT_SERVER_API_AUTH_STRING"])
    # the temporary server needs ~15 s to start on 2 busy cores; Prefect's default patience is 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from local paths or packages, never the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
