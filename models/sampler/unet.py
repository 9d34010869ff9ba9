"""The denoising U-Net: diffusers UNet2DConditionModel with self- and cross-attention at every level."""

from __future__ import annotations

import math

from diffusers import UNet2DConditionModel


def _norm_groups(widths: list[int]) -> int:
    """Largest GroupNorm group count <= 32 that divides every width."""
    g = math.gcd(*widths)
    return max(d for d in (32, 16, 8, 4, 2, 1) if g % d == 0)


def build_unet(
    *,
    sample_size: int | tuple[int, int],
    in_channels: int,
    block_out_channels: list[int],
    layers_per_block: int,
    attention_head_dim: int,
    cross_attention_dim: int,
    pooled_text_embedding: bool = False,
) -> UNet2DConditionModel:
    """A conditional U-Net on latents [B, in_channels, h, w]; `sample_size` (h and w, or (h, w)) is the
    size it samples by default.

    Each level has ResNet blocks plus a transformer block (self-attention, then cross-attention whose
    queries are image features and keys/values the text tokens [B, L, cross_attention_dim]).
    `attention_head_dim` is the width of one attention head (so a level of width w has w / head_dim heads).
    `pooled_text_embedding` also adds an attention-pooled summary of the tokens to the timestep embedding
    (diffusers' addition_embed_type="text", as in Kandinsky/SDXL's pooled text conditioning), which
    reaches every ResNet block: global attributes such as colour are then learnt much sooner.
    """
    bad = [w for w in block_out_channels if w % attention_head_dim]
    if bad:
        raise ValueError(f"attention_head_dim={attention_head_dim} must divide every block width, not {bad}")
    n = len(block_out_channels)
    if any(side % 2 ** (n - 1) for side in _sides(sample_size)):
        raise ValueError(f"sample_size={sample_size} must be divisible by 2^{n - 1} for {n} U-Net levels")
    # diffusers' `attention_head_dim` argument is really the number of heads per level (a known naming
    # issue, diffusers #2011), so pass heads = width / head_dim to get heads of the requested width.
    heads = tuple(w // attention_head_dim for w in block_out_channels)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        norm_num_groups=_norm_groups(block_out_channels),
        attention_head_dim=heads,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text" if pooled_text_embedding else None,
        addition_embed_type_num_heads=_pooling_heads(cross_attention_dim),
    )


def _sides(sample_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)


def default_latent_size(unet: UNet2DConditionModel) -> tuple[int, int]:
    """(h, w) of the latents the U-Net samples by default (diffusers' `sample_size`: one int or (h, w))."""
    return _sides(unet.config.sample_size)


def _pooling_heads(width: int) -> int:
    """Heads of the text pooling: diffusers' default 64 if it divides the width, else the largest divisor."""
    return max(h for h in (64, 32, 16, 8, 4, 2, 1) if width % h == 0)


def check_cross_attention_dim(unet: UNet2DConditionModel, hidden_size: int) -> None:
    """Raise if the U-Net's cross-attention width differs from the text encoder's hidden size."""
    expected = unet.config.cross_attention_dim
    if expected != hidden_size:
        raise ValueError(
            f"U-Net cross_attention_dim is {expected} but the text encoder's hidden size is {hidden_size}; "
            "train the U-Net with this encoder or use the encoder it was trained with"
        )


def check_unet_fits(unet: UNet2DConditionModel, latent_channels: int, text_hidden_size: int) -> None:
    """A pretrained U-Net must take this VAE's latents and this text encoder's tokens."""
    check_cross_attention_dim(unet, text_hidden_size)
    if unet.config.in_channels != latent_channels:
        raise ValueError(
            f"U-Net in_channels is {unet.config.in_channels} but the VAE's latents have {latent_channels} "
            "channels; fine-tune a U-Net made for this VAE"
        )
