"""Cross-attention maps: which region of the image each token of the prompt draws on.

The U-Net's cross-attention layers (`attn2` in diffusers' transformer blocks) let every latent position
attend over the prompt's tokens. Following DAAM (Tang et al. 2023), a token's map is its attention
probability at each position, averaged over heads, upsampled to the latent's size and summed over every
cross-attention layer and every sampling step.

Recording goes through diffusers' attention-processor API: each cross-attention layer's processor is
wrapped, the wrapped one still computes the layer's output (so sampling with maps on gives the same
images, bit for bit), and the wrapper computes the attention probabilities beside it. Only the
conditional half of a guided batch is kept: the unconditional half attends to the empty caption.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel


def cross_attention_probs(attn: Any, hidden_states: torch.Tensor, context: torch.Tensor,
                          attention_mask: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """softmax(Q K^T / sqrt(d) + mask) of one diffusers Attention layer, averaged over heads: [B, Q, K]."""
    if hidden_states.ndim == 4:  # [B, C, H, W] -> [B, HW, C], as the processors do
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    batch, tokens = context.shape[0], context.shape[1]
    mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query = attn.head_to_batch_dim(attn.to_q(hidden_states))
    key = attn.head_to_batch_dim(attn.to_k(context))
    probs = attn.get_attention_scores(query, key, mask)  # [B * heads, Q, K]
    return probs.float().view(batch, attn.heads, *probs.shape[1:]).mean(1)


class _Recording:
    """A cross-attention processor that computes what `inner` computes, and hands the probabilities on."""

    def __init__(self, inner: Any, sink: CrossAttentionMaps) -> None:
        self.inner, self.sink = inner, sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        if encoder_hidden_states is not None:
            with torch.no_grad():
                probs = cross_attention_probs(attn, hidden_states, encoder_hidden_states, attention_mask)
            self.sink.add(probs)
        return out


class CrossAttentionMaps:
    """`with CrossAttentionMaps(unet, batch, latent_size) as maps:` sample; then `maps.total` [batch, K, h, w]
    holds each token's attention, summed over layers and steps, at the latent's resolution. `batch` is the
    number of images sampled: a guided batch [unconditional; conditional] of 2 x batch keeps its last half."""

    def __init__(self, unet: UNet2DConditionModel, batch: int, latent_size: tuple[int, int]) -> None:
        self.unet, self.batch, self.latent_size = unet, batch, latent_size
        self.total: torch.Tensor | None = None
        self.calls = 0
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> CrossAttentionMaps:
        self._saved = dict(self.unet.attn_processors)
        wrapped = {name: _Recording(proc, self) if name.endswith("attn2.processor") else proc
                   for name, proc in self._saved.items()}  # fmt: skip
        if not any(isinstance(proc, _Recording) for proc in wrapped.values()):
            raise ValueError("the U-Net has no cross-attention layers (attn2) to record")
        self.unet.set_attn_processor(wrapped)
        return self

    def __exit__(self, *exc: object) -> None:
        self.unet.set_attn_processor(self._saved)

    def add(self, probs: torch.Tensor) -> None:
        """One layer's probabilities at one step, [B or 2B, Q, K]."""
        probs = probs[-self.batch :]  # the conditional half
        h0, w0 = self.latent_size
        factor = round((h0 * w0 / probs.shape[1]) ** 0.5)  # this layer's downsampling
        h, w = h0 // factor, w0 // factor
        if h * w != probs.shape[1]:
            raise ValueError(f"cannot place {probs.shape[1]} query positions on a {h0}x{w0} latent")
        grid = probs.transpose(1, 2).reshape(self.batch, probs.shape[2], h, w)
        if factor > 1:
            grid = F.interpolate(grid, size=(h0, w0), mode="bilinear", align_corners=False)
        self.total = grid.cpu() if self.total is None else self.total + grid.cpu()
        self.calls += 1


@dataclass
class Explanation:
    """One sample and its tokens' maps."""

    image: np.ndarray  # uint8 [H, W, 3]
    tokens: list[str]  # the prompt's tokens, padding left out
    maps: np.ndarray  # float [len(tokens), H, W], each stretched to [0, 1] (its minimum 0, its maximum 1)


def explain(pipe: Any, prompts: list[str], seed: int, steps: int, guidance: float) -> list[Explanation]:
    """Sample `prompts` exactly as `pipe.generate(prompts, seed=seed)` does, with each token's map
    (a LatentDiffusionPipeline; guidance 0 has no conditional branch to look at, so it is refused)."""
    if guidance == 0:
        raise ValueError("guidance_scale 0 samples without the prompt: there is no prompt attention to show")
    hidden, mask = pipe.encode(list(prompts))
    noise = pipe.initial_noise(len(prompts), seed)
    with CrossAttentionMaps(pipe.unet, len(prompts), tuple(noise.shape[-2:])) as recorder:
        images = pipe.sample(hidden, mask, noise, steps, guidance)
    size = images.shape[1:3]
    maps = F.interpolate(recorder.total, size=size, mode="bilinear", align_corners=False)
    ids = pipe.tokenizer(list(prompts), max_length=pipe.max_length, padding="max_length", truncation=True)
    out = []
    for i, image in enumerate(images):
        kept = mask[i].bool().cpu()  # padding is masked: it gets no attention and no map
        tokens = pipe.tokenizer.convert_ids_to_tokens(torch.tensor(ids["input_ids"][i])[kept].tolist())
        # each map stretched to [0, 1], as DAAM shows them: even a token that attends almost evenly shows
        # where it attends most
        token_maps = maps[i][kept].flatten(1)
        low, high = token_maps.amin(1, keepdim=True), token_maps.amax(1, keepdim=True)
        stretched = (token_maps - low) / (high - low).clamp_min(1e-12)
        out.append(Explanation(image, tokens, stretched.view(-1, *size).numpy()))
    return out
