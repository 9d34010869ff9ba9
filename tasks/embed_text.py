"""embed_text stage: per-token text embeddings for every distinct caption (and the empty one) in S3.

A caption's key hashes the caption, the encoder weights' fingerprint and the tokenizer settings (with
`text.clip_skip`, the layer read too).
Shards hold `hidden` (float16 [N, L, D]) and `mask` (int8 [N, L]).
Writes `artifacts/text/manifest.parquet` (caption -> shard) and `artifacts/text/cache.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from infra.storage import ObjectStore, object_store_from_config
from infra.tracking import Run
from models.fingerprint import module_fingerprint
from models.sampler.device import pick_device
from models.sampler.text_encoder import (
    check_clip_skip,
    encode_captions,
    load_text_encoder,
    resolve_max_length,
    tokenizer_settings,
)
from tasks.common.atomic_dir import recover, replaced_dir
from tasks.common.config import Config
from tasks.common.content_cache import (
    ModelInProcess,
    ShardMap,
    build_cache,
    previous_refs,
    ref_columns,
    store_shards_here,
)
from tasks.common.keys import content_keys
from tasks.common.paths import CACHE_INFO, MANIFEST, ProjectPaths

EMPTY_CAPTION = ""


# What a text shard stores of a caption (per-token hidden states in float16 and the attention mask):
# part of every key, so a change to it is bumped here and never reuses an old shard.
TEXT_FORMAT = 2


def text_keys(captions: list[str], encoder_fingerprint: str, settings: dict) -> list[str]:
    return content_keys(captions, encoder_fingerprint, {"format": TEXT_FORMAT, **settings})


ENCODERS = ModelInProcess(lambda spec: load_text_encoder(spec, pick_device()), weights=lambda pair: pair[1])


@dataclass(frozen=True)
class CaptionEncoder:
    """Token embeddings and attention masks of captions. Picklable: it loads the encoder by name."""

    encoder: str
    fingerprint: str
    max_length: int
    clip_skip: int = 0

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        tokenizer, model = ENCODERS.get(self.encoder, self.fingerprint)
        hidden, mask = encode_captions(tokenizer, model, captions, self.max_length, clip_skip=self.clip_skip)
        return {"hidden": hidden.half().cpu(), "mask": mask.to(torch.int8).cpu()}


def run_embed_text(
    cfg: Config,
    ingested: Path,
    out: Path,
    store: ObjectStore,
    tracker: Run | None = None,
    map_shards: ShardMap = store_shards_here,
) -> dict:
    captions = sorted(set(pd.read_parquet(ingested / MANIFEST)["caption"]) | {EMPTY_CAPTION})
    tokenizer, encoder = load_text_encoder(cfg.text.encoder, pick_device())
    fingerprint = module_fingerprint(encoder)
    ENCODERS.keep(cfg.text.encoder, fingerprint, (tokenizer, encoder))  # shard jobs in this process use it
    max_length, clip_skip = resolve_max_length(tokenizer, cfg.text.max_length), cfg.text.clip_skip
    check_clip_skip(encoder, clip_skip)
    settings = tokenizer_settings(tokenizer, max_length, clip_skip)
    keys = text_keys(captions, fingerprint, settings)
    encode = CaptionEncoder(cfg.text.encoder, fingerprint, max_length, clip_skip)

    # over-long captions are kept (truncated to text.max_length tokens) and counted
    lengths = [len(ids) for ids in tokenizer(captions, truncation=False)["input_ids"]]
    truncated = sum(n > max_length for n in lengths)
    if truncated:
        limit = f"text.max_length={max_length}"
        print(f"{truncated} of {len(captions)} distinct captions exceed {limit} tokens (kept, truncated)")
    recover(out)  # a build killed mid-swap
    previous = previous_refs(out / MANIFEST, "text_key")  # what the last build stored, kept if intact
    stats = build_cache(
        store, "text", keys, captions, cfg.text.shard_size, encode, "embed_text", previous, map_shards
    )
    manifest = pd.DataFrame({"caption": captions, "text_key": keys, **ref_columns(stats.refs)})
    info = {
        "encoder": cfg.text.encoder,
        "encoder_fingerprint": fingerprint,
        "tokenizer": settings,
        "hidden_size": int(encoder.config.hidden_size),
        "max_length": max_length,
        "clip_skip": clip_skip,
        "bucket": store.bucket,
        "captions": len(captions),
        "captions_truncated": truncated,
        "longest_caption_tokens": max(lengths),
        **stats.summary(),
    }
    with replaced_dir(out) as staging:  # the manifest and its info appear together or not at all
        manifest.to_parquet(staging / MANIFEST, index=False)
        (staging / CACHE_INFO).write_text(json.dumps(info, indent=2) + "\n")
    if tracker:
        tracker.log_metrics({**stats.summary(), "captions_truncated": truncated})
    return info


def main(cfg: Config, paths: ProjectPaths, tracker: Run, map_shards: ShardMap = store_shards_here) -> dict:
    store = object_store_from_config(cfg.storage, paths.s3_state)
    try:
        return run_embed_text(cfg, paths.ingested, paths.text, store, tracker, map_shards)
    finally:
        ENCODERS.release()  # the next stages need the device's memory
