"""Content-addressed, sharded caches in object storage (shared by the latent and text caches).

An item's key hashes everything that determines its value (the callers decide what that is). A build
keeps every item that an earlier build (its manifest) already placed in a shard that is still intact,
and puts only the other keys, sorted, into new shards. A new shard's object name hashes its members'
keys, so a shard that already exists under that name holds exactly those items: a build that was
killed half-way and runs again finds the shards it finished and computes the rest, and never stores
an item twice.

Each object carries its sha256 in its S3 metadata and in the manifest; reads verify it. A shard the
earlier build wrote is trusted while its ETag is the one recorded then; when the ETag differs (the
object was rewritten) its bytes are checked, and a shard that is corrupt or missing is reported and its
items computed again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import pyarrow.parquet as pq
import torch

from infra.progress import progress
from infra.storage import ObjectNotFound, ObjectStore
from models.fingerprint import module_fingerprint
from tasks.common.cache_shards import CorruptShard, pack_shard, unpack_shard
from tasks.common.keys import content_key, sha256_hex

REF_COLUMNS = ["shard", "shard_index", "shard_sha256", "shard_etag"]
M = TypeVar("M")


class ItemRef(NamedTuple):  # (a tuple: a manifest makes tens of thousands, a dataclass is slower to build)
    """Where one cached item lives."""

    shard: str  # object key
    index: int  # position inside the shard
    sha256: str  # of the whole shard object
    etag: str  # the object's ETag when it was written or last verified


@dataclass
class CacheStats:
    shards: int = 0  # distinct shards the items live in
    shard_hits: int = 0  # shards found in object storage (kept from the last build, or found by name)
    shard_misses: int = 0  # shards computed and written
    shards_healed: int = 0  # shards of the last build that were corrupt or missing, computed again
    bytes_written: int = 0
    items_computed: int = 0
    items_reused: int = 0
    refs: list[ItemRef] = field(default_factory=list)  # one per key, in the order of the keys given

    def summary(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "refs"}

    def merge(self, other: CacheStats) -> None:
        """Add another build's counts (the refs stay with each build)."""
        for name, value in other.summary().items():
            setattr(self, name, getattr(self, name) + value)


def previous_refs(manifest: Path, key_column: str) -> dict[str, ItemRef]:
    """key -> ref from an earlier build's manifest (empty when there is none, or it predates ETags)."""
    try:
        table = pq.read_table(manifest, columns=[key_column, *REF_COLUMNS])
    except (FileNotFoundError, OSError, KeyError, ValueError):
        return {}
    keys, *refs = (table.column(c).to_pylist() for c in [key_column, *REF_COLUMNS])
    return dict(zip(keys, map(ItemRef._make, zip(*refs, strict=True)), strict=True))


def ref_columns(refs: list[ItemRef]) -> dict[str, list]:
    """The manifest columns that say where each item lives (REF_COLUMNS)."""
    return {
        "shard": [r.shard for r in refs],
        "shard_index": [r.index for r in refs],
        "shard_sha256": [r.sha256 for r in refs],
        "shard_etag": [r.etag for r in refs],
    }


def listed_objects(store: ObjectStore, names: list[str]) -> dict[str, dict[str, Any]]:
    """{"size", "etag"} of every object in the folders that hold `names`: one listing per folder, where a
    HEAD per shard would cost a request each."""
    listed: dict[str, dict[str, Any]] = {}
    for prefix in sorted({name.rsplit("/", 1)[0] + "/" for name in names}):
        listed.update(store.list_objects(prefix))
    return listed


def _intact(store: ObjectStore, ref: ItemRef, listed: dict[str, dict[str, Any]]) -> tuple[bool, str, str]:
    """(intact, ETag now, why not) for a shard an earlier build wrote (`listed`: see `listed_objects`)."""
    now = listed.get(ref.shard)
    if now is None:
        return False, "", "missing"
    if now["etag"] == ref.etag:
        return True, ref.etag, ""
    try:  # rewritten since: intact only if the bytes are still the ones recorded
        read_shard(store, ref.shard, ref.sha256)
    except (CorruptShard, ObjectNotFound) as err:
        return False, "", str(err)
    return True, now["etag"], ""


