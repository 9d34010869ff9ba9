"""Cache shards copied from object storage into a local folder, each verified against its checksum on
arrival and named by it, with the least recently used evicted past a size bound."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from pathlib import Path

from infra.storage import ObjectStore
from tasks.common.cache_shards import CorruptShard
from tasks.common.keys import sha256_hex


class ShardFolder:
    """Shards copied from object storage into a local folder of at most `max_bytes` (LRU eviction)."""

    def __init__(self, store: ObjectStore, folder: Path, max_bytes: int, heal: str = "cache_latents") -> None:
        self.store, self.folder, self.max_bytes = store, folder, max_bytes
        self.heal = heal  # the stage that recomputes a corrupt shard
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path(self, shard: str, sha256: str) -> Path:
        """The local copy of a shard, fetched and verified first if it is not here."""
        local = self.folder / f"{sha256}.safetensors"  # named by content: a rewritten shard is a new file
        if local.exists():
            os.utime(local)  # most recently used
            return local
        data = self.store.get_bytes(shard)
        if sha256_hex(data) != sha256:
            raise CorruptShard(
                f"{self.store.uri(shard)}: checksum mismatch: not trained on; "
                f"run `ldmflow run {self.heal} --force` to recompute it"
            )
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, local)  # complete or absent, never half a file
        except OSError as err:
            Path(tmp).unlink(missing_ok=True)
            if err.errno != errno.ENOSPC:
                raise
            free = shutil.disk_usage(self.folder).free
            raise OSError(
                errno.ENOSPC,
                f"no space left in {self.folder} for {self.store.uri(shard)} ({len(data):,} bytes; "
                f"{free:,} free): free space there, or lower unet.shard_cache_mb; the run resumes from its "
                "last checkpoint",
            ) from err
        self._evict(keep=local)
        return local

    def _evict(self, keep: Path) -> None:
        with self._lock:
            files = sorted(self.folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
            total = sum(p.stat().st_size for p in files)
            for old in files:
                if total <= self.max_bytes:
                    break
                if old != keep:
                    total -= old.stat().st_size
                    old.unlink(missing_ok=True)
