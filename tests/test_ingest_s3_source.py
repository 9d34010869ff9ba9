"""Every convention read from an s3:// prefix on the real test S3 server ingests exactly as from disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from user_data import write_every_convention

from tasks.common.config import config_from_dict
from tasks.common.ingested import read_ingested
from tasks.ingest.stage import run_ingest


def upload_tree(store, local: Path, prefix: str) -> None:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        store.put_bytes(f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())


@pytest.fixture
def s3_credentials(monkeypatch, s3_server):
    """Data sources use boto3's default credential chain: here, the test server's keys in the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_REGION", s3_server.region)


def ingest(path: str, out: Path, source: str, endpoint_url=None, **extra):
    data = {"source": source, "path": path, "resolution": 16, "endpoint_url": endpoint_url, **extra}
    report = run_ingest(config_from_dict({"data": data}), out)
    return report, *read_ingested(out)


def test_every_convention_under_an_s3_prefix_matches_the_local_ingest(
    tmp_path, object_store, s3_server, s3_credentials
):
    conventions = write_every_convention(tmp_path / "src")
    upload_tree(object_store, tmp_path / "src", "datasets/mine")
    _, local_manifest, local_images = ingest(
        str(tmp_path / "src" / "jsonl"), tmp_path / "local", "imagefolder"
    )
    cols = ["sample_id", "caption", "split", "sha256", "orig_width", "orig_height"]
    for folder, (source, extra) in conventions.items():
        uri = f"s3://{object_store.bucket}/datasets/mine/{folder}"
        report, manifest, images = ingest(uri, tmp_path / folder, source, s3_server.endpoint_url, **extra)
        assert (report["total"], report["accepted"], report["rejected"]) == (6, 6, 0), folder
        assert manifest[cols].equals(local_manifest[cols]), folder
        assert np.array_equal(images, local_images), folder


def test_s3_source_reports_missing_and_escaping_names_and_reads_one_object(
    tmp_path, object_store, s3_server, s3_credentials
):
    write_every_convention(tmp_path / "src")
    jsonl = tmp_path / "src" / "jsonl" / "metadata.jsonl"
    jsonl.write_text(
        jsonl.read_text()
        + '{"file_name": "gone.png", "text": "listed, not uploaded"}\n'
        + '{"file_name": "../pq/a.parquet", "text": "outside the prefix"}\n'
    )
    upload_tree(object_store, tmp_path / "src", "d")
    report, manifest, _ = ingest(
        f"s3://{object_store.bucket}/d/jsonl", tmp_path / "a", "imagefolder", s3_server.endpoint_url
    )
    assert report["accepted"] == 6 and report["by_reason"] == {"missing_file": 1, "path_outside_root": 1}

    one = f"s3://{object_store.bucket}/d/pq/a.parquet"  # a single object as the source
    report, manifest, _ = ingest(
        one, tmp_path / "b", "parquet", s3_server.endpoint_url, caption_column="caption"
    )
    assert report["accepted"] == 6 and list(manifest["sample_id"])[:2] == ["img0.png", "img1.png"]

    with pytest.raises(FileNotFoundError, match="no objects under"):
        ingest(f"s3://{object_store.bucket}/nothing/here", tmp_path / "c", "sidecar", s3_server.endpoint_url)