def _reuse_intact(
    store: ObjectStore, wanted: list[str], previous: dict[str, ItemRef], kind: str, stats: CacheStats
) -> dict[str, ItemRef]:
    """The refs of the wanted keys whose earlier shard is intact; broken shards are reported and removed."""
    one_ref_per_shard = {previous[k].shard: previous[k] for k in wanted if k in previous}
    listed = listed_objects(store, list(one_ref_per_shard))
    state = {}
    for shard, ref in sorted(one_ref_per_shard.items()):
        ok, etag, why = _intact(store, ref, listed)
        state[shard] = (ok, etag)
        if not ok:
            print(f"{kind} cache: shard {store.uri(shard)} is {why}: its items are computed again")
            stats.shards_healed += 1
            store.delete(shard)  # so that a rebuild under the same name is written, not taken as a hit
    found = {}
    for key in wanted:
        ref = previous.get(key)
        if ref is not None and state[ref.shard][0]:
            etag = state[ref.shard][1]
            found[key] = ref if ref.etag == etag else ItemRef(ref.shard, ref.index, ref.sha256, etag)
    stats.shard_hits += sum(ok for ok, _ in state.values())
    return found


class ModelInProcess(Generic[M]):
    """A model loaded once per process and shared by its shard threads, known by where it comes from and
    the fingerprint of its weights (a different fingerprint is refused: the model changed mid-build).

    Loads are serialised: `from_pretrained` is not thread-safe (a global meta-device context), and two
    threads loading at once fail with "Cannot copy out of meta tensor".
    """

    def __init__(self, load: Callable[[str], M], weights: Callable[[M], torch.nn.Module]) -> None:
        self._load, self._weights = load, weights
        self._lock = threading.Lock()
        self._held: tuple[str, str, M] | None = None  # one model at a time

    def keep(self, source: str, fingerprint: str, model: M) -> None:
        """Share a model this process already loaded (the stage's planning step fingerprints it anyway)."""
        with self._lock:
            self._held = (source, fingerprint, model)

    def get(self, source: str, fingerprint: str) -> M:
        with self._lock:
            if self._held is None or self._held[:2] != (source, fingerprint):
                model = self._load(source)
                if module_fingerprint(self._weights(model)) != fingerprint:
                    raise RuntimeError(f"{source}: the weights changed while their cache was being built")
                self._held = (source, fingerprint, model)
            return self._held[2]

    def release(self) -> None:
        """Let the model go (a stage's end: `ldmflow run` runs every stage in one process, and the next
        stage needs the GPU memory)."""
        with self._lock:
            self._held = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass(frozen=True)
class ShardJob:
    """One new shard to compute and store. Picklable, so any Prefect task runner (threads, Dask
    processes on other machines) can run it: `encode` loads what it needs from paths, not memory."""

    store: ObjectStore
    name: str  # object key
    members: list[str]  # the item keys, sorted
    inputs: list[Any]  # what `encode` needs for each member
    encode: Callable[[list[Any]], dict[str, torch.Tensor]]  # tensors whose first dim follows `inputs`


@dataclass(frozen=True)
class ShardResult:
    name: str
    sha256: str
    etag: str
    found: bool  # already stored under its name: nothing computed
    bytes_written: int = 0


def stored_shard(job: ShardJob) -> ShardResult | None:
    """The shard, when an object of its name is already complete (written by a build that did not get
    to record it: killed, or running elsewhere)."""
    head = job.store.head(job.name)
    checksum = (head or {}).get("metadata", {}).get("sha256")
    return ShardResult(job.name, checksum, head["etag"], found=True) if checksum else None


def encode_shard(job: ShardJob) -> bytes:
    return pack_shard(job.encode(job.inputs), {"keys": json.dumps(job.members)})


def upload_shard(job: ShardJob, data: bytes) -> ShardResult:
    checksum = sha256_hex(data)
    etag = job.store.put_bytes(job.name, data, metadata={"sha256": checksum})  # visible once complete
    return ShardResult(job.name, checksum, etag, found=False, bytes_written=len(data))


def store_shard(job: ShardJob) -> ShardResult:
    """Compute and upload one shard, unless an object of that name is already complete."""
    return stored_shard(job) or upload_shard(job, encode_shard(job))


ShardMap = Callable[[list[ShardJob], str], list[ShardResult]]
SHARDS_HELD = 2  # encoded shards in memory at once in `store_shards_here`: one uploading, one encoding


