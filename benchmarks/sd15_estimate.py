"""What fine-tuning a Stable-Diffusion-1.5-sized U-Net at 512 px costs, estimated from the model's shapes.

The U-Net is built from SD 1.5's published configuration on PyTorch's meta device (shapes, no weights, no
arithmetic), and one training step runs on it: a forward at 64x64 latents (512 px through the f=8 VAE)
with 77 CLIP tokens of width 768, then the backward. What the backward keeps is summed with saved-tensor
hooks (activation memory), with and without gradient checkpointing, in bf16 autocast's dtypes, attention
keeping what a fused kernel keeps (queries, keys, values, output, the softmax's log-sum-exp; not the
4096 x 4096 matrix of the largest level's self-attention, which GPUs never store). The step's
floating-point operations are counted with torch's FlopCounterMode. Under ldmflow the VAE and the
text encoder never sit beside the U-Net in training (train_unet reads cached latents and embeddings), so
the state that stays is the U-Net's: fp32 weights, their gradients, AdamW's two moments and the EMA copy.

    .venv/bin/python benchmarks/sd15_estimate.py [--batch 4] [--gpu-tflops 989] [--utilisation 0.4]

The time per step is the counted FLOPs over a peak bf16 rate (default: an H100 SXM's dense 989 TFLOPS)
at an assumed utilisation; measure it where a GPU is lent.
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

GIB = 2**30

# Stable Diffusion 1.5's U-Net (its unet/config.json)
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
)


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel (flash, memory-efficient) keeps for its backward; shapes only."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse, *([] if mask is None else [mask]))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v = ctx.saved_tensors[:3]
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), None


def _fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    return _FusedAttention.apply(query, key, value, attn_mask)


def one_step(unet: UNet2DConditionModel, batch: int, checkpointing: bool, keep=None) -> int:
    """Run a training step on `batch` samples (meta), `keep` seeing each tensor the backward keeps; the
    step's FLOPs."""
    if checkpointing:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    unet.train()
    latents = torch.randn(batch, 4, 64, 64, device="meta")
    tokens = torch.randn(batch, 77, 768, device="meta")
    timesteps = torch.randint(0, 1000, (batch,), device="meta")
    hooks = torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t) if keep else mock.MagicMock()
    with FlopCounterMode(display=False) as flops, hooks:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 autocast's dtypes (CUDA's are alike)
            out = unet(latents, timesteps, encoder_hidden_states=tokens).sample
        out.float().pow(2).mean().backward()
    return flops.get_total_flops()


def activation_bytes(unet: UNet2DConditionModel, batch: int, checkpointing: bool) -> int:
    """Bytes the backward of one step keeps, attention kept as a fused kernel keeps it."""
    saved = 0
    seen: set[int] = set()

    def keep(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if not (isinstance(t, torch.nn.Parameter) or t.requires_grad and t.is_leaf) and id(t) not in seen:
            seen.add(id(t))  # (a weight is counted with the model's state)
            saved += t.numel() * t.element_size()
        return t

    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", _fused_attention):
        one_step(unet, batch, checkpointing, keep)
    return saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4, help="samples per GPU step (default 4)")
    ap.add_argument("--gpu-tflops", type=float, default=989.0, help="peak dense bf16 TFLOPS (H100 SXM: 989)")
    ap.add_argument("--utilisation", type=float, default=0.4, help="fraction of the peak reached (0.4)")
    args = ap.parse_args()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    params = sum(p.numel() for p in unet.parameters())
    state = params * 4 * (1 + 1 + 2 + 1)  # fp32 weights, gradients, AdamW's 2 moments, EMA
    print(f"U-Net parameters: {params / 1e6:.1f} M")
    print(f"state (fp32 weights + gradients + AdamW moments + EMA): {state / GIB:.1f} GiB")
    for checkpointing in (False, True):
        saved, flops = (
            activation_bytes(unet, args.batch, checkpointing),
            one_step(unet, args.batch, checkpointing),
        )
        seconds = flops / (args.gpu_tflops * 1e12 * args.utilisation)
        mode = "on " if checkpointing else "off"
        print(f"gradient checkpointing {mode}: activations {saved / GIB:.1f} GiB "
              f"at batch {args.batch} ({saved / args.batch / GIB:.2f} GiB a sample), total "
              f"{(state + saved) / GIB:.1f} GiB; {flops / 1e12:.1f} TFLOP a step, about {seconds:.2f} s at "
              f"{args.utilisation:.0%} of {args.gpu_tflops:.0f} TFLOPS")  # fmt: skip


if __name__ == "__main__":
    main()
