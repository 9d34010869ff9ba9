import numpy as np

from models.probe import AttributeProbe, predict_attributes, train_probe

COLORS = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220]], dtype=np.uint8)


def _toy(n: int, seed: int, size: int = 32):
    """A coloured square or a coloured horizontal bar on black: colour and shape trivially separable."""
    rng = np.random.default_rng(seed)
    c, s = rng.integers(0, 3, n), rng.integers(0, 2, n)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        y, x = rng.integers(0, size // 2, 2)
        h, w = (size // 3, size // 3) if s[i] == 0 else (size // 8, size // 2)
        images[i, y : y + h, x : x + w] = COLORS[c[i]]
    return images, c, s


def test_probe_learns_toy_set():
    images, c, s = _toy(256, seed=0)
    probe = train_probe(images, c, s, steps=120, batch_size=32, seed=0, device="cpu")
    assert isinstance(probe, AttributeProbe)
    test_images, tc, ts = _toy(128, seed=1)
    pc, ps = predict_attributes(probe, test_images)
    assert pc.shape == ps.shape == (128,)
    assert (pc == tc).mean() > 0.95
    assert (ps == ts).mean() > 0.9


def test_probe_any_resolution():
    images, c, s = _toy(8, seed=0, size=16)
    probe = train_probe(images, c, s, steps=1, batch_size=4, device="cpu")
    pc, ps = predict_attributes(probe, _toy(4, seed=2, size=48)[0])
    assert pc.shape == (4,) and ps.shape == (4,)
