import numpy as np

from models.judges.probe import AttributeProbe, predict_attributes, train_probe

COLORS = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220]], dtype=np.uint8)


def _toy(n: int, seed: int, size: int = 32):
    """A coloured square or a coloured horizontal bar on black, in the left or the right half: colour,
    shape and position trivially separable."""
    rng = np.random.default_rng(seed)
    c, s, p = rng.integers(0, 3, n), rng.integers(0, 2, n), rng.integers(0, 2, n)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        h, w = (size // 3, size // 3) if s[i] == 0 else (size // 8, size // 3)
        y, x = rng.integers(0, size - h), rng.integers(0, size // 2 - w) + p[i] * size // 2
        images[i, y : y + h, x : x + w] = COLORS[c[i]]
    return images, {"color": c, "shape": s, "position": p}


def test_probe_learns_each_attribute_of_a_toy_set():
    images, labels = _toy(256, seed=0)
    probe = train_probe(images, labels, steps=150, batch_size=32, seed=0, device="cpu")
    assert isinstance(probe, AttributeProbe)
    test_images, truth = _toy(128, seed=1)
    predicted = predict_attributes(probe, test_images)
    assert set(predicted) == {"color", "shape", "position"}
    for name, classes in predicted.items():
        assert classes.shape == (128,)
        assert (classes == truth[name]).mean() > 0.9, name


def test_probe_any_resolution():
    images, labels = _toy(8, seed=0, size=16)
    probe = train_probe(images, labels, steps=1, batch_size=4, device="cpu")
    predicted = predict_attributes(probe, _toy(4, seed=2, size=48)[0])
    assert all(classes.shape == (4,) for classes in predicted.values())
