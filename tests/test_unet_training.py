"""UnetTraining's set-up: fine-tuning from a pretrained diffusers U-Net, and the checks that protect it."""

from __future__ import annotations

import pytest
import torch

from models.sampler.unet import build_unet, default_latent_size
from tasks.common.config import UnetConfig
from tasks.train_unet.setup import check_latents_fit, default_latent_shape
from tasks.train_unet.trainer import UnetTraining, make_accelerator

SMALL = {"block_out_channels": [16, 32], "attention_head_dim": 4}


def save_unet(path, cross_attention_dim: int, in_channels: int = 4):
    torch.manual_seed(3)
    unet = build_unet(sample_size=8, in_channels=in_channels, block_out_channels=[16, 32], layers_per_block=1,
                      attention_head_dim=4, cross_attention_dim=cross_attention_dim)  # fmt: skip
    unet.save_pretrained(path)
    return unet


@pytest.mark.parametrize("layout", ["unet dir", "pipeline dir"])
def test_fine_tuning_starts_from_the_pretrained_weights(tmp_path, layout):
    where = tmp_path / "model"
    pretrained = save_unet(where / "unet" if layout == "pipeline dir" else where, cross_attention_dim=24)
    u = UnetConfig(**SMALL, pretrained=str(where))
    training = UnetTraining.build(u, make_accelerator(u), latent_shape=(4, 8, 8), cross_attention_dim=24)
    for name, weight in pretrained.state_dict().items():
        assert torch.equal(training.model.state_dict()[name], weight), name


def test_a_pretrained_unet_must_fit_the_text_encoder_and_the_vae(tmp_path):
    save_unet(tmp_path / "wide", cross_attention_dim=32)
    u = UnetConfig(**SMALL, pretrained=str(tmp_path / "wide"))
    with pytest.raises(ValueError, match=r"cross_attention_dim is 32 .* hidden size is 24"):
        UnetTraining.build(u, make_accelerator(u), latent_shape=(4, 8, 8), cross_attention_dim=24)
    save_unet(tmp_path / "rgb", cross_attention_dim=24, in_channels=3)
    u = UnetConfig(**SMALL, pretrained=str(tmp_path / "rgb"))
    with pytest.raises(ValueError, match="in_channels is 3 but the VAE's latents have 4"):
        UnetTraining.build(u, make_accelerator(u), latent_shape=(4, 8, 8), cross_attention_dim=24)
    u = UnetConfig(**SMALL, pretrained=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        UnetTraining.build(u, make_accelerator(u), latent_shape=(4, 8, 8), cross_attention_dim=24)


def test_the_pretrained_unets_own_downsampling_decides_which_latents_fit(tmp_path):
    pretrained = build_unet(sample_size=8, in_channels=4, block_out_channels=[8, 16, 16], layers_per_block=1,
                            attention_head_dim=4, cross_attention_dim=24)  # fmt: skip
    pretrained.save_pretrained(tmp_path / "three-levels")  # downsamples by 4; params' widths by 2
    u = UnetConfig(**SMALL, pretrained=str(tmp_path / "three-levels"))
    training = UnetTraining.build(u, make_accelerator(u), latent_shape=(4, 8, 8), cross_attention_dim=24)
    check_latents_fit(training.model, [(4, 8, 8)])
    with pytest.raises(ValueError, match="latents of 6x6 do not divide by the U-Net's downsampling 4"):
        check_latents_fit(training.model, [(4, 8, 8), (4, 6, 6)])


def test_without_a_square_bucket_the_model_samples_the_largest_buckets_shape():
    assert default_latent_shape([(4, 6, 10), (4, 8, 8), (4, 10, 6)]) == (4, 8, 8)
    assert default_latent_shape([(4, 6, 10), (4, 4, 6)]) == (4, 6, 10)
    u = UnetConfig(**SMALL)
    training = UnetTraining.build(u, make_accelerator(u), latent_shape=(4, 6, 10), cross_attention_dim=24)
    assert default_latent_size(training.model) == (6, 10)  # not 6x6, a shape it never trained on


def test_mixed_precision_needs_a_gpu_and_auto_is_fp32_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU behaviour")
    assert make_accelerator(UnetConfig()).mixed_precision == "no"
    with pytest.raises(ValueError, match="mixed_precision=bf16 needs a CUDA GPU"):
        make_accelerator(UnetConfig(mixed_precision="bf16"))


def test_gradient_accumulation_gives_the_step_of_the_whole_batch():
    """2 micro-batches of 4 with accumulation 2 move the weights as 1 batch of 8 does."""
    from models.diffusion.objectives import NoiseDraw
    from tasks.train_unet.trainer import MicroBatch

    torch.manual_seed(0)
    z, h, mask = torch.randn(8, 4, 8, 8), torch.randn(8, 5, 24), torch.ones(8, 5, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    draw = NoiseDraw.stack([NoiseDraw.sample(g, 1000, (4, 8, 8)) for _ in range(8)])

    def part(sl: slice) -> MicroBatch:
        return MicroBatch(
            z[sl], h[sl], mask[sl], NoiseDraw(*(getattr(draw, f)[sl] for f in NoiseDraw.__dataclass_fields__))
        )

    weights = []
    for accumulation, parts in ((1, [part(slice(0, 8))]), (2, [part(slice(0, 4)), part(slice(4, 8))])):
        torch.manual_seed(0)
        u = UnetConfig(
            **SMALL, gradient_accumulation=accumulation, warmup_steps=0, pooled_text_embedding=False
        )
        training = UnetTraining.build(u, make_accelerator(u), latent_shape=(4, 8, 8), cross_attention_dim=24)
        training.step(parts)
        weights.append(torch.cat([p.detach().flatten() for p in training.model.parameters()]))
    assert (weights[0] - weights[1]).norm() / weights[0].norm() < 1e-5
