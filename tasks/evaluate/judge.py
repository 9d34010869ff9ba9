"""Evaluation's judge (models/judges/judge.py): trained on the real train split against the text cache's
frozen caption embeddings, kept in object storage under a key of everything it is trained from.

The key hashes the train split's pixels and captions, the text cache's encoder and tokenizer settings,
`eval.judge` and the seed, but nothing of the U-Net: a new U-Net is judged by the same judge as the
last one, so their numbers compare. It is retrained only when one of those inputs changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from infra.storage import ObjectNotFound, ObjectStore
from models.judges.judge import Judge, JudgeShape, embed_caption_rows, train_judge
from models.judges.judge_metrics import r_precision
from models.sampler.device import pick_device
from tasks.common.captions import CaptionTable
from tasks.common.config import Config
from tasks.common.ingested import image_groups
from tasks.common.keys import content_key
from tasks.common.paths import CACHE_INFO, MANIFEST

# What the stored judge is and how it is trained: part of its key, bumped when either changes.
JUDGE_FORMAT = 1


@dataclass
class ReadyJudge:
    """The judge, the caption embeddings it reads, and the held-out captions R-precision pools from."""

    judge: Judge
    key: str
    trained_now: bool
    captions: CaptionTable
    pool: np.ndarray  # caption-table rows of the distinct held-out captions
    pool_emb: torch.Tensor  # [len(pool), embed_dim]
    pool_size: int

    def r_precision(self, image_emb: torch.Tensor, captions: list[str], seed: int) -> tuple[float, int]:
        """R-precision of images against their (held-out) captions; returns (score, pool size)."""
        position = {row: i for i, row in enumerate(self.pool)}
        own = np.array([position[row] for row in self.captions.rows_of(captions)])
        return r_precision(image_emb, own, self.pool_emb, self.pool_size, seed)


def judge_key(cfg: Config, manifest: pd.DataFrame, text_info: dict) -> str:
    train = manifest[manifest["split"] == "train"]
    return content_key(
        {"format": JUDGE_FORMAT, "seed": cfg.seed, "judge": cfg.eval.judge.model_dump(mode="json")},
        {k: text_info[k] for k in ("encoder_fingerprint", "tokenizer", "max_length")},
        list(train["sha256"]),  # the stored pixels
        list(train["caption"]),
    )


def _stored(store: ObjectStore, key: str, shape: JudgeShape) -> Judge | None:
    """The stored judge, or None when there is none or it does not load (then it is trained again)."""
    try:
        judge = Judge(shape)
        judge.load_state_dict(load(store.get_bytes(key)))
    except ObjectNotFound:
        return None
    except (SafetensorError, ValueError, KeyError, RuntimeError) as err:
        print(f"judge: {store.uri(key)} does not load ({err}); training it again")
        return None
    return judge


def ready_judge(
    cfg: Config, ingested: Path, text_dir: Path, captions: CaptionTable, store: ObjectStore
) -> ReadyJudge:
    """The judge for this data: loaded from object storage, or trained and stored."""
    j = cfg.eval.judge
    manifest = pd.read_parquet(ingested / MANIFEST)
    text_info = json.loads((text_dir / CACHE_INFO).read_text())
    key = store.key("judge", f"{judge_key(cfg, manifest, text_info)}.safetensors")
    shape = JudgeShape(int(text_info["hidden_size"]), j.embed_dim, j.width, resolution=j.resolution)
    judge = _stored(store, key, shape)  # the key fixes the shape
    trained_now = judge is None
    if judge is None:
        train = image_groups(ingested, "train")
        groups = [(images, captions.rows_of(rows["caption"])) for rows, images in train]
        judge = train_judge(groups, captions.rows, shape, steps=j.steps, batch_size=j.batch_size, lr=j.lr,
                            seed=cfg.seed)  # fmt: skip
        store.put_bytes(key, save({k: v.contiguous().cpu() for k, v in judge.state_dict().items()}))
    judge = judge.to(pick_device()).eval()
    pool = captions.rows_of(sorted(set(manifest.loc[manifest["split"] == "val", "caption"])))
    pool_emb = embed_caption_rows(judge, captions.rows, pool)
    return ReadyJudge(judge, key, trained_now, captions, pool, pool_emb, j.pool_size)
