import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.common.config import config_from_dict
from tasks.common.ingested import ImageShards, parse_shard_name, read_ingested, shard_name
from tasks.ingest import synthetic
from tasks.ingest.preprocess import crop_box
from tasks.ingest.stage import run_ingest, split_for


def synth_cfg(count=40, **data):
    return config_from_dict(
        {"data": {"resolution": 16, "shard_size": 16, "synthetic": {"count": count}, **data}}
    )


def test_synthetic_is_deterministic_and_captions_match_labels():
    a = list(synthetic.generate(8, 16, ["red", "blue"], ["circle", "square"], ["small"], ["center"], seed=3))
    b = list(synthetic.generate(8, 16, ["red", "blue"], ["circle", "square"], ["small"], ["center"], seed=3))
    assert all(np.array_equal(x.image, y.image) and x.caption == y.caption for x, y in zip(a, b, strict=True))
    for s in a:
        assert s.image.shape == (16, 16, 3) and s.image.dtype == np.uint8
        assert s.caption == f"a small {s.color} {s.shape} in the center"


def test_synthetic_colour_is_visible():
    (s,) = synthetic.generate(1, 32, ["red"], ["square"], ["large"], ["center"], seed=0)
    r, g, b = s.image[16, 16].astype(int)
    assert r > 150 and g < 100 and b < 100


def test_unknown_colour_lists_allowed():
    with pytest.raises(ValueError, match="allowed"):
        list(synthetic.generate(1, 16, ["mauve"], ["circle"], ["small"], ["center"], seed=0))


def test_split_is_stable_and_roughly_proportional():
    ids = [f"id-{i}" for i in range(2000)]
    val = sum(split_for(i, 0.1) == "val" for i in ids)
    assert 150 < val < 250
    assert [split_for(i, 0.1) for i in ids] == [split_for(i, 0.1) for i in ids]


def test_ingest_synthetic_writes_contract(tmp_path):
    report = run_ingest(synth_cfg(count=40), tmp_path)
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert report["total"] == report["accepted"] + report["rejected"] == 40
    manifest, images = read_ingested(tmp_path)
    assert len(manifest) == 40 and images.shape == (40, 16, 16, 3)
    assert sorted(p.name for p in tmp_path.glob("images-*.safetensors")) == [
        "images-16x16-00000.safetensors", "images-16x16-00001.safetensors", "images-16x16-00002.safetensors",
    ]  # fmt: skip
    assert set(manifest["split"]) <= {"train", "val"}
    # sha256 is of the stored pixels
    import hashlib

    assert manifest["sha256"][5] == hashlib.sha256(images[5].tobytes()).hexdigest()


def test_shard_names_are_built_and_parsed_in_one_format():
    assert shard_name("40x24", 7) == "images-40x24-00007"
    assert parse_shard_name(shard_name("40x24", 123456)) == ("40x24", 123456)
    for bad in ("images-00001", "latents-16x16-00001", "images-16x16-x"):
        with pytest.raises(ValueError, match="not an image shard"):
            parse_shard_name(bad)


def test_images_are_read_by_shard_and_index_in_any_order(tmp_path):
    run_ingest(synth_cfg(count=40), tmp_path)
    manifest, images = read_ingested(tmp_path)
    order = np.random.default_rng(0).permutation(40)  # interleaves the three shards
    refs = [(manifest["shard"][i], int(manifest["index"][i])) for i in order]
    shards = ImageShards(tmp_path)
    assert np.array_equal(shards.images(refs), images[order])
    assert np.array_equal(shards.image(*refs[0]), images[order[0]])
    with pytest.raises(ValueError, match="no image 99"):
        shards.images([(refs[0][0], 99)])