def store_shards_here(jobs: list[ShardJob], desc: str) -> list[ShardResult]:
    """Run the jobs in this process (what `dvc repro`'s stage commands use). One listing per prefix says
    which shards may already be stored (only those get a HEAD), and each shard uploads in the
    background while the next one is encoded. When S3 is slower than encoding, encoding waits: at most
    `SHARDS_HELD` encoded shards are in memory at once, however many the stage makes."""
    listed = listed_objects(jobs[0].store, [job.name for job in jobs]) if jobs else {}
    with ThreadPoolExecutor(1, thread_name_prefix="shard-upload") as uploader:
        pending: list[Future[ShardResult]] = []
        for job in progress(jobs, desc=desc, unit="shard"):
            if len(pending) >= SHARDS_HELD:  # one upload thread: uploads finish in the order submitted
                pending[-SHARDS_HELD].result()  # so at most SHARDS_HELD - 1 wait, beside the one made next
            found = stored_shard(job) if job.name in listed else None
            if found:
                pending.append(uploader.submit(lambda result: result, found))
            else:
                pending.append(uploader.submit(upload_shard, job, encode_shard(job)))
        return [future.result() for future in pending]


def build_cache(
    store: ObjectStore,
    kind: str,
    keys: list[str],
    inputs: list[Any],
    shard_size: int,
    encode: Callable[[list[Any]], dict[str, torch.Tensor]],
    desc: str,
    previous: dict[str, ItemRef] | None = None,
    map_shards: ShardMap = store_shards_here,
) -> CacheStats:
    """Make sure every key is stored. `inputs[i]` is what `encode` needs to compute `keys[i]`; `previous`
    is the last build's key -> ref (see `previous_refs`); `map_shards` runs the shard jobs."""
    stats = CacheStats()
    first_index: dict[str, int] = {}
    for i, key in enumerate(keys):
        first_index.setdefault(key, i)
    where = _reuse_intact(store, list(first_index), previous or {}, kind, stats)
    stats.items_reused = len(where)

    todo = sorted(k for k in first_index if k not in where)
    jobs = []
    for start in range(0, len(todo), shard_size):
        members = todo[start : start + shard_size]
        name = store.key(kind, f"{content_key(*members)}.safetensors")
        jobs.append(ShardJob(store, name, members, [inputs[first_index[k]] for k in members], encode))
    for job, result in zip(jobs, map_shards(jobs, desc), strict=True):
        stats.shard_hits += result.found
        stats.shard_misses += not result.found
        stats.bytes_written += result.bytes_written
        stats.items_computed += 0 if result.found else len(job.members)
        where.update((k, ItemRef(job.name, j, result.sha256, result.etag)) for j, k in enumerate(job.members))
    stats.refs = [where[k] for k in keys]
    stats.shards = len({r.shard for r in stats.refs})
    return stats


def read_shard(store: ObjectStore, name: str, sha256: str) -> dict[str, torch.Tensor]:
    """Fetch a shard and verify its checksum (raises CorruptShard on mismatch)."""
    tensors, _ = unpack_shard(store.get_bytes(name), expected_sha256=sha256)
    return tensors


def gather_tensors(
    store: ObjectStore, shards: list[str], checksums: list[str], indices: list[int], names: list[str]
) -> dict[str, torch.Tensor]:
    """Tensors `names` for every (shard, index) row. Each distinct shard is fetched once and let go once
    its rows are copied out, so memory holds the result and one shard."""
    if not shards:
        raise ValueError("gather_tensors needs at least one (shard, index) row")
    positions: dict[str, list[int]] = {}  # shard -> rows of the result it fills
    for row, shard in enumerate(shards):
        positions.setdefault(shard, []).append(row)
    checksum_of = dict(zip(shards, checksums, strict=True))
    out: dict[str, torch.Tensor] = {}
    for shard, rows in positions.items():
        tensors = read_shard(store, shard, checksum_of[shard])
        taken = torch.tensor([indices[row] for row in rows])
        for name in names:
            if name not in out:
                out[name] = tensors[name].new_empty((len(shards), *tensors[name].shape[1:]))
            out[name][rows] = tensors[name][taken]
    return out


def gather(store: ObjectStore, shards: list[str], checksums: list[str], indices: list[int], name: str):
    """Tensor `name` for every (shard, index) row (see `gather_tensors`)."""
    return gather_tensors(store, shards, checksums, indices, [name])[name]
