"""User data as real folders hold it: every convention, every awkward file, every item accounted for."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from user_data import make_dataset, png_bytes, write_every_convention, write_tar

from tasks.common.config import config_from_dict
from tasks.common.ingested import read_ingested
from tasks.ingest.decode import DecodeError, DecodeLimits, decode_rgb
from tasks.ingest.source_roots import FileRef, file_stamp, local_files
from tasks.ingest.stage import run_ingest

LIMITS = DecodeLimits(background=(255, 255, 255), max_pixels=10_000, min_size=8)


def save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def decode(path, limits=LIMITS) -> tuple[np.ndarray, tuple[int, int]]:
    rgb, orig = decode_rgb(path, limits)
    return np.asarray(rgb), orig


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    pixels, orig = decode(save(img, tmp_path / "r.jpg", exif=exif, quality=95))
    assert orig == (40, 20) and pixels.shape == (40, 20, 3)  # displayed upright: 20 wide, 40 high
    assert pixels[2, 10, 0] > 200  # the red strip is now on top


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.new("CMYK", (10, 10), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.new("L", (10, 10), 128), (128, 128, 128)),
        (lambda: Image.new("LA", (10, 10), (0, 0)), (255, 255, 255)),  # transparent -> background
        (lambda: Image.new("RGBA", (10, 10), (0, 0, 255, 255)), (0, 0, 255)),
        (lambda: Image.fromarray(np.full((10, 10), 65535, np.uint16)), (255, 255, 255)),  # 16-bit
    ],
)
def test_modes_become_8bit_rgb(tmp_path, make, expected):
    pixels, _ = decode(save(make(), tmp_path / "x.png" if make().mode != "CMYK" else tmp_path / "x.jpg"))
    assert pixels.dtype == np.uint8 and pixels.shape == (10, 10, 3)
    assert np.abs(pixels[5, 5].astype(int) - expected).max() <= 3


def test_palette_transparency_uses_background(tmp_path):
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 255, 0] * 256)
    pixels, _ = decode(
        save(img, tmp_path / "p.png", transparency=0), DecodeLimits(background=(9, 9, 9), min_size=8)
    )
    assert tuple(pixels[0, 0]) == (9, 9, 9)


@pytest.mark.parametrize(
    "write, reason",
    [
        (lambda p: p.write_bytes(b""), "empty_file"),
        (lambda p: p.write_text("<html>502 Bad Gateway</html>"), "not_an_image"),
        (lambda p: p.write_bytes(png_bytes((20, 20))[:-40]), "truncated_image"),
        (lambda p: p.write_bytes(png_bytes((200, 200))), "decompression_bomb"),
        (lambda p: p.write_bytes(png_bytes((4, 30))), "too_small"),
    ],
)
def test_bad_files_are_rejected_with_a_reason(tmp_path, write, reason):
    path = tmp_path / "bad.png"
    write(path)
    with pytest.raises(DecodeError) as err:
        decode_rgb(path, LIMITS)
    assert err.value.reason == reason


def ingest(tmp_path, source, root, **data):
    cfg = config_from_dict({"data": {"source": source, "path": str(root), "resolution": 16, **data}})
    out = tmp_path / f"out-{source}-{len(list(tmp_path.iterdir()))}"
    return run_ingest(cfg, out), *read_ingested(out)


def test_a_local_folder_is_listed_as_fsspec_lists_it(tmp_path):
    """`local_files` stands in for fsspec's `find`: the same files, stamps, sizes and links (a link is a file
    of its own, never followed: `Root.locate` decides whether it points inside)."""
    import fsspec

    root = tmp_path / "root"
    (root / "a" / "b" / ".hidden").mkdir(parents=True)
    (root / "a" / "b" / "x.png").write_bytes(b"xx")
    (root / "a" / "b" / ".hidden" / "y.txt").write_text("y")
    (root / "top.jpg").write_bytes(b"t")
    (tmp_path / "outside.png").write_bytes(b"12345")
    (root / "a" / "out.png").symlink_to(tmp_path / "outside.png")
    (root / "linked").symlink_to(root / "a" / "b", target_is_directory=True)
    (root / "dangling.png").symlink_to(root / "gone.png")

    base = root.as_posix()
    found = fsspec.filesystem("file").find(base, detail=True)
    theirs = {path[len(base) + 1 :]: info for path, info in found.items()}
    ours = local_files(base)
    assert sorted(ours) == sorted(theirs) == [
        "a/b/.hidden/y.txt", "a/b/x.png", "a/out.png", "dangling.png", "linked", "top.jpg",
    ]  # fmt: skip
    for name, info in theirs.items():
        assert file_stamp(ours[name]) == file_stamp(info), name
        assert (ours[name]["size"], ours[name]["islink"]) == (info["size"], info["islink"]), name
    assert ours["a/out.png"]["size"] == 5 and ours["dangling.png"]["size"] == 0


def test_every_convention_gives_the_same_manifest(tmp_path):
    conventions = write_every_convention(tmp_path / "src")
    results = [ingest(tmp_path, source, tmp_path / "src" / folder, **extra)
               for folder, (source, extra) in conventions.items()]  # fmt: skip
    (rep0, man0, img0), *others = results
    assert rep0["accepted"] == 6 and rep0["rejected"] == 0
    for rep, man, img in others:
        assert {k: rep[k] for k in ("total", "accepted", "rejected")} == {
            "total": 6,
            "accepted": 6,
            "rejected": 0,
        }
        cols = ["sample_id", "caption", "split", "sha256"]
        assert man[cols].equals(man0[cols])
        assert np.array_equal(img, img0)


def test_folder_problems_are_all_accounted_for(tmp_path):
    root = tmp_path / "data"
    rows = make_dataset(root, n=3)
    Image.open(root / "img0.png").save(root / "copy_of_0.png")  # same pixels, other name
    outside = tmp_path / "outside.png"
    Image.new("RGB", (20, 20)).save(outside)
    os.symlink(outside, root / "link.png")  # a symlink pointing out of the root
    (root / "no_caption.png").write_bytes((root / "img1.png").read_bytes()[:60])  # truncated, no caption
    rows += [
        {"file_name": "copy_of_0.png", "text": "duplicate"},
        {"file_name": "link.png", "text": "escapes"},
        {"file_name": "/etc/hostname", "text": "absolute"},
        {"file_name": "no_caption.png", "text": ""},
    ]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "[1, 2]\n")

    report, manifest, _ = ingest(tmp_path, "imagefolder", root)
    assert report["total"] == report["accepted"] + report["rejected"] == 8
    assert report["by_reason"] == {
        "duplicate_image": 1, "empty_caption": 1, "malformed_metadata": 1, "path_outside_root": 2,
    }  # fmt: skip
    assert list(manifest["sample_id"]) == ["img0.png", "img1.png", "img2.png"]

    kept, manifest, _ = ingest(tmp_path, "imagefolder", root, empty_captions="keep")
    assert kept["by_reason"]["truncated_image"] == 1  # now decoded, and found broken
    assert kept["accepted_with_empty_caption"] == 0


def test_empty_captions_can_be_kept_for_unconditional_training(tmp_path):
    root = tmp_path / "side"
    make_dataset(root, n=3)
    (root / "img0.txt").write_text("a caption")
    report, manifest, _ = ingest(tmp_path, "sidecar", root, empty_captions="keep")
    assert report["accepted"] == 3 and report["accepted_with_empty_caption"] == 2
    assert sorted(manifest["caption"]) == ["", "", "a caption"]
    report, _, _ = ingest(tmp_path, "sidecar", root)
    assert report["by_reason"] == {"empty_caption": 2}


def test_shard_formats_report_their_bad_rows(tmp_path):
    good = png_bytes((20, 20))
    (tmp_path / "pq").mkdir()
    table = pa.table({"image": [good, None, b"not an image"], "text": ["ok", "no bytes", "junk"]})
    pq.write_table(table, tmp_path / "pq" / "raw.parquet")
    report, manifest, _ = ingest(tmp_path, "parquet", tmp_path / "pq")
    assert report["by_reason"] == {"missing_image": 1, "not_an_image": 1}
    assert list(manifest["sample_id"]) == ["raw.parquet:row 0"]  # raw bytes: the id is the row's place

    (tmp_path / "wds").mkdir()
    members = {"a.png": good, "a.txt": b"fine", "b.json": b"{bad", "b.jpg": good, "c.txt": b"x"}
    write_tar(tmp_path / "wds" / "s.tar", members)
    report, manifest, _ = ingest(tmp_path, "webdataset", tmp_path / "wds")
    assert report["total"] == 3 and report["by_reason"] == {"malformed_metadata": 1, "missing_image": 1}
    assert list(manifest["sample_id"]) == ["a.png"]


def test_parquet_missing_column_names_it(tmp_path):
    pq.write_table(pa.table({"img": [b"x"], "text": ["t"]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match=r"\['image'\].*data.image_column"):
        ingest(tmp_path, "parquet", tmp_path / "x.parquet")


def test_reingest_with_ten_percent_more_decodes_only_the_new_items(tmp_path, monkeypatch):
    root = tmp_path / "side"
    root.mkdir()
    for i in range(22):
        Image.fromarray(np.full((20, 20 + i, 3), (7 * i, 200 - 5 * i, 3 * i), np.uint8)).save(
            root / f"{i:02d}.png"
        )
        (root / f"{i:02d}.txt").write_text(f"image {i}")
    moved = [tmp_path / f"{i:02d}.{ext}" for i in (20, 21) for ext in ("png", "txt")]
    for p in moved:
        (root / p.name).rename(p)  # hold back 2 of 22 (10%) for later

    cfg = config_from_dict({"data": {"source": "sidecar", "path": str(root), "resolution": 16}})
    first = run_ingest(cfg, tmp_path / "out")
    assert first["decoded"] == 20 and first["reused"] == 0
    first_shard = tmp_path / "out" / "images-16x16-00000.safetensors"
    first_inode = first_shard.stat().st_ino
    for p in moved:
        p.rename(root / p.name)
    read = []
    real_read = FileRef.read
    monkeypatch.setattr(FileRef, "read", lambda ref: read.append(ref.path) or real_read(ref))
    again = run_ingest(cfg, tmp_path / "out")
    assert again["decoded"] == 2 and again["reused"] == 20 and again["accepted"] == 22
    # files with unchanged stamps are not even read; the earlier shard is linked, not rewritten
    assert sorted(os.path.basename(p) for p in read) == ["20.png", "20.txt", "21.png", "21.txt"]
    assert first_shard.stat().st_ino == first_inode

    scratch = run_ingest(cfg, tmp_path / "scratch")
    assert scratch["decoded"] == 22
    incremental, images = read_ingested(tmp_path / "out")
    full, full_images = read_ingested(tmp_path / "scratch")
    where = ["shard", "index"]  # the same samples and images, laid out in shards as they came
    assert incremental.drop(columns=where).equals(full.drop(columns=where))
    assert np.array_equal(images, full_images)

    read.clear()
    os.utime(root / "03.png")  # same bytes, new stamp: read and hashed again, not decoded
    (root / "04.txt").write_text("a new caption for image 4")
    touched = run_ingest(cfg, tmp_path / "out")
    assert (touched["decoded"], touched["reused"]) == (0, 22)
    assert sorted(os.path.basename(p) for p in read) == ["03.png", "03.txt", "04.png", "04.txt"]
    captions = read_ingested(tmp_path / "out")[0].set_index("sample_id")["caption"]
    assert captions["04.png"] == "a new caption for image 4" and captions["05.png"] == "image 5"

    changed = config_from_dict({"data": {"source": "sidecar", "path": str(root), "resolution": 8}})
    assert run_ingest(changed, tmp_path / "out")["decoded"] == 22  # other preprocessing: nothing reused


def test_growing_folder_links_intact_shards_and_packs_partial_ones(tmp_path, monkeypatch):
    """Night after night a few images arrive or go: every output holds exactly the images a fresh ingest
    makes; full intact shards are linked, and partly filled ones never pile up past the limit."""
    monkeypatch.setattr("tasks.ingest.incremental.MAX_PARTIAL_SHARDS", 2)
    root = tmp_path / "side"
    root.mkdir()

    def add(i: int) -> None:
        Image.fromarray(np.full((20, 20, 3), (9 * i, 250 - 7 * i, 40), np.uint8)).save(root / f"{i:02d}.png")
        (root / f"{i:02d}.txt").write_text(f"image {i}")

    for i in range(9):
        add(i)
    cfg = config_from_dict(
        {"data": {"source": "sidecar", "path": str(root), "resolution": 16, "shard_size": 4}}
    )
    run_ingest(cfg, tmp_path / "out")  # shards of 4, 4, 1
    for night, change in enumerate(["10", "11", "12", "13", "-05", "14"]):
        before = read_ingested(tmp_path / "out")[0]
        full = before.groupby("shard")["sample_id"].agg(list)
        full = full[full.map(len) == 4]
        inodes = {name: (tmp_path / "out" / f"{name}.safetensors").stat().st_ino for name in full.index}
        if change.startswith("-"):
            (root / f"{change[1:]}.png").unlink()
        else:
            add(int(change))
        run_ingest(cfg, tmp_path / "out")
        run_ingest(cfg, tmp_path / f"fresh-{night}")
        manifest, images = read_ingested(tmp_path / "out")
        fresh, fresh_images = read_ingested(tmp_path / f"fresh-{night}")
        assert manifest["sample_id"].tolist() == fresh["sample_id"].tolist()
        assert np.array_equal(images, fresh_images), f"night {night}: other images than a fresh ingest's"
        sizes = manifest.groupby("shard").size()
        assert (sizes < 4).sum() <= 2 + 1, f"night {night}: {sizes.to_dict()}"  # the limit + tonight's
        for name, members in full.items():  # a full shard stays, linked, unless it lost an image
            kept = f"{change[1:]}.png" not in members
            assert kept == (name in sizes), f"night {night}: {name}"
            if kept:
                assert (tmp_path / "out" / f"{name}.safetensors").stat().st_ino == inodes[name]
    assert "05.png" not in manifest["sample_id"].tolist()
