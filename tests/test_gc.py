"""`ldmflow gc` lists, and with --delete removes, what a project no longer needs: local checkpoint copies,
the checkpoints of finished training runs, and cache shards no version of the manifests names (working
tree and git history, read through DVC). A dry run removes nothing; a recorded version that cannot be
read keeps every shard. It removes only keys of the shard-key form, and refuses a store without a prefix."""

from __future__ import annotations

import subprocess
import uuid

import pandas as pd
import pytest
import yaml
from projects import BIN, cli_env, write_params

from flows import gc
from infra.storage import ObjectStore
from tasks.common.keys import content_key
from tasks.common.paths import ProjectPaths
from tasks.train_unet.checkpoints import Checkpoints

DVC_YAML = "stages:\n  latents:\n    cmd: 'true'\n    outs: [artifacts/latents]\n"


def shard_key(store: ObjectStore, cache: str, name: str) -> str:
    """A key of the form a cache shard has: <prefix>/<cache>/<content key>.safetensors."""
    return store.key(cache, f"{content_key(name)}.safetensors")


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


def ldmflow_gc(paths: ProjectPaths, env: dict, *args: str, code: int = 0) -> str:
    done = subprocess.run([str(BIN / "ldmflow"), "gc", *args], cwd=paths.root, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == code, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_gc_lists_then_removes_only_what_nothing_needs(project, tmp_path):
    paths, env, store = project
    shard = {name: shard_key(store, "latents", name) for name in ("old", "now", "orphan")}
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
    orphan = shard_key(store, "latents", "orphan")
    store.put_bytes(orphan, b"x")
    write_manifest(paths, [shard_key(store, "latents", "old")])
    record(paths, env, "a version whose manifest will be lost")
    write_manifest(paths, [])
    subprocess.run(["rm", "-rf", ".dvc/cache"], cwd=paths.root, check=True)  # and no remote holds it

    found = gc.collect(store, paths)
    assert (
        found.garbage == []
        and len(found.unread) == 1
        and "artifacts/latents/manifest.parquet" in found.unread[0]
    )


@pytest.mark.faults
def test_gc_removes_only_keys_of_the_shard_key_form(project, fault):
    paths, env, store = project
    orphan = shard_key(store, "latents", "orphan")
    foreign = [store.key("latents", "notes.txt"), store.key("text", "ours.safetensors"),
               store.key("latents", "deeper", f"{content_key('x')}.safetensors"),
               store.key("text", f"{content_key('x').upper()}.safetensors")]  # fmt: skip
    for key in [orphan, *foreign]:
        store.put_bytes(key, b"x")
    write_manifest(paths, [])

    removed = ldmflow_gc(paths, env, "--delete")
    assert "removed 1 item(s)" in removed and store.uri(orphan) in removed, removed
    assert not store.exists(orphan) and all(store.exists(key) for key in foreign)
    fault("gc --delete: keys not of the shard-key form under the caches' folders",
          f"the unnamed shard removed; {len(foreign)} other keys (a .txt, non-hex and upper-case names, one "
          "a folder deeper) not listed, and kept")  # fmt: skip


@pytest.mark.faults
def test_gc_refuses_a_store_without_a_prefix(project, fault):
    paths, env, store = project
    params = yaml.safe_load((paths.root / "params.yaml").read_text())
    params["storage"]["prefix"] = ""
    (paths.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    top = ObjectStore(store.endpoint_url, store.bucket, "", store.region, store.access_key, store.secret_key)
    others = [top.key("latents", "theirs.safetensors"), shard_key(top, "text", "theirs"),
              top.key("checkpoints", "run", "finished.json")]  # fmt: skip
    for key in others:
        top.put_bytes(key, b"x")
    write_manifest(paths, [])

    refused = ldmflow_gc(paths, env, "--delete", code=2)
    assert "storage.prefix is empty" in refused and "removed" not in refused, refused
    assert all(top.exists(key) for key in others)
    fault(
        "gc --delete with storage.prefix ''",
        f"refused with exit 2 naming storage.prefix; all {len(others)} keys at the bucket's top kept",
    )
