"""`ldmflow gc`: what a project no longer needs, and its removal (a dry run unless asked to delete).

Three kinds of garbage pile up:
- local checkpoint copies, `.ldmflow/checkpoints/` (each training process keeps the checkpoints it saved
  or resumed from there; the ones that count are in object storage);
- the checkpoints in object storage of training runs that finished (`finished.json` beside them): a
  finished run is never resumed;
- cache shards (latents, text) that no version of the cache manifests names: left by builds that were
  killed, or by versions whose manifests are gone. The versions are the working tree's and every one
  `dvc.lock` records in the git history (all branches), read through DVC (its cache, else its remote).
  When a recorded version cannot be read, no shard is removed: it might be one of its. Only keys of the
  shard-key form count (`<prefix>/<cache>/<content key>.safetensors`): anything else in the bucket is
  not ours to judge.

gc refuses a store without a prefix: the bucket's top-level `latents/`, `text/` and `checkpoints/` may
then be anyone's. The caller holds the project's run lock: nothing may write the project meanwhile.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from infra.storage import ObjectStore
from tasks.common.paths import FINISHED, MANIFEST, ProjectPaths

CACHES = ("latents", "text")  # the content caches' folders under the storage prefix
# A shard's name in its cache folder, as tasks/common/content_cache.py makes it: the sha256 content key of
# its members (tasks/common/keys.py), hex.
SHARD_FILE = re.compile(r"[0-9a-f]{64}\.safetensors")


class Refused(ValueError):
    """gc will not judge this store (see the module docstring)."""


@dataclass(frozen=True)
class Garbage:
    kind: str  # "local checkpoint copy" | "finished run's checkpoint" | "unnamed cache shard"
    where: str  # a local path, or an s3:// URI
    size: int  # bytes


@dataclass
class Collection:
    garbage: list[Garbage]
    unread: list[str]  # recorded manifest versions that could not be read (shards then all kept)


def local_checkpoints(paths: ProjectPaths) -> list[Garbage]:
    """Each run identity's local checkpoint folder, with its size."""
    root = paths.local_checkpoints
    found = []
    for folder in sorted(p for p in root.glob("*") if p.is_dir()):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        found.append(Garbage("local checkpoint copy", str(folder), size))
    return found


def finished_checkpoints(store: ObjectStore) -> list[Garbage]:
    """Every object under a finished run's checkpoint prefix (its `finished.json` last, so a removal cut
    short leaves the run still marked finished)."""
    sizes = store.list_sizes(store.key("checkpoints") + "/")
    finished = [k[: -len(FINISHED)] for k in sizes if k.endswith("/" + FINISHED)]
    found = []
    for run in finished:
        keys = sorted((k for k in sizes if k.startswith(run)), key=lambda k: k.endswith("/" + FINISHED))
        found += [Garbage("finished run's checkpoint", store.uri(k), sizes[k]) for k in keys]
    return found


def _git(root: Path, *args: str) -> str | None:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def recorded_manifests(paths: ProjectPaths) -> dict[tuple[str, str], str]:
    """(cache, dvc.lock hash of its folder) -> a commit recording it, for every version of the cache
    outputs that `dvc.lock` records in the git history."""
    commits = (_git(paths.root, "log", "--all", "--format=%H", "--", "dvc.lock") or "").split()
    outs = {str((getattr(paths, cache)).relative_to(paths.root)): cache for cache in CACHES}
    recorded: dict[tuple[str, str], str] = {}
    for commit in commits:
        lock = yaml.safe_load(_git(paths.root, "show", f"{commit}:dvc.lock") or "{}") or {}
        for stage in (lock.get("stages") or {}).values():
            for out in stage.get("outs") or []:
                cache = outs.get(out.get("path"))
                if cache and out.get("md5"):
                    recorded.setdefault((cache, out["md5"]), commit)
    return recorded


def named_shards(paths: ProjectPaths) -> tuple[set[str], list[str]]:
    """Every shard key a manifest names (working tree and git history), and the versions not readable."""
    import dvc.api

    names: set[str] = set()
    for cache in CACHES:
        manifest = getattr(paths, cache) / MANIFEST
        if manifest.is_file():
            names.update(pd.read_parquet(manifest, columns=["shard"])["shard"])
    unread = []
    for (cache, md5), commit in recorded_manifests(paths).items():
        relative = str((getattr(paths, cache) / MANIFEST).relative_to(paths.root))
        try:
            with dvc.api.open(relative, repo=str(paths.root), rev=commit, mode="rb") as fh:
                names.update(pd.read_parquet(fh, columns=["shard"])["shard"])
        except Exception as err:  # noqa: BLE001 - not in the DVC cache nor its remote, or unreadable
            unread.append(f"{relative} at {commit[:10]} ({md5}): {type(err).__name__}: {str(err)[:160]}")
    return names, unread


def is_shard_key(store: ObjectStore, cache: str, key: str) -> bool:
    """Whether `key` has the form of a shard of `cache` in this store: directly in its folder, named by a
    content key."""
    folder = store.key(cache) + "/"
    return key.startswith(folder) and SHARD_FILE.fullmatch(key[len(folder) :]) is not None


def unnamed_shards(store: ObjectStore, paths: ProjectPaths) -> Collection:
    names, unread = named_shards(paths)
    if unread:
        return Collection([], unread)
    found = []
    for cache in CACHES:
        for key, size in store.list_sizes(store.key(cache) + "/").items():
            if is_shard_key(store, cache, key) and key not in names:
                found.append(Garbage("unnamed cache shard", store.uri(key), size))
    return Collection(found, [])


def collect(store: ObjectStore, paths: ProjectPaths) -> Collection:
    if not store.prefix.strip("/"):
        raise Refused(
            f"storage.prefix is empty: at the top of bucket {store.bucket!r}, latents/, text/ and "
            f"checkpoints/ may be anyone's; gc works only on a project with a storage.prefix of its own "
            f"(default 'cache')"
        )
    shards = unnamed_shards(store, paths)
    return Collection(local_checkpoints(paths) + finished_checkpoints(store) + shards.garbage, shards.unread)


def remove(garbage: list[Garbage], store: ObjectStore) -> None:
    prefix = f"s3://{store.bucket}/"
    for item in garbage:
        if item.where.startswith(prefix):
            store.delete(item.where[len(prefix) :])
        else:
            shutil.rmtree(item.where, ignore_errors=True)
