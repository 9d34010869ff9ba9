"""A run whose process was killed stays RUNNING in MLflow forever unless someone closes it: the next run of
the project marks KILLED the runs it made on this host whose process is gone, and no other run."""

from __future__ import annotations

import subprocess
import sys

from mlflow.entities import RunStatus

from infra import tracking
from tasks.common.config import config_from_dict
from tasks.common.paths import ProjectPaths


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_left_running_by_a_dead_process_are_marked_killed(tmp_path):
    cfg = config_from_dict({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    paths = ProjectPaths.at(tmp_path / "project")
    client, experiment = tracking.connect(cfg, paths)
    owner = {tracking.PROJECT_TAG: str(paths.root), tracking.HOST_TAG: tracking.socket.gethostname()}
    killed = client.create_run(experiment, tags={**owner, tracking.PID_TAG: str(dead_pid())}).info.run_id
    alive = client.create_run(experiment, tags={**owner, tracking.PID_TAG: str(tracking.os.getpid())})
    elsewhere = client.create_run(experiment, tags={**owner, tracking.HOST_TAG: "another-host",
                                                    tracking.PID_TAG: str(dead_pid())})  # fmt: skip
    other_project = client.create_run(experiment, tags={**owner, tracking.PROJECT_TAG: "/some/other/project",
                                                        tracking.PID_TAG: str(dead_pid())})  # fmt: skip

    with tracking.run(cfg, paths, "ingest") as new:
        pass

    def status(run_id: str) -> str:
        return client.get_run(run_id).info.status

    assert status(killed) == RunStatus.to_string(RunStatus.KILLED)
    for kept in (alive, elsewhere, other_project):
        assert status(kept.info.run_id) == "RUNNING"
    assert status(new.run_id) == "FINISHED"
