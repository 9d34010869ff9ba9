"""Training batches streamed from cache shards in object storage.

An epoch's batches are planned from the manifest alone, so the plan is cheap, deterministic and
resumable: shards are shuffled by (seed, epoch), taken `window` at a time, and the samples of each
window shuffled together (so a batch mixes shards); a batch holds samples of one shape (one
aspect-ratio bucket), and each sample comes at most once an epoch (a bucket's last partial batch waits
for the next window, and is dropped at the epoch's end). `(epoch, batch)` is an exact position to resume
from.

Shards are fetched ahead of use by a background thread into a size-bounded local folder (least recently
used shards are evicted), each verified against its checksum on arrival.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from infra.storage import ObjectStore
from tasks.common.shard_folder import ShardFolder


@dataclass(frozen=True)
class Batch:
    epoch: int
    index: int  # position in the epoch's plan: (epoch, index + 1) resumes right after this batch
    rows: np.ndarray  # row numbers in the items table


def plan_epoch(items: pd.DataFrame, batch_size: int, seed: int, epoch: int, window: int) -> list[np.ndarray]:
    """The epoch's batches as arrays of row numbers (see the module docstring)."""
    rng = np.random.default_rng([seed, epoch])
    rows_of = items.groupby("shard", sort=True).indices  # shard -> row numbers
    names = list(rows_of)
    shards = [names[i] for i in rng.permutation(len(names))]
    buckets = items["bucket"].to_numpy()
    pending: dict[str, list[int]] = {}  # bucket -> rows waiting for a full batch
    batches = []
    for start in range(0, len(shards), window):
        rows = np.concatenate([rows_of[s] for s in shards[start : start + window]])
        for row in rng.permutation(rows):
            waiting = pending.setdefault(buckets[row], [])
            waiting.append(int(row))
            if len(waiting) == batch_size:
                batches.append(np.array(waiting))
                waiting.clear()
    return batches


class LatentStream:
    """Batches of cached latents ({name: tensor [B, ...]} plus the batch's rows), prefetched."""

    def __init__(
        self,
        store: ObjectStore,
        items: pd.DataFrame,  # one row per sample: shard, shard_sha256, shard_index, bucket
        batch_size: int,
        seed: int,
        folder: Path,
        max_bytes: int = 2**31,
        window: int = 4,
        prefetch: int = 4,
    ) -> None:
        self.items = items.reset_index(drop=True)
        self.batch_size, self.seed, self.window, self.prefetch = batch_size, seed, window, prefetch
        self.shards = ShardFolder(store, folder, max_bytes)
        self._loaded: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()  # a few decoded shards
        self._sha = dict(zip(self.items["shard"], self.items["shard_sha256"], strict=True))

    def plan(self, epoch: int) -> list[np.ndarray]:
        return plan_epoch(self.items, self.batch_size, self.seed, epoch, self.window)

    def _tensors(self, shard: str) -> dict[str, torch.Tensor]:
        if shard not in self._loaded:
            try:
                self._loaded[shard] = load_file(str(self.shards.path(shard, self._sha[shard])))
            except FileNotFoundError:  # evicted by the prefetcher between fetch and read: fetch it again
                self._loaded[shard] = load_file(str(self.shards.path(shard, self._sha[shard])))
            if len(self._loaded) > 2 * self.window:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(shard)
        return self._loaded[shard]

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[Batch, dict[str, torch.Tensor]]]:
        """Every batch from (epoch, start) on, epoch after epoch."""
        with ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch") as fetcher:
            while True:
                plan = self.plan(epoch)
                if not plan:
                    raise ValueError(f"no full batch of {self.batch_size} samples of one size to train on")
                yield from self._epoch(fetcher, epoch, plan, start)
                epoch, start = epoch + 1, 0

    def _epoch(
        self, fetcher: ThreadPoolExecutor, epoch: int, plan: list[np.ndarray], start: int
    ) -> Iterator[tuple[Batch, dict[str, torch.Tensor]]]:
        shard_of, index_of = self.items["shard"].to_numpy(), self.items["shard_index"].to_numpy()
        upcoming = iter(dict.fromkeys(s for rows in plan[start:] for s in shard_of[rows]))  # first-use order
        pending: dict[str, Future] = {}

        def fetch_ahead() -> None:
            while len(pending) < self.prefetch and (shard := next(upcoming, None)) is not None:
                pending[shard] = fetcher.submit(self.shards.path, shard, self._sha[shard])

        for i in range(start, len(plan)):
            fetch_ahead()
            rows = plan[i]
            for shard in dict.fromkeys(shard_of[rows]):
                if shard in pending:
                    pending.pop(shard).result()  # a fetch error surfaces here
            parts = [self._tensors(s) for s in shard_of[rows]]
            batch = {
                n: torch.stack([p[n][j] for p, j in zip(parts, index_of[rows], strict=True)])
                for n in parts[0]
            }
            yield Batch(epoch, i, rows), batch
