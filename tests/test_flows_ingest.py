"""The ingest stage flow on Prefect's test server: its report and its rejected items as table artifacts."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tasks.common.config import config_from_dict


def test_ingest_flow_publishes_the_report_and_the_rejected_items(tmp_path, monkeypatch, prefect_server):
    from prefect.artifacts import Artifact

    from flows.stage_flows import STAGE_FLOWS

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (80 * i, 10, 10)).save(src / f"ok{i}.png")
        (src / f"ok{i}.txt").write_text(f"picture {i}")
    (src / "html.png").write_text("<html>502 Bad Gateway</html>")
    (src / "html.txt").write_text("a failed download")
    (src / "nocaption.png").write_bytes((src / "ok0.png").read_bytes())
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) stays in this test's folder
    cfg = config_from_dict(
        {"data": {"source": "sidecar", "path": str(src), "resolution": 16},
         "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    )  # fmt: skip

    report = STAGE_FLOWS["ingest"](cfg, str(tmp_path / "project"))
    assert report["accepted"] == 3 and report["by_reason"] == {"empty_caption": 1, "not_an_image": 1}

    counts = json.loads(Artifact.get("ingest-report").data)
    assert {"outcome": "rejected: not_an_image", "count": 1} in counts
    rejects = json.loads(Artifact.get("ingest-rejects").data)
    assert sorted((r["item"], r["reason"]) for r in rejects) == [
        ("html.png", "not_an_image"), ("nocaption.png", "empty_caption"),
    ]  # fmt: skip


def test_ingest_decodes_on_the_flows_task_runner_and_writes_the_same_bytes(
    tmp_path, monkeypatch, prefect_server
):
    """Threads and Dask worker processes (the flow's task runner) write what plain threads (`dvc repro`)
    write, and a re-ingest under the flow reuses what the first one decoded."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter

    from flows.runners import task_runner
    from flows.stage_flows import STAGE_FLOWS
    from tasks.ingest.stage import ITEMS_PER_JOB, run_ingest

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2 * ITEMS_PER_JOB + 7):  # three decode jobs
        Image.fromarray(rng.integers(0, 255, (20 + i % 7, 24, 3), np.uint8)).save(src / f"img{i:03d}.png")
        (src / f"img{i:03d}.txt").write_text(f"noise {i}")
    (src / "bad.png").write_text("<html>not an image</html>")
    (src / "bad.txt").write_text("a broken download")
    monkeypatch.chdir(tmp_path)

    def cfg(runner: str):
        return config_from_dict(
            {"data": {"source": "sidecar", "path": str(src), "resolution": 16, "shard_size": 20},
             "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
             "orchestration": {"task_runner": runner, "workers": 2}}
        )  # fmt: skip

    def decode_task_runs() -> int:
        with get_client(sync_client=True) as client:
            return len(client.read_task_runs(task_run_filter=TaskRunFilter(name={"like_": "decode_task"})))

    decode_runs_before = decode_task_runs()
    local = run_ingest(cfg("threads"), tmp_path / "local")  # no flow: data.workers threads
    assert local["accepted"] == 2 * ITEMS_PER_JOB + 7 and local["by_reason"] == {"not_an_image": 1}
    for runner in ("threads", "dask"):
        project = tmp_path / runner
        flow = STAGE_FLOWS["ingest"].with_options(task_runner=task_runner(cfg(runner).orchestration))
        report = flow(cfg(runner), str(project))
        assert report == local, runner
        written = project / "data" / "ingested"
        assert {p.name for p in written.iterdir()} == {p.name for p in (tmp_path / "local").iterdir()}
        for path in written.iterdir():
            assert path.read_bytes() == (tmp_path / "local" / path.name).read_bytes(), (runner, path.name)
    assert decode_task_runs() - decode_runs_before == 2 * 3  # each flow ran its three decode jobs as tasks
    again = flow(cfg("dask"), str(tmp_path / "dask"))
    assert again["reused"] == again["accepted"] and again["decoded"] == 0
