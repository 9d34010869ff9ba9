"""Limits that hold before decompression (issue 29): a small parquet or tar file that expands to hundreds of
MiB is refused from what its metadata and headers say, so ingest's peak memory on it stays near that on a
normal folder; a file swapped for a symlink after listing is not read from outside the root; no reject
quotes a file's bytes; a caption that is not UTF-8 is rejected."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hostile_files import (
    MiB,
    dictionary_bomb_parquet,
    good_items,
    good_parquet,
    gzip_tar,
    ingest_peak,
    normal_folder,
    pax_bomb_tar,
    unused_members_tar,
)
from user_data import png_bytes, write_tar

from tasks.common.config import config_from_dict
from tasks.common.ingested import read_ingested, read_rejects
from tasks.ingest import sources
from tasks.ingest.preprocess import decode_chunk
from tasks.ingest.stage import DecodeJob, preprocessing, run_ingest

pytestmark = pytest.mark.faults
GOAL = 1.3  # hostile / normal peak resident set


def ingest(tmp_path, source: str, root, **data) -> tuple[list[str], dict[str, dict]]:
    """(accepted sample ids, {rejected item: reject}) of ingesting `root` in this process."""
    cfg = config_from_dict({"data": {"source": source, "path": str(root), "resolution": 16, **data}})
    out = tmp_path / f"out-{source}-{len(list(tmp_path.iterdir()))}"
    report = run_ingest(cfg, out)
    accepted = read_ingested(out)[0]["sample_id"].tolist() if report["accepted"] else []
    return accepted, {r["item"]: r for r in read_rejects(out)}


def peaks(tmp_path, source: str, hostile, n: int, **data) -> tuple[dict, list[dict], float, float]:
    """(report, rejects, hostile peak MiB, normal peak MiB): `hostile` ingested beside a normal sidecar folder
    of the same item count `n`, each in a process of its own."""
    base = {"resolution": 16, "workers": 2}
    normal = normal_folder(tmp_path / "normal", n)
    _, _, normal_peak = ingest_peak(base | {"source": "sidecar", "path": str(normal)}, tmp_path / "out-n")
    report, rejects, peak = ingest_peak(
        base | {"source": source, "path": str(hostile), **data}, tmp_path / "out-h"
    )
    return report, rejects, peak, normal_peak


def test_a_parquet_whose_cells_decompress_past_the_limit_is_refused_from_its_metadata(tmp_path, fault):
    folder = tmp_path / "pq"
    folder.mkdir()
    good_parquet(folder / "a.parquet", 2)
    dictionary_bomb_parquet(folder / "bomb.parquet", rows=64, value_bytes=12 * MiB)
    size = (folder / "bomb.parquet").stat().st_size
    report, rejects, peak, normal = peaks(tmp_path, "parquet", folder, 66, max_file_bytes=MiB)
    assert report["accepted"] == 2
    assert {r["item"] for r in rejects} == {f"bomb.parquet:row {i}" for i in range(64)}
    assert {r["reason"] for r in rejects} == {"too_large"}
    assert peak <= GOAL * normal, f"peak {peak:.0f} MiB vs {normal:.0f} MiB on a normal folder"
    fault(f"hostile input: a {size} B parquet whose 64 cells are 12 MiB each (limit 1 MiB)",
          f"64 rejected (too_large) unread, 2 good kept; peak RSS {peak:.0f} MiB, "
          f"{peak / normal:.2f}x a normal folder's")  # fmt: skip


def test_tar_members_no_reader_uses_are_skipped_not_read(tmp_path, fault):
    folder = tmp_path / "wds"
    folder.mkdir()
    unused_members_tar(folder / "s.tar", junk_bytes=200 * MiB)
    size = (folder / "s.tar").stat().st_size
    report, rejects, peak, normal = peaks(tmp_path, "webdataset", folder, 1)
    assert report["accepted"] == 1 and rejects == []
    assert peak <= GOAL * normal, f"peak {peak:.0f} MiB vs {normal:.0f} MiB on a normal folder"
    fault(f"hostile input: a {size // 1024} KiB .tar.gz with 208 MiB of unused members (.npy, .seg)",
          f"skipped unread, its 1 sample kept; peak RSS {peak:.0f} MiB, {peak / normal:.2f}x a normal "
          "folder's")  # fmt: skip


def test_a_huge_pax_header_is_refused_before_tarfile_reads_it(tmp_path, fault):
    folder = tmp_path / "wds"
    folder.mkdir()
    pax_bomb_tar(folder / "s.tar", header_bytes=256 * MiB)
    size = (folder / "s.tar").stat().st_size
    report, rejects, peak, normal = peaks(tmp_path, "webdataset", folder, 2)
    assert report["accepted"] == 1  # a.png, before the header
    [reject] = rejects
    assert reject["item"] == "s.tar" and reject["reason"] == "too_large"
    assert "PAX" in reject["detail"] and str(256 * MiB) in reject["detail"]
    assert peak <= GOAL * normal, f"peak {peak:.0f} MiB vs {normal:.0f} MiB on a normal folder"
    fault(f"hostile input: a {size // 1024} KiB .tar.gz holding a 256 MiB PAX header",
          f"rest of shard rejected ({reject['reason']}), 1 sample before it kept; peak RSS {peak:.0f} MiB, "
          f"{peak / normal:.2f}x a normal folder's")  # fmt: skip


def test_a_tar_sample_has_a_byte_cap_and_a_shard_a_decompressed_cap(tmp_path, fault):
    folder = tmp_path / "wds"
    folder.mkdir()
    good = good_items(3)
    write_tar(folder / "s.tar", {
        "a.png": good[0][0], "a.txt": b"fine",
        "b.png": good[1][0], "b.jpg": bytes(1500), "b.webp": bytes(1500), "b.txt": b"three images",
    })  # fmt: skip
    late = png_bytes((20, 20), seed=9)
    gzip_tar(folder / "t.tar", [("c.png", good[2][0]), ("c.txt", b"kept"), ("d.npy", 3 * MiB),
                                ("e.png", late), ("e.txt", b"past the cap")])  # fmt: skip
    accepted, rejected = ingest(tmp_path, "webdataset", folder, max_file_bytes=4000, max_tar_bytes=2 * MiB)
    assert accepted == ["a.png", "c.png"]
    assert set(rejected) == {"s.tar:b", "t.tar"}
    sample, shard = rejected["s.tar:b"], rejected["t.tar"]
    assert sample["reason"] == "too_large" and "b.webp" in sample["detail"]
    assert shard["reason"] == "too_large" and "data.max_tar_bytes" in shard["detail"]
    fault("hostile input: a tar sample of three images, each within data.max_file_bytes",
          f"rejected ({sample['reason']}): {sample['detail'][:70]}")  # fmt: skip
    fault(
        "hostile input: a .tar.gz decompressing past data.max_tar_bytes",
        f"rest of shard rejected ({shard['reason']}), {accepted.count('c.png')} sample before it kept",
    )


def test_a_file_swapped_for_a_symlink_after_listing_is_not_read(tmp_path, fault):
    root, outside = tmp_path / "side", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    for i, name in enumerate("abc"):
        (root / f"{name}.png").write_bytes(png_bytes((20, 20), seed=i))
        (root / f"{name}.txt").write_text(f"picture {name}")
    (outside / "secret.png").write_bytes(png_bytes((20, 20), seed=7))
    (outside / "secret.txt").write_text("SECRET caption")
    cfg = config_from_dict({"data": {"source": "sidecar", "path": str(root), "resolution": 16}})
    listed = list(sources.items(cfg.data))
    for name, target in (("b.png", "secret.png"), ("c.txt", "secret.txt")):  # swapped after listing
        (root / name).unlink()
        (root / name).symlink_to(outside / target)
    done = decode_chunk(DecodeJob(preprocessing(cfg), listed, frozenset()))
    accepted = [p.name for p in done if not isinstance(p, sources.Reject)]
    rejected = {r.item: r for r in done if isinstance(r, sources.Reject)}
    assert accepted == ["a.png"]
    assert {item: r.reason for item, r in rejected.items()} == {
        "b.png": "path_outside_root",
        "c.png": "path_outside_root",
    }
    assert "b.png" in rejected["b.png"].detail and "c.txt" in rejected["c.png"].detail
    assert "SECRET" not in json.dumps([r.detail for r in rejected.values()])
    fault("local attacker: an image swapped for a symlink out of the root after listing",
          f"rejected ({rejected['b.png'].reason}), not read: {rejected['b.png'].detail[-60:]}")  # fmt: skip
    fault("local attacker: a caption file swapped for a symlink out of the root after listing",
          f"rejected ({rejected['c.png'].reason}), not read; {len(accepted)} good kept")  # fmt: skip


def test_a_reject_never_quotes_the_file(tmp_path, fault):
    root = tmp_path / "side"
    root.mkdir()
    (root / "a.png").write_bytes(png_bytes((20, 20)))
    (root / "a.txt").write_text("fine")
    (root / "b.png").write_bytes(b"SECRET-TOKEN-0123456789abcdef")  # no image
    (root / "b.txt").write_text("a secret")
    accepted, rejected = ingest(tmp_path, "sidecar", root)
    assert accepted == ["a.png"] and rejected["b.png"]["reason"] == "not_an_image"
    assert "SECRET" not in rejected["b.png"]["detail"]
    fault(
        "hostile input: a .png holding text, not an image",
        f"rejected ({rejected['b.png']['reason']}): {rejected['b.png']['detail'][:60]} (no bytes quoted)",
    )


def test_captions_that_are_not_utf8_are_rejected(tmp_path, fault):
    root = tmp_path / "side"
    root.mkdir()
    for i, (name, text) in enumerate([("a", b"fine"), ("b", b"caf\xe9")]):
        (root / f"{name}.png").write_bytes(png_bytes((20, 20), seed=i))
        (root / f"{name}.txt").write_bytes(text)
    accepted, rejected = ingest(tmp_path, "sidecar", root)
    assert accepted == ["a.png"] and rejected["b.png"]["reason"] == "malformed_metadata"
    assert "b.txt" in rejected["b.png"]["detail"] and "UTF-8" in rejected["b.png"]["detail"]
    fault(
        "hostile input: a sidecar .txt caption that is not UTF-8",
        f"rejected ({rejected['b.png']['reason']}): {rejected['b.png']['detail'][:60]}",
    )

    (tmp_path / "wds").mkdir()
    members = {"a.png": png_bytes((20, 20)), "a.txt": b"fine", "b.png": png_bytes((20, 20), seed=1)}
    write_tar(tmp_path / "wds" / "s.tar", members | {"b.txt": b"caf\xe9"})
    accepted, rejected = ingest(tmp_path, "webdataset", tmp_path / "wds")
    assert accepted == ["a.png"] and rejected["s.tar:b"]["reason"] == "malformed_metadata"
    assert "b.txt" in rejected["s.tar:b"]["detail"]
    fault(
        "hostile input: a tar .txt caption that is not UTF-8",
        f"rejected ({rejected['s.tar:b']['reason']}): {rejected['s.tar:b']['detail'][:60]}",
    )

    (tmp_path / "pq").mkdir()
    raw = pa.array([b"fine", b"caf\xe9"], pa.binary())
    text = pa.Array.from_buffers(pa.string(), 2, raw.buffers())  # a string column holding invalid UTF-8
    images = [png_bytes((20, 20)), png_bytes((20, 20), seed=1)]
    pq.write_table(pa.table({"image": images, "text": text}), tmp_path / "pq" / "x.parquet")
    accepted, rejected = ingest(tmp_path, "parquet", tmp_path / "pq")
    assert accepted == ["x.parquet:row 0"] and rejected["x.parquet:row 1"]["reason"] == "malformed_metadata"
    fault(
        "hostile input: a parquet string caption that is not UTF-8",
        f"rejected ({rejected['x.parquet:row 1']['reason']}); {len(accepted)} good kept",
    )


def test_symlinked_shards_pointing_out_are_not_read(tmp_path, fault):
    root, outside = tmp_path / "wds", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    write_tar(root / "a.tar", {"a.png": png_bytes((20, 20)), "a.txt": b"inside"})
    write_tar(outside / "b.tar", {"b.png": png_bytes((20, 20), seed=1), "b.txt": b"outside"})
    os.symlink(outside / "b.tar", root / "b.tar")
    accepted, rejected = ingest(tmp_path, "webdataset", root)
    assert accepted == ["a.png"] and rejected["b.tar"]["reason"] == "path_outside_root"
    fault(
        "local attacker: a tar shard that is a symlink out of the root",
        f"rejected ({rejected['b.tar']['reason']}), not read; {len(accepted)} good kept",
    )
