"""embed_text stage: per-token text embeddings for every distinct caption (and the empty one) in S3.

A caption's key hashes the caption, the encoder weights' fingerprint and the tokenizer settings.
Shards hold `hidden` (float16 [N, L, D]) and `mask` (int8 [N, L]).
Writes `artifacts/text/manifest.parquet` (caption -> shard) and `artifacts/text/cache.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from models.fingerprint import module_fingerprint
from models.text_encoder import encode_captions, load_text_encoder, tokenizer_settings
from tasks.cache import build_cache, previous_refs, ref_columns
from tasks.config import Config
from tasks.keys import content_key
from tasks.storage import ObjectStore
from tasks.tracking import Run

MANIFEST = "manifest.parquet"
INFO = "cache.json"
EMPTY_CAPTION = ""


def text_keys(captions: list[str], encoder_fingerprint: str, settings: dict) -> list[str]:
    return [content_key(c, encoder_fingerprint, settings) for c in captions]


def run_embed_text(
    cfg: Config, ingested: Path, out: Path, store: ObjectStore, tracker: Run | None = None
) -> dict:
    captions = sorted(set(pd.read_parquet(ingested / "manifest.parquet")["caption"]) | {EMPTY_CAPTION})
    tokenizer, encoder = load_text_encoder(cfg.text.encoder)
    fingerprint = module_fingerprint(encoder)
    settings = tokenizer_settings(tokenizer, cfg.text.max_length)
    keys = text_keys(captions, fingerprint, settings)

    def encode(indices: list[int]) -> dict[str, torch.Tensor]:
        hidden, mask = encode_captions(
            tokenizer, encoder, [captions[i] for i in indices], cfg.text.max_length
        )
        return {"hidden": hidden.half(), "mask": mask.to(torch.int8)}

    # over-long captions are kept (truncated to text.max_length tokens) and counted
    lengths = [len(ids) for ids in tokenizer(captions, truncation=False)["input_ids"]]
    truncated = sum(n > cfg.text.max_length for n in lengths)
    if truncated:
        limit = f"text.max_length={cfg.text.max_length}"
        print(f"{truncated} of {len(captions)} distinct captions exceed {limit} tokens (kept, truncated)")
    previous = previous_refs(out / MANIFEST, "text_key")  # what the last build stored, kept if intact
    stats = build_cache(store, "text", keys, cfg.text.shard_size, encode, "embed_text", previous)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "caption": captions,
            "text_key": keys,
            **ref_columns(stats.refs),
        }
    ).to_parquet(out / MANIFEST, index=False)
    info = {
        "encoder": cfg.text.encoder,
        "encoder_fingerprint": fingerprint,
        "tokenizer": settings,
        "hidden_size": int(encoder.config.hidden_size),
        "max_length": cfg.text.max_length,
        "bucket": store.bucket,
        "captions": len(captions),
        "captions_truncated": truncated,
        "longest_caption_tokens": max(lengths),
        **stats.summary(),
    }
    (out / INFO).write_text(json.dumps(info, indent=2) + "\n")
    if tracker:
        tracker.log_metrics({**stats.summary(), "captions_truncated": truncated})
    return info
