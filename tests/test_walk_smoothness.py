"""The report's walk measure: steps between neighbouring frames against the distance between the ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.judges.judge import Judge, JudgeShape
from tasks.evaluate.views import smoothness


@pytest.fixture(scope="module")
def judge():
    torch.manual_seed(0)
    return Judge(JudgeShape(text_dim=16, embed_dim=8, width=8)).eval()


def test_an_even_ramp_steps_a_third_of_its_ends(judge):
    frames = np.stack([np.full((16, 16, 3), level, np.uint8) for level in (0, 30, 60, 90)])
    d = smoothness(frames, judge)
    assert d.pixel_step == d.pixel_mean_step == 30.0 and d.pixel_ends == 90.0
    assert 0 <= d.judge_mean_step <= d.judge_step
    still = smoothness(np.repeat(frames[:1], 3, axis=0), judge)
    assert still.pixel_step == still.pixel_ends == 0.0
    assert abs(still.judge_step) < 1e-6  # float32 unit vectors


def test_one_jump_is_the_largest_step_not_the_mean(judge):
    levels = (0, 2, 4, 200, 202, 204)  # a walk that changes all at once half-way
    d = smoothness(np.stack([np.full((16, 16, 3), v, np.uint8) for v in levels]), judge)
    assert d.pixel_step == 196.0 and d.pixel_mean_step == pytest.approx(204 / 5) and d.pixel_ends == 204.0
    assert d.pixel_mean_step < d.pixel_ends < 2 * d.pixel_step
