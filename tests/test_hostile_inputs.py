"""User data built to hurt: oversized files and captions, malformed or hostile metadata, damaged shards.
Each bad item is rejected with a reason and the good ones beside it are kept; nothing aborts the stage
except a source whose index itself cannot be trusted (named in the error)."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from user_data import make_dataset, png_bytes, write_tar

from tasks.common.config import config_from_dict
from tasks.common.ingested import read_ingested, read_rejects
from tasks.ingest.stage import run_ingest

pytestmark = pytest.mark.faults
_fault = None  # the running test's `fault` recorder (set by the autouse fixture below)


@pytest.fixture(autouse=True)
def _record_rejects(fault):
    global _fault
    _fault = fault
    yield
    _fault = None


def ingest(tmp_path, source: str, root, **data) -> tuple[dict, list[str], dict[str, str]]:
    """(report, accepted sample ids, {rejected item: reason}); each reject goes into the faults table."""
    cfg = config_from_dict({"data": {"source": source, "path": str(root), "resolution": 16, **data}})
    out = tmp_path / f"out-{source}-{len(list(tmp_path.iterdir()))}"
    report = run_ingest(cfg, out)
    accepted = read_ingested(out)[0]["sample_id"].tolist() if report["accepted"] else []
    rejects = read_rejects(out)
    for r in rejects:
        _fault(f"{source} input: {r['detail'][:80]}", f"rejected ({r['reason']}); {len(accepted)} good kept")
    return report, accepted, {r["item"]: r["reason"] for r in rejects}


def test_webdataset_bad_json_captions_and_oversized_members_are_rejected_one_by_one(tmp_path):
    good = png_bytes((20, 20))
    members = {
        "a.png": good, "a.txt": b"fine",
        "b.png": good, "b.json": b'{"text": 5}',  # a number, not a caption
        "c.png": good, "c.json": b'{"text": "caf\xe9"}',  # not UTF-8
        "d.png": good, "d.json": b"[" * 20_000 + b"]" * 20_000,  # nested past Python's recursion limit
        "e.png": png_bytes((20, 20), seed=1) + b"\0" * 4000, "e.txt": b"a big image",
        "f.png": png_bytes((20, 20), seed=2), "f.txt": b"x" * 60_000,  # a caption above its limit
        "g.png": png_bytes((20, 20), seed=3), "g.json": b'{"caption": "also fine"}',
    }  # fmt: skip
    (tmp_path / "wds").mkdir()
    write_tar(tmp_path / "wds" / "s.tar", members)
    report, accepted, rejected = ingest(
        tmp_path, "webdataset", tmp_path / "wds", max_file_bytes=3000, max_caption_bytes=50_000
    )
    assert accepted == ["a.png", "g.png"]
    malformed = ["s.tar:b", "s.tar:c", "s.tar:d"]
    assert rejected == dict.fromkeys(malformed, "malformed_metadata") | {
        "s.tar:e": "too_large",
        "s.tar:f": "too_large",
    }
    assert report["total"] == 7


def test_a_truncated_tar_keeps_what_came_before_and_reports_the_break(tmp_path):
    (tmp_path / "wds").mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in {"a.png": png_bytes((20, 20)), "a.txt": b"kept"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("b.png")
        info.size = 64 * 2**20  # claims 64 MiB; the file ends after a few bytes of it
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    (tmp_path / "wds" / "s.tar").write_bytes(buffer.getvalue()[: 10 * 1024])
    report, accepted, rejected = ingest(tmp_path, "webdataset", tmp_path / "wds")
    assert accepted == ["a.png"]
    assert rejected == {"s.tar": "unreadable"}


def test_imagefolder_metadata_lines_are_checked_one_by_one(tmp_path):
    root = tmp_path / "folder"
    rows = make_dataset(root, n=3)
    lines = [
        json.dumps(rows[0]).encode(),
        b'{"file_name": "img1.png", "text": "caf\xe9"}',  # not UTF-8
        b'{"file_name": 5, "text": "a number for a name"}',
        b'{"file_name": "img2.png", "text": 7}',
        b"[" * 100_000,  # nested past Python's recursion limit
        json.dumps(rows[1] | {"text": "y" * 600}).encode(),  # a caption above its limit
        b'"just a string"',
    ]
    (root / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    report, accepted, rejected = ingest(tmp_path, "imagefolder", root, max_caption_bytes=500)
    assert accepted == ["img0.png"]
    malformed = ["metadata.jsonl:2", "metadata.jsonl:3", "img2.png", "metadata.jsonl:5", "metadata.jsonl:7"]
    assert rejected == dict.fromkeys(malformed, "malformed_metadata") | {"img1.png": "too_large"}
    assert report["total"] == 7


def test_imagefolder_csv_rows_with_invalid_utf8_are_rejected_alone(tmp_path):
    root = tmp_path / "folder"
    rows = make_dataset(root, n=3)
    body = [f"{r['file_name']},{r['text']}".encode() for r in rows]
    body[1] = b"img1.png,caf\xe9"
    (root / "metadata.csv").write_bytes(b"file_name,text\n" + b"\n".join(body) + b"\n")
    report, accepted, rejected = ingest(tmp_path, "imagefolder", root)
    assert accepted == ["img0.png", "img2.png"]
    assert rejected == {"img1.png": "malformed_metadata"}


def test_names_and_captions_that_are_not_valid_utf8_are_rejected_not_fatal(tmp_path):
    """Undecodable bytes in a file name, or a JSON escape of a lone surrogate, make strings that no
    manifest, JSON log or table can hold: each such item is rejected and told with escapes."""
    root = tmp_path / "side"
    root.mkdir()
    for i, name in enumerate([b"good.png", b"caf\xe9.png"]):
        (root / os.fsdecode(name)).write_bytes(png_bytes((20, 20), seed=i))
        (root / os.fsdecode(name[:-4] + b".txt")).write_text(f"picture {i}")
    report, accepted, rejected = ingest(tmp_path, "sidecar", root)
    assert accepted == ["good.png"] and rejected == {"caf\\udce9.png": "malformed_metadata"}

    folder = tmp_path / "folder"
    rows = make_dataset(folder, n=3)
    lines = [
        json.dumps(rows[0]),
        '{"file_name": "img1.png", "text": "\\ud800 lone"}',
        '{"file_name": "\\ud800.png", "text": "a lone name"}',
        '{"file_name": "a\\u0000b.png"}',
    ]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    report, accepted, rejected = ingest(tmp_path, "imagefolder", folder)
    assert accepted == ["img0.png"]
    malformed = ["img1.png", "metadata.jsonl:3", "metadata.jsonl:4"]
    assert rejected == dict.fromkeys(malformed, "malformed_metadata")
    assert report["total"] == 4


def test_metadata_behind_a_symlink_pointing_out_is_not_read(tmp_path, fault):
    root = tmp_path / "folder"
    rows = make_dataset(root, n=2)
    secret = tmp_path / "elsewhere.csv"
    secret.write_text("file_name,text\n" + "\n".join(f"{r['file_name']},{r['text']}" for r in rows) + "\n")
    (root / "metadata.csv").symlink_to(secret)
    with pytest.raises(ValueError, match=r"metadata.csv points outside data.path") as refused:
        ingest(tmp_path, "imagefolder", root)
    fault("imagefolder: metadata.csv a symlink out of the root", f"refused, unread: {refused.value}"[:110])


def test_oversized_files_and_caption_files_are_rejected_unread(tmp_path, monkeypatch):
    root = tmp_path / "side"
    root.mkdir()
    (root / "a.png").write_bytes(png_bytes((20, 20)))
    (root / "a.txt").write_text("fine")
    (root / "b.png").write_bytes(png_bytes((20, 20), seed=1) + b"\0" * 5000)
    (root / "b.txt").write_text("a big image")
    (root / "c.png").write_bytes(png_bytes((20, 20), seed=2))
    (root / "c.txt").write_text("z" * 1000)
    read = []
    from tasks.ingest.source_roots import FileRef

    real = FileRef.read
    monkeypatch.setattr(FileRef, "read", lambda ref: read.append(ref.path.rsplit("/", 1)[1]) or real(ref))
    report, accepted, rejected = ingest(tmp_path, "sidecar", root, max_file_bytes=4000, max_caption_bytes=500)
    assert accepted == ["a.png"]
    assert rejected == {"b.png": "too_large", "c.png": "too_large"}
    assert sorted(read) == ["a.png", "a.txt"]  # the oversized ones were never opened

    (tmp_path / "pq").mkdir()
    table = pa.table({"image": [png_bytes((20, 20)), png_bytes((20, 20), seed=1) + b"\0" * 5000],
                      "text": ["ok", "too big"]})  # fmt: skip
    pq.write_table(table, tmp_path / "pq" / "x.parquet")
    report, accepted, rejected = ingest(tmp_path, "parquet", tmp_path / "pq", max_file_bytes=4000)
    assert accepted == ["x.parquet:row 0"] and rejected == {"x.parquet:row 1": "too_large"}