def test_ingest_is_byte_identical_on_rerun(tmp_path):
    run_ingest(synth_cfg(count=20), tmp_path / "a")
    run_ingest(synth_cfg(count=20), tmp_path / "b")
    for name in ["manifest.parquet", "images-16x16-00000.safetensors", "report.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_imagefolder_accepts_good_and_reports_every_bad_item(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(src / "good.png")
    Image.new("L", (20, 20), 128).save(src / "grey.jpg")
    (src / "html.jpg").write_text("<html>not an image</html>")
    lines = [
        json.dumps({"file_name": "good.png", "text": "a red thing"}),
        json.dumps({"file_name": "grey.jpg", "text": "a grey thing"}),
        json.dumps({"file_name": "html.jpg", "text": "broken"}),
        json.dumps({"file_name": "missing.png", "text": "gone"}),
        json.dumps({"file_name": "../escape.png", "text": "out"}),
        json.dumps({"file_name": "good.png", "text": ""}),
        "{not json",
        json.dumps({"text": "no file name"}),
    ]
    (src / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    cfg = config_from_dict({"data": {"source": "imagefolder", "path": str(src), "resolution": 16}})
    out = tmp_path / "out"
    report = run_ingest(cfg, out)
    assert report["total"] == 8 and report["accepted"] == 2 and report["rejected"] == 6
    assert report["by_reason"] == {
        "empty_caption": 1, "malformed_metadata": 2, "missing_file": 1,
        "path_outside_root": 1, "not_an_image": 1,
    }  # fmt: skip
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 6 and all(r["reason"] for r in rejects)
    assert {"metadata.jsonl:7", "metadata.jsonl:8", "html.jpg"} <= {r["item"] for r in rejects}
    manifest, images = read_ingested(out)
    assert list(manifest["sample_id"]) == ["good.png", "grey.jpg"]
    assert images.shape == (2, 16, 16, 3)
    assert images[0, 8, 8, 0] > 150  # the red survived resize + crop
    assert pd.isna(manifest["color"][0])


def make_wide_images(root, n=8):
    """Sidecar images wider than tall, with a bright column marking their middle."""
    root.mkdir()
    for i in range(n):
        pixels = np.full((20, 60, 3), (10 * i, 80, 160), np.uint8)
        pixels[:, 29:31] = 255
        Image.fromarray(pixels).save(root / f"w{i}.png")
        (root / f"w{i}.txt").write_text(f"wide image {i}")


def user_cfg(root, **data):
    return config_from_dict({"data": {"source": "sidecar", "path": str(root), "resolution": 16, **data}})


def test_crop_box_covers_the_target_and_stays_inside():
    rng = random.Random(0)
    box, (left, top) = crop_box((60, 20), (16, 16), "center", rng)
    assert (left, top) == (16, 0)  # 60x20 scaled by 0.8 is 48x16: 32 px of slack, half on each side
    assert box == pytest.approx((20.0, 0.0, 40.0, 20.0))
    for _ in range(200):
        w, h = rng.randint(16, 300), rng.randint(16, 300)
        box, (left, top) = crop_box((w, h), (16, 16), "random", rng)
        assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
        assert box[2] - box[0] == pytest.approx(box[3] - box[1], abs=1e-6)  # square in, square out


def test_random_crop_is_recorded_reproducible_and_differs_from_center(tmp_path):
    make_wide_images(tmp_path / "src")
    center = run_ingest(user_cfg(tmp_path / "src"), tmp_path / "center")
    assert center["accepted"] == 8
    manifest, images = read_ingested(tmp_path / "center")
    assert set(manifest["crop_left"]) == {16} and set(manifest["crop_top"]) == {0}
    assert (images[:, :, 7:9, :] >= 200).all()  # the middle marker sits in the middle

    run_ingest(user_cfg(tmp_path / "src", crop="random"), tmp_path / "r1")
    run_ingest(user_cfg(tmp_path / "src", crop="random"), tmp_path / "r2")
    m1, i1 = read_ingested(tmp_path / "r1")
    m2, i2 = read_ingested(tmp_path / "r2")
    assert m1.equals(m2) and np.array_equal(i1, i2)  # offsets follow from (seed, sample id)
    assert len(set(m1["crop_left"])) > 2 and m1["crop_left"].between(0, 32).all()
    for img, left in zip(i1, m1["crop_left"], strict=True):  # the marker moved by the recorded offset
        marker = np.flatnonzero(img[8, :, 0] >= 200)
        if 0 < 24 - left < 15:
            assert abs(marker.mean() - (23.5 - left)) <= 1.5
    other_seed = config_from_dict(
        {"seed": 1, "data": {"source": "sidecar", "path": str(tmp_path / "src"), "resolution": 16,
                             "crop": "random"}}
    )  # fmt: skip
    run_ingest(other_seed, tmp_path / "r3")
    assert not read_ingested(tmp_path / "r3")[0]["crop_left"].equals(m1["crop_left"])


def test_decode_threads_give_the_same_output_as_one(tmp_path):
    make_wide_images(tmp_path / "src", n=40)
    (tmp_path / "src" / "bad.png").write_text("<html>not an image</html>")
    (tmp_path / "src" / "bad.txt").write_text("a broken download")
    (tmp_path / "src" / "nocap.png").write_bytes((tmp_path / "src" / "w1.png").read_bytes())
    serial = run_ingest(user_cfg(tmp_path / "src", workers=1, shard_size=16), tmp_path / "one")
    parallel = run_ingest(user_cfg(tmp_path / "src", workers=2, shard_size=16), tmp_path / "two")
    assert serial == parallel
    assert serial["by_reason"] == {"empty_caption": 1, "not_an_image": 1}
    shards = ["images-16x16-00000.safetensors", "images-16x16-00002.safetensors"]
    for name in ["manifest.parquet", "rejects.jsonl", *shards]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_a_failed_ingest_leaves_the_previous_output_intact(tmp_path):
    make_wide_images(tmp_path / "src")
    out = tmp_path / "out"
    run_ingest(user_cfg(tmp_path / "src"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    pd.DataFrame({"img": [b"x"], "text": ["t"]}).to_parquet(pq_dir / "a.parquet")
    with pytest.raises(ValueError, match="data.image_column"):
        run_ingest(config_from_dict({"data": {"source": "parquet", "path": str(pq_dir)}}), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "pq", "src"]  # nothing half-written left


def test_ingest_stage_logs_counts_by_reason_and_the_reject_table(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from flows.stage_run import run_stage
    from tasks.common.paths import ProjectPaths

    make_wide_images(tmp_path / "src", n=3)
    (tmp_path / "src" / "bad.png").write_bytes(b"")
    (tmp_path / "src" / "bad.txt").write_text("empty file")
    monkeypatch.chdir(tmp_path)  # a tracking URI without an artifact root: MLflow puts artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config_from_dict(
        {"data": {"source": "sidecar", "path": str(tmp_path / "src"), "resolution": 16},
         "tracking": {"uri": uri}}
    )  # fmt: skip
    report = run_stage("ingest", cfg, ProjectPaths.at(tmp_path / "project"))
    assert report["by_reason"] == {"empty_file": 1}
    client = MlflowClient(uri, registry_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ldmflow").experiment_id])
    assert run.data.metrics["rejected"] == 1 and run.data.metrics["rejected.empty_file"] == 1
    table = json.loads(
        Path(client.download_artifacts(run.info.run_id, "rejects_table.json", str(tmp_path))).read_text()
    )
    assert table["columns"] == ["item", "reason", "detail"] and table["data"][0][:2] == [
        "bad.png",
        "empty_file",
    ]
