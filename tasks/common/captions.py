"""Every distinct caption's token embeddings, read a micro-batch of rows at a time.

The text cache's shards are copied once into a local folder (each verified against its checksum and
named by it) and a batch's rows are read from there on demand, so memory holds a batch's rows however
many captions there are: with CLIP-L (77 x 768 tokens) a caption is 118 KB in float16, 11.8 GB per 100k.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open

from infra.storage import ObjectNotFound, ObjectStore
from tasks.common.cache_shards import CorruptShard
from tasks.common.shard_folder import ShardFolder


class CaptionTable:
    """Rows of the text cache (its manifest's order): token embeddings and attention masks."""

    def __init__(self, store: ObjectStore, manifest: pd.DataFrame, folder: Path) -> None:
        local = ShardFolder(store, folder, max_bytes=sys.maxsize, heal="embed_text")  # never evicted
        shards = dict(zip(manifest["shard"], manifest["shard_sha256"], strict=True))
        try:
            files = {shard: local.path(shard, sha) for shard, sha in shards.items()}
        except ObjectNotFound as err:  # a corrupt one says so itself: never trained on, embed_text heals it
            raise CorruptShard(f"{err}\nrun `ldmflow run embed_text --force` to recompute it") from err
        self.file_of = [files[s] for s in manifest["shard"]]  # row -> local shard file
        self.row_of = {caption: row for row, caption in enumerate(manifest["caption"])}
        self.index_of = manifest["shard_index"].to_numpy()  # row -> its position in that shard
        with safe_open(self.file_of[0], "pt") as f:
            _, self.length, self.hidden_size = f.get_slice("hidden").get_shape()  # [n, L, D]

    def __len__(self) -> int:
        return len(self.file_of)

    def rows_of(self, captions: list[str] | pd.Series) -> np.ndarray:
        """The table rows of `captions`; a caption the text cache lacks is an error naming it."""
        missing = [c for c in dict.fromkeys(captions) if c not in self.row_of]
        if missing:
            raise ValueError(f"the text cache has no embedding for captions {missing[:3]}: re-run embed_text")
        return np.array([self.row_of[c] for c in captions], dtype=np.int64)

    def rows(self, rows: torch.Tensor | np.ndarray | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings (float32 [B, L, D]) and attention masks (int64 [B, L]) of rows `rows`."""
        # positions as given; a slice is made positions (no table-sized index per micro-batch)
        picked = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows).reshape(-1)
        hidden = torch.empty((len(picked), self.length, self.hidden_size), dtype=torch.float32)
        mask = torch.empty((len(picked), self.length), dtype=torch.long)
        by_file: dict[Path, list[int]] = {}
        for pos, row in enumerate(picked):
            by_file.setdefault(self.file_of[row], []).append(pos)
        for file, positions in by_file.items():
            with safe_open(file, "pt") as f:
                stored_hidden, stored_mask = f.get_slice("hidden"), f.get_slice("mask")
                for pos in positions:
                    index = int(self.index_of[picked[pos]])
                    hidden[pos], mask[pos] = stored_hidden[index], stored_mask[index]
        return hidden, mask
