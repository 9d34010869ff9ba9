"""Content-addressed, sharded caches in object storage (shared by the latent and text caches).

An item's key hashes everything that determines its value (the callers decide what that is). Items are
grouped into shards in the given order; a shard's object name is the hash of its members' keys, so a
shard that already exists holds exactly those items and is not computed again. Each object carries its
sha256 in its S3 metadata and in the manifest; reads verify it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tasks.keys import content_key, sha256_hex
from tasks.progress import progress
from tasks.shards import pack_shard, unpack_shard
from tasks.storage import ObjectStore


@dataclass(frozen=True)
class ItemRef:
    """Where one cached item lives."""

    shard: str  # object key
    index: int  # position inside the shard
    sha256: str  # of the whole shard object


@dataclass
class CacheStats:
    shards: int = 0
    hits: int = 0
    misses: int = 0
    bytes_written: int = 0
    items_computed: int = 0
    refs: list[ItemRef] = field(default_factory=list)

    def merge(self, other: CacheStats) -> None:
        """Add another build's counts (the refs stay with each build)."""
        self.shards += other.shards
        self.hits += other.hits
        self.misses += other.misses
        self.bytes_written += other.bytes_written
        self.items_computed += other.items_computed

    def summary(self) -> dict[str, int]:
        return {
            "shards": self.shards,
            "shard_hits": self.hits,
            "shard_misses": self.misses,
            "bytes_written": self.bytes_written,
            "items_computed": self.items_computed,
        }


def build_cache(
    store: ObjectStore,
    kind: str,
    keys: list[str],
    shard_size: int,
    compute: Callable[[list[int]], dict[str, torch.Tensor]],
    desc: str,
) -> CacheStats:
    """Make sure every key is stored; `compute(indices)` returns tensors whose first dim follows `indices`."""
    stats = CacheStats()
    chunks = [list(range(i, min(i + shard_size, len(keys)))) for i in range(0, len(keys), shard_size)]
    for chunk in progress(chunks, desc=desc, unit="shard"):
        member_keys = [keys[i] for i in chunk]
        name = store.key(kind, f"{content_key(*member_keys)}.safetensors")
        head = store.head(name)
        checksum = (head or {}).get("metadata", {}).get("sha256")
        if checksum:
            stats.hits += 1
        else:
            tensors = compute(chunk)
            data = pack_shard(tensors, {"keys": json.dumps(member_keys)})
            checksum = sha256_hex(data)
            store.put_bytes(name, data, metadata={"sha256": checksum})  # visible only once complete
            stats.misses += 1
            stats.bytes_written += len(data)
            stats.items_computed += len(chunk)
        stats.shards += 1
        stats.refs.extend(ItemRef(name, j, checksum) for j in range(len(chunk)))
    return stats


def read_shard(store: ObjectStore, name: str, sha256: str) -> dict[str, torch.Tensor]:
    """Fetch a shard and verify its checksum (raises CorruptShard on mismatch)."""
    tensors, _ = unpack_shard(store.get_bytes(name), expected_sha256=sha256)
    return tensors


def gather(store: ObjectStore, shards: list[str], checksums: list[str], indices: list[int], name: str):
    """Tensor `name` for every (shard, index) row, fetching each distinct shard once."""
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    for shard, checksum in dict(zip(shards, checksums, strict=True)).items():
        loaded[shard] = read_shard(store, shard, checksum)
    return torch.stack([loaded[s][name][i] for s, i in zip(shards, indices, strict=True)])
