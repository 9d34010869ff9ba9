"""Which real images evaluation compares with: held-out rows, and the caption-matched train rows of the
real-vs-real floor."""

import pandas as pd
import pytest

from tasks.common.paths import MANIFEST
from tasks.evaluate.scores import caption_matched_rows, choose_rows


@pytest.fixture
def ingested(tmp_path):
    captions = ["a cat"] * 3 + ["a dog"] * 2 + ["a fish", "a bird", "a cow"]
    splits = ["train", "train", "val", "train", "val", "val", "train", "train"]
    pd.DataFrame({"sample_id": [f"s{i}" for i in range(8)], "caption": captions, "split": splits}).to_parquet(
        tmp_path / MANIFEST
    )
    return tmp_path


def test_held_out_rows_are_chosen_reproducibly(ingested):
    rows = choose_rows(ingested, "val", 2, seed=3)
    assert len(rows) == 2 and set(rows["split"]) == {"val"}
    assert rows.equals(choose_rows(ingested, "val", 2, seed=3))
    assert len(choose_rows(ingested, "val", 10, seed=3)) == 3  # all of them when there are fewer


def test_the_floor_takes_train_rows_of_the_same_captions_where_there_are_any(ingested):
    held_out = choose_rows(ingested, "val", 3, seed=0)  # a cat, a dog, a fish
    train, matched = caption_matched_rows(ingested, held_out, seed=0)
    assert len(train) == 3 and set(train["split"]) == {"train"}
    assert matched == pytest.approx(2 / 3)  # no train image of "a fish"
    assert {"a cat", "a dog"} <= set(train["caption"])
    assert train["sample_id"].is_unique
