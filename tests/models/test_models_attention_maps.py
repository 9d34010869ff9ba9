"""Cross-attention maps: recording them leaves the samples as they were, keeps only the conditional half of
a guided batch, leaves padding out, and accounts for all of each position's attention."""

import numpy as np
import pytest
import torch

from models.views.attention_maps import CrossAttentionMaps, explain


def test_maps_on_give_the_same_images_and_a_map_per_real_token(tiny_pipe):
    prompts = ["a small red circle at the top left", "a blue square"]
    plain = tiny_pipe.generate(prompts, num_inference_steps=3, guidance_scale=3.0, seed=5)
    explained = explain(tiny_pipe, prompts, seed=5, steps=3, guidance=3.0)
    np.testing.assert_array_equal(np.stack([e.image for e in explained]), plain)  # bit for bit
    assert "circle" in explained[0].tokens and "square" in explained[1].tokens
    for prompt, found in zip(prompts, explained, strict=True):
        _, mask = tiny_pipe.encode([prompt])
        assert len(found.tokens) == int(mask.sum()) < tiny_pipe.max_length  # padding left out
        assert "[PAD]" not in found.tokens
        assert found.maps.shape == (len(found.tokens), *found.image.shape[:2])
        flat = found.maps.reshape(len(found.tokens), -1)
        assert np.isclose(flat.max(1), 1.0).all() and np.isclose(flat.min(1), 0.0).all()


def test_every_position_spends_its_attention_on_the_real_tokens(tiny_pipe):
    hidden, mask = tiny_pipe.encode(["a red circle"])
    noise = tiny_pipe.initial_noise(1, 0)
    with CrossAttentionMaps(tiny_pipe.unet, 1, tuple(noise.shape[-2:])) as recorder:
        tiny_pipe.sample(hidden, mask, noise, 2, 3.0)
    layers = sum(name.endswith("attn2.processor") for name in tiny_pipe.unet.attn_processors)
    assert recorder.calls == layers * 2  # every cross-attention layer at each of the two steps
    per_position = recorder.total.sum(1)  # over all tokens, padding included: 1 per layer and step
    torch.testing.assert_close(per_position, torch.full_like(per_position, recorder.calls), atol=1e-4, rtol=0)
    padding = recorder.total[0, ~mask[0].bool()]
    assert float(padding.max()) < 1e-6  # a masked token gets nothing
    assert all(type(p).__name__ != "_Recording" for p in tiny_pipe.unet.attn_processors.values())  # restored


def test_a_guided_batch_keeps_its_conditional_half():
    recorder = CrossAttentionMaps(unet=None, batch=1, latent_size=(2, 2))
    uncond, cond = torch.zeros(1, 4, 3), torch.ones(1, 4, 3)
    recorder.add(torch.cat([uncond, cond]))
    assert torch.equal(recorder.total, torch.ones(1, 3, 2, 2))


def test_guidance_zero_has_no_prompt_attention_to_show(tiny_pipe):
    with pytest.raises(ValueError, match="without the prompt"):
        explain(tiny_pipe, ["a red circle"], seed=0, steps=2, guidance=0.0)
