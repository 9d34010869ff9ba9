"""`ldmflow gc` lists, and with --delete removes, what a project no longer needs: local checkpoint copies,
the checkpoints of finished training runs, and cache shards no version of the manifests names (working
tree and git history, read through DVC). A dry run removes nothing; a recorded version that cannot be
read keeps every shard."""

from __future__ import annotations

import subprocess
import uuid

import pandas as pd
import pytest
from projects import BIN, cli_env, write_params

from flows import gc
from infra.storage import ObjectStore
from tasks.common.paths import ProjectPaths
from tasks.train_unet.checkpoints import Checkpoints

DVC_YAML = "stages:\n  latents:\n    cmd: 'true'\n    outs: [artifacts/latents]\n"


def write_manifest(paths: ProjectPaths, shards: list[str]) -> None:
    paths.latents.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"latent_key": [f"k{i}" for i in range(len(shards))], "shard": shards}).to_parquet(
        paths.latents / "manifest.parquet"
    )


def record(paths: ProjectPaths, env: dict, message: str) -> None:
    """dvc.lock records the manifest as it is now, and git commits it."""
    subprocess.run([str(BIN / "dvc"), "commit", "-f", "-q", "latents"], cwd=paths.root, env=env, check=True)
    subprocess.run(["git", "add", "-A"], cwd=paths.root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message],
                   cwd=paths.root, check=True)  # fmt: skip


@pytest.fixture
def project(tmp_path, s3_server):
    bucket = f"gc-{uuid.uuid4().hex[:10]}"
    write_params(tmp_path, {}, s3_server, bucket)
    env = cli_env(s3_server)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=tmp_path, env=env, check=True)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    store = ObjectStore(s3_server.endpoint_url, bucket, "cache", s3_server.region, s3_server.access_key,
                        s3_server.secret_key)  # fmt: skip
    store.ensure_bucket()
    return ProjectPaths.at(tmp_path), env, store


def ldmflow_gc(paths: ProjectPaths, env: dict, *args: str) -> str:
    done = subprocess.run([str(BIN / "ldmflow"), "gc", *args], cwd=paths.root, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_gc_lists_then_removes_only_what_nothing_needs(project, tmp_path):
    paths, env, store = project
    shard = {name: store.key("latents", f"{name}.safetensors") for name in ("old", "now", "orphan")}
    for key in shard.values():
        store.put_bytes(key, b"x" * 1000)
    write_manifest(paths, [shard["old"]])
    record(paths, env, "the first version names `old`")
    write_manifest(paths, [shard["now"]])  # the working tree names `now`; nothing names `orphan`

    finished = Checkpoints(store, store.key("checkpoints", "run-a"))
    running = Checkpoints(store, store.key("checkpoints", "run-b"))
    weights = tmp_path / "unet.safetensors"
    weights.write_bytes(b"w" * 500)
    for checkpoints in (finished, running):
        checkpoints.save(10, {"unet.safetensors": weights}, {})
    finished.finish(20)
    local = paths.state / "checkpoints" / "run-a" / "rank0" / "save"
    local.mkdir(parents=True)
    (local / "unet.safetensors").write_bytes(b"w" * 500)

    before = set(store.list_keys(""))
    listed = ldmflow_gc(paths, env)
    assert set(store.list_keys("")) == before and (local / "unet.safetensors").is_file()  # a dry run
    assert "would remove 5 item(s)" in listed, listed  # a local copy, 3 objects of run-a, one shard
    assert f"unnamed cache shard: {store.uri(shard['orphan'])}" in listed
    assert "local checkpoint copy" in listed and "finished run's checkpoint" in listed

    removed = ldmflow_gc(paths, env, "--delete")
    assert "removed 5 item(s)" in removed
    of_finished = {k for k in before if k.startswith(finished.prefix + "/")}
    assert set(store.list_keys("")) == before - {shard["orphan"]} - of_finished
    assert store.exists(shard["old"]) and store.exists(shard["now"]) and running.steps() == [10]
    assert not (paths.state / "checkpoints" / "run-a").exists()


def test_a_recorded_manifest_that_cannot_be_read_keeps_every_shard(project):
    paths, env, store = project
    orphan = store.key("latents", "orphan.safetensors")
    store.put_bytes(orphan, b"x")
    write_manifest(paths, [store.key("latents", "old.safetensors")])
    record(paths, env, "a version whose manifest will be lost")
    write_manifest(paths, [])
    subprocess.run(["rm", "-rf", ".dvc/cache"], cwd=paths.root, check=True)  # and no remote holds it

    found = gc.collect(store, paths)
    assert (
        found.garbage == []
        and len(found.unread) == 1
        and "artifacts/latents/manifest.parquet" in found.unread[0]
    )
