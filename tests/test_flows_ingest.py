"""The ingest stage flow on Prefect's test server: its report and its rejected items as table artifacts."""

from __future__ import annotations

import json

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
