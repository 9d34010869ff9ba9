"""Storage faults: the S3 server killed while the caches are written and while a checkpoint is saved, and a
full disk under the local shard folder. Each fails with an error that says where, loses nothing that was
complete, and the rerun recovers."""

from __future__ import annotations

import errno
import os
import signal

import pandas as pd
import pytest
from test_cache_integrity import stored_shards, synthetic_cfg
from test_caches import save_tiny_vae

from infra.s3 import embedded
from infra.storage import ObjectStore
from tasks.cache_latents import run_cache_latents
from tasks.common import shard_folder
from tasks.common.content_cache import gather
from tasks.ingest.stage import run_ingest
from tasks.train_unet.checkpoints import Checkpoints

pytestmark = pytest.mark.faults


class Server:
    """An S3 server of the test's own, which it may kill -9 and start again (same data, same port)."""

    def __init__(self, state, port):
        self.state, self.port = state, port
        self.endpoint = embedded.start(state, port)

    def store(self, bucket: str = "faults") -> ObjectStore:
        ep = self.endpoint
        store = ObjectStore.on_server(ep, bucket, "cache")
        store.ensure_bucket()
        return store

    def kill(self) -> None:
        os.kill(int((self.state / "server.pid").read_text()), signal.SIGKILL)

    def restart(self) -> None:
        self.endpoint = embedded.start(self.state, self.port)


@pytest.fixture
def server(tmp_path):
    own = Server(tmp_path / "s3", embedded.find_free_s3_port())
    yield own
    embedded.stop(own.state)


def kill_after(monkeypatch, server: Server, method: str, calls: int) -> None:
    """The server dies (kill -9) right after the `calls`-th ObjectStore.`method` call."""
    real, done = getattr(ObjectStore, method), []

    def then_kill(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        done.append(1)
        if len(done) == calls:
            server.kill()
        return result

    monkeypatch.setattr(ObjectStore, method, then_kill)


def test_the_s3_server_killed_while_the_latents_are_cached(tmp_path, server, monkeypatch, fault):
    store = server.store()
    cfg = synthetic_cfg(store, count=60).model_copy(deep=True)
    cfg = cfg.model_copy(
        update={"storage": cfg.storage.model_copy(update={"endpoint_url": server.endpoint.endpoint_url})}
    )
    save_tiny_vae(tmp_path / "vae", seed=0)
    run_ingest(cfg, tmp_path / "ingested")
    with monkeypatch.context() as patch:
        kill_after(patch, server, "put_bytes", 5)
        with pytest.raises(Exception) as failed:
            run_cache_latents(cfg, tmp_path / "ingested", tmp_path / "vae", tmp_path / "latents", store)
    assert server.endpoint.endpoint_url in str(failed.value)  # the error says where
    assert not (tmp_path / "latents" / "manifest.parquet").exists()

    server.restart()
    store = server.store()
    rerun = run_cache_latents(cfg, tmp_path / "ingested", tmp_path / "vae", tmp_path / "latents", store)
    assert rerun["shard_hits"] == 5 and rerun["shard_misses"] == 1  # the five stored before the kill kept
    manifest = pd.read_parquet(tmp_path / "latents" / "manifest.parquet")
    assert set(manifest["shard"]) == stored_shards(store, "latents")
    for shard, sha in dict(zip(manifest["shard"], manifest["shard_sha256"], strict=True)).items():
        gather(store, [shard], [sha], [0], "mean")  # every shard verifies
    kept, wrote = rerun["shard_hits"], rerun["shard_misses"]
    fault("S3 server kill -9 while cache_latents writes (5 of 6 shards in)",
          f"failed naming the endpoint; the rerun kept {kept}, wrote {wrote}")  # fmt: skip


def test_the_s3_server_killed_while_a_checkpoint_is_saved(tmp_path, server, monkeypatch, fault):
    store = server.store()
    checkpoints = Checkpoints(store, store.key("checkpoints", "run"), total_limit=2)
    files = {}
    for name in ("unet.safetensors", "state.pt", "rng.json"):
        files[name] = tmp_path / name
        files[name].write_bytes(os.urandom(1000))
    checkpoints.save(10, files, {})
    with monkeypatch.context() as patch:
        kill_after(patch, server, "upload", 3)  # step 20's files stored, then the server dies: no marker
        with pytest.raises(Exception) as failed:
            checkpoints.save(20, files, {})
    assert server.endpoint.endpoint_url in str(failed.value)

    server.restart()
    checkpoints = Checkpoints(server.store(), checkpoints.prefix, total_limit=2)
    assert checkpoints.steps() == [10]  # step 20 has no checkpoint.json: never resumed from
    assert checkpoints.load(10, tmp_path / "resume")["step"] == 10  # and 10 verifies
    checkpoints.save(30, files, {})
    assert checkpoints.steps() == [10, 30]
    assert not server.store().list_keys(checkpoints.prefix + "/step-00000020/")  # the half one pruned
    fault(
        "S3 server kill -9 while a checkpoint uploads",
        "the half checkpoint ignored, then pruned; step 10 resumes",
    )


def test_a_full_disk_under_the_local_shard_folder(tmp_path, object_store, monkeypatch, fault):
    data = b"shard bytes" * 100
    object_store.put_bytes(object_store.key("latents", "a.safetensors"), data)
    from tasks.common.keys import sha256_hex

    folder = shard_folder.ShardFolder(object_store, tmp_path / "shards", max_bytes=10**6)
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, _):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shard_folder.os, "fdopen", lambda fd, mode="r", *a, **k: Full(real_fdopen(fd, mode)))
    key = object_store.key("latents", "a.safetensors")
    with pytest.raises(OSError, match="no space left in .*shards.* lower unet.shard_cache_mb") as failed:
        folder.path(key, sha256_hex(data))
    assert list((tmp_path / "shards").iterdir()) == []  # no half file left behind
    monkeypatch.undo()
    assert folder.path(key, sha256_hex(data)).read_bytes() == data  # space again: it works
    fault("disk full in the local shard folder", f"refused: {str(failed.value)[:60]}...; no partial file")
