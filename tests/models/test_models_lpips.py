"""LPIPS built here (models/autoencoder/lpips.py) from the two weight files a user brings: it loads them as
they are named, scores an image against itself 0, and passes gradients to the reconstruction."""

import pytest
import torch
from lpips_weights import write_lpips_weights

from models.autoencoder.lpips import LPIPS


@pytest.fixture(scope="module")
def lpips(tmp_path_factory):
    return LPIPS.from_folder(write_lpips_weights(tmp_path_factory.mktemp("lpips")))


def test_the_files_weights_are_the_ones_used(tmp_path):
    folder = write_lpips_weights(tmp_path / "w", seed=3)
    model = LPIPS.from_folder(folder)
    backbone, heads = torch.load(folder / "vgg16-397923af.pth"), torch.load(folder / "vgg.pth")
    assert torch.equal(model.features[28].weight, backbone["features.28.weight"])  # conv5_3
    assert torch.equal(model.heads[4].weight, heads["lin4.model.1.weight"])
    assert not any(p.requires_grad for p in model.parameters())  # it only scores


def test_an_image_is_at_distance_zero_from_itself_and_gradients_reach_the_other(lpips):
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
    assert torch.allclose(lpips(x, x), torch.zeros(3), atol=1e-6)
    d = lpips(x, y)
    assert d.shape == (3,) and bool((d > 0).all())
    assert torch.allclose(d, lpips(y, x), rtol=1e-5)  # symmetric
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one shape"):
        lpips(x, x[:, :, :16])


def test_a_folder_without_the_heads_is_refused_by_name(tmp_path):
    folder = write_lpips_weights(tmp_path / "w")
    (folder / "vgg.pth").unlink()
    with pytest.raises(FileNotFoundError, match=r"LPIPS heads.*|.*w"):
        LPIPS.from_folder(folder)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        LPIPS.from_folder(tmp_path / "nowhere")
