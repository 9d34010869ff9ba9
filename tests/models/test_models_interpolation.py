"""Interpolation of noise and prompts: the maths (slerp keeps the norm of N(0, I), hits its anchors) and the
walks of a tiny pipeline (their ends are `generate`'s samples, and neighbouring frames are alike)."""

import numpy as np
import pytest
import torch

from models.views.interpolation import fractions, lerp, slerp, slerp_sheet
from models.views.walks import prompt_walk, refine_walk, seed_sheet, seed_walk


def test_slerp_of_gaussian_noise_keeps_its_norm_where_lerp_shrinks_it():
    torch.manual_seed(0)
    a, b = torch.randn(16, 4, 8, 8), torch.randn(16, 4, 8, 8)  # d = 256: |x| is about 16
    d = a[0].numel()
    for t in fractions(9):
        walked = slerp(a, b, t).flatten(1).norm(dim=1)
        ends = (a.flatten(1).norm(dim=1), b.flatten(1).norm(dim=1))
        low, high = torch.minimum(*ends), torch.maximum(*ends)
        assert bool(((walked >= low - 1e-4) & (walked <= high + 1e-4)).all()), t  # between the ends' norms
    middle = lerp(a, b, 0.5).flatten(1).norm(dim=1).mean()
    assert middle < 0.8 * d**0.5  # the straight line's midpoint: about sqrt(d / 2)
    assert slerp(a, b, 0.5).flatten(1).norm(dim=1).mean() == pytest.approx(d**0.5, rel=0.1)


def test_slerp_hits_its_anchors_and_handles_parallel_inputs():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    same = slerp(a, 2 * a, 0.5)  # parallel: lerp, no division by sin(0)
    assert torch.allclose(same, 1.5 * a) and torch.isfinite(same).all()
    with pytest.raises(ValueError, match="one shape"):
        slerp(a, torch.randn(3, 6), 0.5)


def test_the_sheet_has_its_corners_and_pairwise_edges():
    corners = torch.randn(4, 2, 3, 3)
    sheet = slerp_sheet(corners, 4, 5).reshape(4, 5, 2, 3, 3)
    for got, want in zip((sheet[0, 0], sheet[0, -1], sheet[-1, 0], sheet[-1, -1]), corners, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    top_edge = torch.cat([slerp(corners[:1], corners[1:2], t) for t in fractions(5)])
    assert torch.allclose(sheet[0], top_edge, atol=1e-6)


def _distance(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.abs(x.astype(np.float64) - y.astype(np.float64)).mean())


# a walk samples its frames in batches, `generate` one image at once: CPU kernels may round differently
TOLERANCE = 1  # uint8 levels


def test_walks_end_at_the_anchors_samples_and_step_smaller_than_their_ends(tiny_pipe):
    pipe = tiny_pipe
    settings = {"num_inference_steps": 3, "guidance_scale": 3.0}
    prompt, other = "a small red circle at the top left", "a large blue square"
    walk = seed_walk(pipe, prompt, (1, 2), fractions(5), steps=3, guidance=3.0)
    assert walk.shape[0] == 5
    for frame, seed in ((walk[0], 1), (walk[-1], 2)):
        own = pipe.generate([prompt], seed=seed, **settings)[0]
        assert np.abs(frame.astype(int) - own.astype(int)).max() <= TOLERANCE
    ends = _distance(walk[0], walk[-1])
    assert max(_distance(walk[i], walk[i + 1]) for i in range(4)) < ends

    text = prompt_walk(pipe, (prompt, other), 3, fractions(4), steps=3, guidance=3.0)
    for frame, which in ((text[0], prompt), (text[-1], other)):
        own = pipe.generate([which], seed=3, **settings)[0]
        assert np.abs(frame.astype(int) - own.astype(int)).max() <= TOLERANCE

    sheet = seed_sheet(pipe, prompt, (1, 2, 3, 4), size=3, steps=3, guidance=3.0)
    assert sheet.shape[0] == 9
    assert np.abs(sheet[0].astype(int) - walk[0].astype(int)).max() <= TOLERANCE  # seed 1's corner


def _ramp(at: list[float], edge: float, width: float) -> np.ndarray:
    """One grey level per frame, rising from 0 to 255 across [edge - width/2, edge + width/2] (width 0: a
    jump)."""
    t = np.asarray(at, dtype=np.float64)
    level = np.clip((t - edge) / width + 0.5, 0, 1) if width else (t >= edge).astype(np.float64)
    return np.broadcast_to((255 * level)[:, None, None, None], (len(at), 2, 2, 3)).round().astype(np.uint8)


def _widths(frames: np.ndarray) -> np.ndarray:
    x = frames.astype(np.float64).mean(axis=(1, 2, 3))
    return np.abs(np.diff(x)) / max(abs(x[-1] - x[0]), 1e-9)


def test_refining_puts_frames_where_a_walk_moves_fast_and_keeps_a_jump_a_jump():
    even = fractions(5)
    drawn = []

    def steep(at):
        drawn.append(list(at))
        return _ramp(at, edge=0.6, width=0.1)

    at, frames = refine_walk(steep, even, 6, _widths)
    assert at == sorted(at) and set(even) <= set(at) and len(at) == len(frames) == 11
    assert drawn[0] == even and all(len(new) == 1 for new in drawn[1:])  # one new frame per refinement
    assert all(0.5 <= t <= 0.75 for t in set(at) - set(even))  # all of them in the steep stretch
    assert np.array_equal(frames, _ramp(at, 0.6, 0.1))  # each frame where its fraction says
    assert _widths(frames).max() < 0.5 < _widths(_ramp(even, 0.6, 0.1)).max()

    at, frames = refine_walk(lambda at: _ramp(at, 0.6, 0), even, 6, _widths)
    assert _widths(frames).max() == 1.0  # a jump: as wide as the ends apart, however often it is halved
    assert refine_walk(steep, even, 0, _widths)[0] == even
