"""CLIP score from a local CLIP folder, offline: a tiny CLIP built from config (random weights, a
character-level tokenizer) stands in for a downloaded one. The numbers mean nothing here; what is checked
is that the folder is what gets loaded and scored, with nothing fetched."""

import numpy as np
import pandas as pd
import pytest
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tasks.evaluate.clip import ClipReference


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-clip")
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])  # one token a character
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = {**small, "vocab_size": len(tokens), "max_position_embeddings": 77,
            "bos_token_id": len(tokens) - 2, "eos_token_id": len(tokens) - 1}  # fmt: skip
    config = CLIPConfig(text_config=text, vision_config={**small, "image_size": 32, "patch_size": 8},
                        projection_dim=16)  # fmt: skip
    CLIPModel(config).save_pretrained(folder)
    return folder


def test_clip_score_comes_from_the_local_folder(clip_folder):
    rng = np.random.default_rng(0)
    held_out = [(pd.DataFrame({"caption": ["a red circle", "a blue square"]}),
                 rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8))]  # fmt: skip
    clip = ClipReference(str(clip_folder), held_out)
    scores = clip.scores(rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8), ["a", "b c", "a red circle"])
    assert set(scores) == {"clip_score", "clip_score_real"}
    assert all(0.0 <= v <= 100.0 for v in scores.values())


def test_a_folder_without_a_clip_model_is_named(tmp_path):
    with pytest.raises(ValueError, match="eval.clip_model"):
        ClipReference(str(tmp_path), [])
