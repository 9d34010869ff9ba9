"""Inception FID/KID from a local weights file, offline. With the `inception` extra installed, a
random-weights file stands in for the real one (the numbers mean nothing; what is checked is that the
file is what gets loaded and that identical image sets are at distance zero). Without it, the error
names the extra. Bad files are named either way."""

import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.evaluate.inception import InceptionReference

HAS_EXTRA = importlib.util.find_spec("torch_fidelity") is not None


def _images(seed: int, n: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def _image_set(images: np.ndarray) -> list:
    return [(pd.DataFrame({"caption": ["x"] * len(images)}), images)]


@pytest.fixture
def random_weights(tmp_path, monkeypatch):
    """torch-fidelity's Inception-v3 with random weights, saved as a weights file."""
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    monkeypatch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
    monkeypatch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    torch.manual_seed(0)
    network = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    monkeypatch.undo()
    for layer in network.modules():  # torch's default init shrinks features to ~1e-8 this deep
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    path = tmp_path / "inception.pth"
    torch.save(network.state_dict(), path)
    return path


@pytest.mark.skipif(not HAS_EXTRA, reason="the inception extra (torch-fidelity) is not installed")
def test_fid_and_kid_come_from_the_weights_file(random_weights):
    real, train = _images(0, 12), _images(1, 12, size=16)
    reference = InceptionReference(str(random_weights), _image_set(real), _image_set(train), seed=0)
    scores = reference.scores(real)
    assert set(scores) == {"fid_inception", "kid_inception", "fid_inception_floor", "kid_inception_floor"}
    assert abs(scores["fid_inception"]) < 1e-3  # the held-out images against themselves
    assert scores["fid_inception_floor"] > 1e-3
    assert reference.scores(_images(2, 12))["fid_inception"] > 1e-3


@pytest.mark.skipif(HAS_EXTRA, reason="the inception extra is installed")
def test_without_the_extra_the_error_names_it(tmp_path):
    path = tmp_path / "inception.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match=r"ldmflow\[inception\]"):
        InceptionReference(str(path), [], [], seed=0)


class _NotTensors:
    pass


def test_a_missing_or_pickled_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="eval.inception_weights: .*missing.pth is not a file"):
        InceptionReference(str(tmp_path / "missing.pth"), [], [], seed=0)
    pickled = tmp_path / "pickled.pth"
    torch.save({"x": _NotTensors()}, pickled)
    with pytest.raises(ValueError, match="not a plain state dict"):
        InceptionReference(str(pickled), [], [], seed=0)
