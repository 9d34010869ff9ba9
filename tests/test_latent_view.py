"""The latent-space view on ingested data: labelled (synthetic) points are coloured by attribute, a user's
unlabelled photos by their captions' leading words; the per-channel statistics are the latents' own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from user_data import write_photo_folder

from models.autoencoder.latent_space import channel_stats, project_2d
from models.autoencoder.vae import build_vae
from tasks.common.config import config_from_dict
from tasks.evaluate.latent_view import colourings, latent_space_view, leading_words
from tasks.ingest.stage import run_ingest


def _vae():
    torch.manual_seed(0)
    return build_vae(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=8, latent_channels=4)


def test_the_view_of_labelled_and_unlabelled_data(tmp_path):
    data = {"resolution": 16, "val_fraction": 0.5, "synthetic": {"count": 48}}
    run_ingest(config_from_dict({"data": data}), tmp_path / "synthetic")
    measured = latent_space_view(_vae(), tmp_path / "synthetic", tmp_path / "view.png", seed=0, decodes=4)
    assert measured["projection"] in ("pca", "umap") and measured["points"] >= 10
    assert len(measured["channel_mean"]) == len(measured["channel_std"]) == 4
    with Image.open(tmp_path / "view.png") as figure:
        assert figure.size[0] > 800 and figure.size[1] > 400

    write_photo_folder(tmp_path / "photos", n=24)
    photos = {"source": "imagefolder", "path": str(tmp_path / "photos"), "resolution": 16}
    run_ingest(config_from_dict({"data": {**photos, "val_fraction": 0.5}}), tmp_path / "photos-ingested")
    latent_space_view(_vae(), tmp_path / "photos-ingested", tmp_path / "photos.png", seed=0, decodes=4)
    assert (tmp_path / "photos.png").stat().st_size > 10_000


def test_points_are_coloured_by_labels_else_by_leading_words():
    import pandas as pd

    labelled = pd.DataFrame({"caption": ["a red circle"] * 2, "color": ["red", "blue"], "shape": ["c", "s"]})
    assert set(colourings(labelled)) == {"color", "shape"}
    words = leading_words(["A dog on grass", "the dog sleeps", "Cats!", "an owl", ""], most=2)
    assert words == ["dog", "dog", "cats", "other", "other"]


def test_projection_and_channel_statistics():
    torch.manual_seed(0)
    z = torch.randn(64, 4, 2, 2) * torch.tensor([1.0, 2.0, 0.5, 1.0]).view(1, 4, 1, 1)
    stats = channel_stats(z)
    assert [round(s, 0) for s in stats["std"]] == [1.0, 2.0, 0.0, 1.0] or abs(stats["std"][1] - 2) < 0.3
    line = torch.linspace(-1, 1, 10).view(10, 1, 1, 1) * torch.ones(1, 4, 2, 2)  # points on one line
    xy = project_2d(line)
    assert xy.shape == (10, 2) and abs(xy[:, 1]).max() < 1e-6  # all the spread on the first component


def test_umap_keeps_clusters_apart_where_it_is_installed():
    pytest.importorskip("umap", reason="umap-learn is optional: the view falls back to PCA without it")
    torch.manual_seed(0)
    centres = torch.randn(3, 16) * 10  # three clusters of latents [4, 2, 2] (16 numbers each)
    z = torch.cat([c + torch.randn(40, 16) for c in centres]).view(120, 4, 2, 2)
    xy = project_2d(z, "umap", seed=0)
    assert xy.shape == (120, 2) and np.isfinite(xy).all()
    groups = [xy[i * 40 : (i + 1) * 40] for i in range(3)]
    spread = max(float(np.linalg.norm(g - g.mean(0), axis=1).max()) for g in groups)
    gaps = [
        float(np.linalg.norm(a.mean(0) - b.mean(0))) for i, a in enumerate(groups) for b in groups[i + 1 :]
    ]
    assert min(gaps) > spread  # every cluster's centre lies outside every cluster's radius
