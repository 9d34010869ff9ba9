"""The judge and the metrics in its space, on a toy set where what a caption says is visible: a coloured
square on the left or the right (8 captions). The controls: real held-out images score near the top,
the same images against shuffled captions score at chance."""

import numpy as np
import pytest
import torch

from models.judges.judge import (
    Judge,
    JudgeShape,
    contrastive_loss,
    embed_caption_rows,
    embed_images,
    train_judge,
)
from models.judges.judge_metrics import frechet_and_kid, precision_recall, r_precision

COLORS = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220], [230, 220, 40]], dtype=np.uint8)
N_CAPTIONS = 8  # 4 colours x {left, right}


def toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images of 16x16 and the caption of each (colour * 2 + side)."""
    rng = np.random.default_rng(seed)
    caption = rng.integers(0, N_CAPTIONS, n)
    images = np.zeros((n, 16, 16, 3), dtype=np.uint8)
    for i, c in enumerate(caption):
        y, x = rng.integers(0, 10), rng.integers(0, 3) + (9 if c % 2 else 0)
        images[i, y : y + 6, x : x + 5] = COLORS[c // 2]
    return images, caption


def caption_rows():
    """A stand-in text cache: each caption a fixed random [4 tokens, 16] embedding, the last token padding."""
    hidden = torch.randn(N_CAPTIONS, 4, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0]] * N_CAPTIONS)
    return lambda rows: (hidden[torch.as_tensor(rows)], mask[torch.as_tensor(rows)])


@pytest.fixture(scope="module")
def trained():
    images, caption = toy(512, seed=0)
    captions = caption_rows()
    shape = JudgeShape(text_dim=16, embed_dim=16, width=8)
    judge = train_judge([(images, caption)], captions, shape, steps=150, batch_size=64, lr=3e-3, seed=0,
                        device="cpu")  # fmt: skip
    return judge, embed_caption_rows(judge, captions, np.arange(N_CAPTIONS))


def test_real_held_out_images_score_near_the_top(trained):
    judge, caption_emb = trained
    images, caption = toy(256, seed=1)
    score, pool = r_precision(embed_images(judge, images), caption, caption_emb, pool_size=8, seed=0)
    assert pool == N_CAPTIONS
    assert score > 0.9


def test_shuffled_captions_score_at_chance(trained):
    """Under shuffling, hits are Binomial(256, 1/8): sd 0.021; 3.5 sd is 0.072."""
    judge, caption_emb = trained
    images, caption = toy(256, seed=1)
    shuffled = np.random.default_rng(2).permutation(caption)
    score, pool = r_precision(embed_images(judge, images), shuffled, caption_emb, pool_size=8, seed=0)
    assert abs(score - 1 / pool) < 0.072


def test_a_pool_smaller_than_the_captions_draws_others_and_never_the_own():
    emb = torch.eye(5)  # caption i embeds as e_i; image i equals its caption: always a hit
    score, pool = r_precision(emb, np.arange(5), emb, pool_size=3, seed=0)
    assert (score, pool) == (1.0, 3)
    with pytest.raises(ValueError, match="at least 2 distinct captions"):
        r_precision(emb[:1], np.array([0]), emb[:1], pool_size=3, seed=0)


def test_distances_are_small_between_real_sets_and_large_against_others(trained):
    judge, _ = trained
    a, b = toy(200, seed=3)[0], toy(200, seed=4)[0]
    noise = np.random.default_rng(5).integers(0, 255, (200, 16, 16, 3), dtype=np.uint8)
    ea, eb, en = (embed_images(judge, x) for x in (a, b, noise))
    fd_same, kid_same = frechet_and_kid(ea, eb)
    fd_other, kid_other = frechet_and_kid(ea, en)
    assert fd_other > 10 * fd_same and kid_other > kid_same + 0.01
    assert min(precision_recall(ea, eb)) > 0.7
    assert precision_recall(ea, en)[0] == 0.0  # no noise image lies on the real manifold


def test_images_that_share_a_caption_are_all_its_positives():
    caption_emb = torch.eye(2)
    owner = torch.tensor([0, 0, 1])
    aligned = caption_emb[owner]
    shuffled = caption_emb[torch.tensor([1, 1, 0])]
    scale = torch.tensor(10.0)
    assert contrastive_loss(aligned, caption_emb, owner, scale) < contrastive_loss(
        shuffled, caption_emb, owner, scale
    )


def test_a_judge_takes_any_image_size():
    judge = Judge(JudgeShape(text_dim=16, embed_dim=8, width=8)).eval()
    for size in ((16, 16), (24, 40)):
        images = np.zeros((2, *size, 3), dtype=np.uint8)
        assert embed_images(judge, images).shape == (2, 8)
