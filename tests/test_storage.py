"""ObjectStore and the embedded S3 server, against a real SeaweedFS (no mocks)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.s3 import embedded
from infra.storage import ObjectNotFound, ObjectStore, object_store_from_config
from tasks.common.config import StorageConfig


def test_round_trip_put_get_exists_list_delete(object_store: ObjectStore):
    a, b = object_store.key("latents", "a.bin"), object_store.key("latents", "sub", "b.bin")
    assert a == "cache/latents/a.bin"
    etag = object_store.put_bytes(a, b"\x00payload\xff", metadata={"sha256": "abc"})
    object_store.put_bytes(b, b"x" * 100_000)
    object_store.put_bytes(object_store.key("text", "c.bin"), b"c")

    assert object_store.get_bytes(a) == b"\x00payload\xff"
    assert object_store.exists(a) and not object_store.exists(object_store.key("latents", "nope"))
    assert object_store.head(a) == {
        "size": 9,
        "metadata": {"sha256": "abc"},
        "etag": etag,
    }
    assert object_store.head(b)["size"] == 100_000
    assert object_store.list_keys(object_store.key("latents") + "/") == [a, b]
    # the listing's ETag is the one PUT and HEAD give (the caches compare them to trust a shard)
    assert object_store.list_objects(a)[a] == {"size": 9, "etag": etag}
    assert len(object_store.list_keys("")) == 3
    assert object_store.uri(a) == f"s3://{object_store.bucket}/cache/latents/a.bin"

    object_store.delete(a)
    object_store.delete(a)  # idempotent
    assert not object_store.exists(a) and object_store.head(a) is None
    assert object_store.list_keys("cache/latents/") == [b]


def test_list_keys_paginates(object_store: ObjectStore):
    keys = [object_store.key("many", f"{i:04d}") for i in range(1005)]  # > one 1000-key page
    for k in keys:
        object_store.put_bytes(k, b"")
    assert object_store.list_keys("cache/many/") == keys


def test_missing_key_raises_object_not_found(object_store: ObjectStore):
    key = object_store.key("missing", "shard.safetensors")
    with pytest.raises(ObjectNotFound, match="missing/shard.safetensors") as info:
        object_store.get_bytes(key)
    assert info.value.key == key


def test_ensure_bucket_is_idempotent(object_store: ObjectStore):
    object_store.ensure_bucket()
    object_store.ensure_bucket()


@pytest.mark.faults
def test_anonymous_and_wrong_key_are_refused(s3_server, object_store: ObjectStore, fault):
    object_store.put_bytes("k", b"secret data")
    anon = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED),
    )
    with pytest.raises(ClientError) as denied:
        anon.get_object(Bucket=object_store.bucket, Key="k")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError):
        anon.list_buckets()

    wrong = ObjectStore(
        s3_server.endpoint_url,
        object_store.bucket,
        access_key=s3_server.access_key,
        secret_key="not-the-secret",
    )
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        wrong.get_bytes("k")
    unknown = ObjectStore(
        s3_server.endpoint_url, object_store.bucket, access_key="NOBODY", secret_key="x" * 40
    )
    with pytest.raises(Exception, match="InvalidAccessKeyId|AccessDenied"):
        unknown.get_bytes("k")
    fault("anonymous, wrong-secret and unknown-key S3 requests", "refused (AccessDenied, signature, key)")


def test_configured_endpoint_uses_the_default_credential_chain(
    s3_server, object_store, monkeypatch, tmp_path
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    cfg = StorageConfig(endpoint_url=s3_server.endpoint_url, bucket=object_store.bucket, prefix="p")
    store = object_store_from_config(cfg, state_dir=tmp_path / "unused")
    store.put_bytes(store.key("x"), b"1")
    assert object_store.get_bytes("p/x") == b"1"
    assert not (tmp_path / "unused").exists()  # no embedded server for a configured endpoint


def test_credentials_file_is_private_and_ensure_running_reuses_the_server(s3_server, s3_state_dir):
    creds = s3_state_dir / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert json.loads(creds.read_text()) == {
        "access_key": s3_server.access_key,
        "secret_key": s3_server.secret_key,
    }
    pid = (s3_state_dir / "server.pid").read_text().strip()

    assert embedded.status(s3_state_dir) == s3_server
    assert (
        embedded.ensure_running(s3_state_dir, s3_port=9) == s3_server
    )  # running: port ignored, no new process
    assert (s3_state_dir / "server.pid").read_text().strip() == pid
    with pytest.raises(embedded.S3ServerError, match="already runs"):
        embedded.start(s3_state_dir)


def test_embedded_config_uses_the_running_server(s3_server, s3_state_dir):
    store = object_store_from_config(StorageConfig(bucket="cfg-embedded"), s3_state_dir)
    assert store.endpoint_url == s3_server.endpoint_url and store.access_key == s3_server.access_key
    store.put_bytes(store.key("k"), b"v")
    assert store.list_keys("cache/") == ["cache/k"]


def test_busy_port_is_named(tmp_path, s3_server):
    port = int(s3_server.endpoint_url.rsplit(":", 1)[1])
    with pytest.raises(embedded.S3ServerError, match=f"ports already in use: s3 {port},"):
        embedded.start(tmp_path / "other", s3_port=port)
    assert not (tmp_path / "other" / "server.pid").exists()


def test_restart_keeps_data_and_keys_and_tolerates_a_stale_pid(tmp_path):
    state = tmp_path / "s3"
    port = embedded.find_free_s3_port()
    t0 = time.monotonic()
    first = embedded.start(state, s3_port=port)
    started_s = time.monotonic() - t0
    try:
        store = ObjectStore.on_server(first, "restart-test")
        store.ensure_bucket()
        store.put_bytes("kept", b"survives a restart", metadata={"sha256": "x"})
        assert embedded.stop(state) is True
        assert embedded.status(state) is None and not (state / "server.pid").exists()
        assert embedded.stop(state) is False  # nothing running: a no-op

        dead = subprocess.Popen(["true"])
        dead.wait()
        (state / "server.pid").write_text(f"{dead.pid}\n")  # stale pid file of a finished process
        assert embedded.status(state) is None

        second = embedded.ensure_running(state, s3_port=port)
        assert second == first  # same keys, same endpoint
        assert store.get_bytes("kept") == b"survives a restart"
        assert store.head("kept")["metadata"] == {"sha256": "x"}
        assert stat.S_IMODE((state / "credentials.json").stat().st_mode) == 0o600
    finally:
        embedded.stop(state)
    assert embedded.status(state) is None
    assert started_s < 30, f"server took {started_s:.1f}s to start"


def test_serving_leaves_a_server_it_did_not_start_running(s3_state_dir, s3_server):
    with embedded.serving(s3_state_dir, s3_port=9):  # running already: the port is not used
        pass
    assert embedded.status(s3_state_dir) == s3_server


def test_a_server_started_for_a_run_stops_itself_once_nobody_uses_it(tmp_path, monkeypatch):
    """A run killed with -9 cannot stop the server it started: the idle watchdog does, once no process
    has used it for the timeout. A live user (`serving`) or a pin (`ldmflow s3 start`) keeps it up."""
    monkeypatch.setattr(embedded, "IDLE_TIMEOUT_S", 2.0)
    state = tmp_path / "s3"
    user = subprocess.Popen(["sleep", "60"])  # stands for a run using the server
    try:
        embedded.ensure_running(state, s3_port=embedded.find_free_s3_port())
        (state / "users").mkdir(exist_ok=True)
        (state / "users" / str(user.pid)).touch()
        time.sleep(4)
        assert embedded.status(state) is not None  # in use: kept
        user.kill()  # the run dies without stopping anything
        user.wait()
        deadline = time.monotonic() + 30
        while embedded.status(state) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert embedded.status(state) is None
        assert "no user for 2 s: stopping the S3 server" in (state / "weed.log").read_text()

        embedded.ensure_running(state, s3_port=embedded.find_free_s3_port(), pin=True)
        time.sleep(3)
        assert embedded.status(state) is not None  # pinned: runs until `stop`
    finally:
        user.kill()
        embedded.stop(state)


def test_serving_leaves_the_server_to_a_user_that_remains(tmp_path):
    """The run that started the server must not stop it under another process still using it."""
    state = tmp_path / "s3"
    other = subprocess.Popen(["sleep", "60"])  # stands for another process inside `serving`
    try:
        with embedded.serving(state, s3_port=embedded.find_free_s3_port()):
            (state / "users" / str(other.pid)).touch()
        assert embedded.status(state) is not None  # still in use: left running
        assert not (state / "users" / str(os.getpid())).exists()  # this process is no longer a user
    finally:
        other.kill()
        other.wait()
        embedded.stop(state)
