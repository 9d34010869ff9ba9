"""Stable Diffusion's text encoders: a CLIP text model folder, an SD pipeline folder (`text_encoder/` beside
`tokenizer/`) and a whole CLIP model load alike; `clip_skip` reads an earlier layer, through CLIP's final
layer norm, and changes the text cache's keys; the token length defaults to the tokenizer's (77)."""

from __future__ import annotations

import pytest
import torch
from tiny_sd import tiny_clip_text_model, write_clip_tokenizer, write_sd_text_parts
from transformers import CLIPConfig, CLIPModel

from models.sampler.text_encoder import (
    check_clip_skip,
    encode_captions,
    load_text_encoder,
    resolve_max_length,
    tokenizer_settings,
)
from tasks.embed_text import text_keys

CAPTIONS = ["a small red circle", "a large blue square", ""]


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return write_sd_text_parts(tmp_path_factory.mktemp("sd"))


def test_an_sd_pipeline_folder_a_text_model_folder_and_a_whole_clip_load_alike(sd_folder, tmp_path):
    tokenizer, model = load_text_encoder(str(sd_folder))
    assert type(model).__name__ == "CLIPTextModel" and resolve_max_length(tokenizer, None) == 77
    want, mask = encode_captions(tokenizer, model, CAPTIONS, 77)
    assert want.shape == (3, 77, 32) and mask.sum(1).tolist() == [6, 6, 2]  # start, words, end

    flat = tmp_path / "flat"
    write_clip_tokenizer(flat)
    model.save_pretrained(flat)
    torch.testing.assert_close(encode_captions(*load_text_encoder(str(flat)), CAPTIONS, 77)[0], want)

    vision = {"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 8, "patch_size": 4}  # fmt: skip
    whole = CLIPModel(CLIPConfig(text_config=model.config.to_dict(), vision_config=vision))
    whole.text_model.load_state_dict(model.state_dict())
    whole.save_pretrained(tmp_path / "whole")
    write_clip_tokenizer(tmp_path / "whole")
    tokenizer, text_half = load_text_encoder(str(tmp_path / "whole"))
    assert type(text_half).__name__ == "CLIPTextModel"
    torch.testing.assert_close(encode_captions(tokenizer, text_half, CAPTIONS, 77)[0], want)


def test_clip_skip_reads_an_earlier_layer_and_keys_the_cache_apart(sd_folder):
    tokenizer, model = load_text_encoder(str(sd_folder))
    last, _ = encode_captions(tokenizer, model, CAPTIONS, 77)
    skipped, _ = encode_captions(tokenizer, model, CAPTIONS, 77, clip_skip=1)
    ids = tokenizer(CAPTIONS, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        states = model(**ids, output_hidden_states=True).hidden_states
        penultimate = model.final_layer_norm(states[-2])  # as diffusers' SD pipelines take it
    torch.testing.assert_close(skipped, penultimate)
    assert (skipped - last).abs().max() > 0.1

    check_clip_skip(model, 2)
    with pytest.raises(ValueError, match="text.clip_skip=3: the encoder has 3 layers"):
        check_clip_skip(model, 3)

    plain, skip = tokenizer_settings(tokenizer, 77), tokenizer_settings(tokenizer, 77, clip_skip=1)
    assert "clip_skip" not in plain and plain == tokenizer_settings(tokenizer, 77, clip_skip=0)
    assert text_keys(CAPTIONS, "fp", plain) != text_keys(CAPTIONS, "fp", skip)


def test_a_tokenizer_without_a_limit_needs_max_length(tmp_path):
    tokenizer = write_clip_tokenizer(tmp_path)
    assert resolve_max_length(tokenizer, 24) == 24
    tokenizer.model_max_length = int(1e30)  # transformers' "no limit"
    with pytest.raises(ValueError, match="set text.max_length"):
        resolve_max_length(tokenizer, None)
    tiny_clip_text_model(len(tokenizer))  # builds from its config
