import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks import synthetic
from tasks.config import config_from_dict
from tasks.ingest import read_ingested, run_ingest, split_for


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
        "images-00000.safetensors", "images-00001.safetensors", "images-00002.safetensors",
    ]  # fmt: skip
    assert set(manifest["split"]) <= {"train", "val"}
    # sha256 is of the stored pixels
    import hashlib

    assert manifest["sha256"][5] == hashlib.sha256(images[5].tobytes()).hexdigest()


def test_ingest_is_byte_identical_on_rerun(tmp_path):
    run_ingest(synth_cfg(count=20), tmp_path / "a")
    run_ingest(synth_cfg(count=20), tmp_path / "b")
    for name in ["manifest.parquet", "images-00000.safetensors", "report.json"]:
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
