"""Outputs appear whole or not at all: a stage killed while writing leaves the previous output as it was,
and one killed between the swap's two renames gets its previous output back on the next run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cache_integrity import synthetic_cfg
from user_data import write_photo_folder

from tasks.common import atomic_dir
from tasks.common.config import config_from_dict
from tasks.embed_text import run_embed_text
from tasks.ingest.stage import run_ingest


def killed_at_rename(monkeypatch, nth: int) -> None:
    """The process dies (KeyboardInterrupt, as on a signal) at the `nth` Path.rename from now."""
    real, calls = Path.rename, []

    def rename(self, target):
        calls.append(self)
        if len(calls) == nth:
            raise KeyboardInterrupt
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)


@pytest.mark.faults
def test_an_ingest_killed_between_the_swaps_renames_keeps_its_previous_output(tmp_path, monkeypatch, fault):
    write_photo_folder(tmp_path / "photos", n=12)
    cfg = config_from_dict(
        {"data": {"source": "imagefolder", "path": str(tmp_path / "photos"), "resolution": 16}}
    )
    out = tmp_path / "ingested"
    assert run_ingest(cfg, out)["decoded"] == 12
    with monkeypatch.context() as patch:
        killed_at_rename(patch, 2)  # the old output is aside, the new one not yet in place
        with pytest.raises(KeyboardInterrupt):
            run_ingest(cfg, out)
    assert not out.exists()
    again = run_ingest(cfg, out)
    assert (again["decoded"], again["reused"]) == (0, 12)  # the previous output came back and was reused
    assert not list(tmp_path.glob(".ingested.*"))
    fault("ingest killed between its output swap's renames", "recovered: the previous output back, reused")


@pytest.mark.faults
def test_a_cache_stage_that_fails_writing_keeps_the_previous_manifest_and_info(tmp_path, object_store, fault):
    cfg = synthetic_cfg(object_store, count=20)
    run_ingest(cfg, tmp_path / "ingested")
    run_embed_text(cfg, tmp_path / "ingested", tmp_path / "text", object_store)
    before = {p.name: p.read_bytes() for p in (tmp_path / "text").iterdir()}

    more = synthetic_cfg(object_store, count=40)
    run_ingest(more, tmp_path / "ingested")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(json, "dumps", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError, match="disk full"):
            run_embed_text(more, tmp_path / "ingested", tmp_path / "text", object_store)
    assert {p.name: p.read_bytes() for p in (tmp_path / "text").iterdir()} == before
    assert not list(tmp_path.glob(".text.*"))
    fault(
        "disk full while embed_text writes its manifest", "the previous manifest and info kept as they were"
    )


def test_a_block_that_raises_leaves_the_output_and_no_staging(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept").write_text("the previous output")
    with pytest.raises(RuntimeError), atomic_dir.replaced_dir(out) as staging:
        (staging / "half").write_text("half of a new output")
        raise RuntimeError("failed mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (
        out / "kept"
    ).read_text() == "the previous output"


@pytest.mark.faults
def test_a_vae_training_that_fails_saving_keeps_the_previous_vae(tmp_path, monkeypatch, fault):
    from diffusers import AutoencoderKL
    from projects import TINY

    from tasks.train_vae import run_train_vae

    cfg = config_from_dict(TINY)
    run_ingest(cfg, tmp_path / "ingested")
    out = tmp_path / "vae"
    run_train_vae(cfg, tmp_path / "ingested", out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(AutoencoderKL, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="disk full"):
        run_train_vae(config_from_dict(TINY | {"seed": 1}), tmp_path / "ingested", out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".vae.*"))
    fault("disk full while train_vae saves", "the previous VAE kept byte for byte")
