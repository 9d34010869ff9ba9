"""Tiny Stable-Diffusion-shaped parts built from configs, for tests: a CLIP tokenizer written here (a
byte-pair vocabulary of lower-case letters and a few words) and a CLIP text model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

WORDS = ("red", "blue", "circle", "square", "small", "large")


def write_clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP tokenizer (vocab.json + merges.txt) that spells any lower-case text and knows WORDS whole."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(f"{c}</w>" for c in letters)]
    merges = []
    for word in WORDS:  # merge left to right: "r e", "re d</w>"
        done = word[0]
        for i, c in enumerate(word[1:], start=1):
            piece = c + ("</w>" if i == len(word) - 1 else "")
            merges.append(f"{done} {piece}")
            done += piece
            if done not in tokens:
                tokens.append(done)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_clip_text_model(vocab_size: int, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
                            num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)  # fmt: skip
    return CLIPTextModel(config).eval()


def write_sd_text_parts(root: Path) -> Path:
    """An SD pipeline folder's text half: `tokenizer/` and `text_encoder/` under `root`."""
    tokenizer = write_clip_tokenizer(root / "tokenizer")
    tiny_clip_text_model(len(tokenizer)).save_pretrained(root / "text_encoder")
    return root


def write_sd_pipeline(root: Path) -> Path:
    """A tiny Stable Diffusion pipeline folder: `vae/` (f=2, SD's global scaling factor), `text_encoder/`,
    `tokenizer/` and `unet/` (cross-attention to the 32-wide CLIP tokens), each saved with save_pretrained."""
    from models.autoencoder.vae import build_vae
    from models.sampler.unet import build_unet

    write_sd_text_parts(root)
    torch.manual_seed(1)
    vae = build_vae(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4, latent_channels=4)
    vae.register_to_config(scaling_factor=0.18215)
    vae.save_pretrained(root / "vae")
    unet = build_unet(sample_size=8, in_channels=4, block_out_channels=[16, 32], layers_per_block=1,
                      attention_head_dim=4, cross_attention_dim=32)  # fmt: skip
    unet.save_pretrained(root / "unet")
    return root
