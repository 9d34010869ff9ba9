"""Object storage: one small S3 client used by every stage (embedded SeaweedFS, AWS S3, MinIO, Ceph, R2).

The caches rely on one S3 property: a PUT becomes visible only once it is complete, so a reader never
sees half an object; writing a shard under its content key is therefore atomic and idempotent.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from infra.s3.embedded import S3Endpoint, StorageSettings

NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class StorageError(RuntimeError):
    """An object storage call failed (the message names bucket and endpoint)."""


class ObjectNotFound(LookupError):
    """No object at `key`."""

    def __init__(self, key: str, bucket: str | None = None) -> None:
        self.key = key
        self.bucket = bucket
        where = f"s3://{bucket}/{key}" if bucket else key
        super().__init__(f"object not found: {where}")

    def __str__(self) -> str:
        return self.args[0]


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


_SESSION_LOCK = threading.Lock()  # a boto3 session may make one client at a time


def _fresh_session():
    import boto3

    return boto3.session.Session()


@functools.cache
def _session():
    """One boto3 session per process for clients with explicit keys: it parses the S3 service model once
    (else tens of ms per client)."""
    return _fresh_session()


class ObjectStore:
    """A bucket (and key prefix) on an S3 endpoint.

    `endpoint_url=None` means AWS S3 itself; `access_key=None` means boto3's default credential chain
    (environment, profile, instance role); `ca_bundle` is the only CA the server's certificate may come
    from (None: the system's, or AWS_CA_BUNDLE's, as for any boto3 client). Keys given to the methods are
    full keys: build them with `key(...)`, which puts the prefix in front.
    """

    def __init__(
        self,
        endpoint_url: str | None,
        bucket: str,
        prefix: str = "",
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        ca_bundle: str | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.ca_bundle = ca_bundle
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key
        self._client = None

    @classmethod
    def on_server(cls, server: S3Endpoint, bucket: str, prefix: str = "") -> ObjectStore:
        """`bucket` (under `prefix`) on a server whose address, keys and CA `server` holds."""
        return cls(server.endpoint_url, bucket, prefix, server.region, server.access_key, server.secret_key,
                   server.ca_bundle)  # fmt: skip

    def __repr__(self) -> str:
        return f"ObjectStore({self.uri(self.prefix)!r}, endpoint_url={self.endpoint_url!r})"

    def __getstate__(self) -> dict[str, Any]:  # picklable: the client is rebuilt on the other side
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        """The boto3 S3 client (made on first use; thread-safe)."""
        if self._client is None:
            from botocore.config import Config

            custom = self.endpoint_url is not None
            config = Config(
                region_name=self.region,
                connect_timeout=10,
                read_timeout=120,
                retries={"mode": "standard", "max_attempts": 5},
                max_pool_connections=32,
                # S3-compatible servers want path-style URLs and only the checksums S3 requires
                s3={"addressing_style": "path"} if custom else None,
                request_checksum_calculation="when_required" if custom else "when_supported",
                response_checksum_validation="when_required" if custom else "when_supported",
            )
            # the shared session would keep the first credentials the default chain found
            session = _session() if self.access_key else _fresh_session()
            with _SESSION_LOCK:
                self._client = session.client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    aws_access_key_id=self.access_key,
                    aws_secret_access_key=self.secret_key,
                    region_name=self.region,
                    verify=self.ca_bundle,
                    config=config,
                )
        return self._client

    def _fail(self, action: str, err: ClientError) -> StorageError:
        where = self.endpoint_url or "AWS S3"
        return StorageError(f"{action} on bucket {self.bucket!r} at {where} failed: {_code(err)}: {err}")

    # ------------------------------------------------------------------------------------------ naming
    def key(self, *parts: str) -> str:
        """The full key for `parts` under this store's prefix."""
        pieces = [self.prefix, *(str(p).strip("/") for p in parts)]
        return "/".join(p for p in pieces if p)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # ------------------------------------------------------------------------------------------ bucket
    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as err:
            if _code(err) not in NOT_FOUND_CODES:
                raise self._fail("HeadBucket", err) from err
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.endpoint_url is None and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as err:
            if _code(err) not in {"BucketAlreadyOwnedByYou"}:
                raise self._fail("CreateBucket", err) from err

    # ------------------------------------------------------------------------------------------ objects
    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        """Store `data` at `key`; readers see it only once complete. Returns the object's ETag.

        Metadata keys come back lowercased."""
        try:
            r = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=dict(metadata or {}))
        except ClientError as err:
            raise self._fail(f"PutObject {key}", err) from err
        return r["ETag"]

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; raises ObjectNotFound when there is none."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as err:
            if _code(err) in NOT_FOUND_CODES:
                raise ObjectNotFound(key, self.bucket) from None
            raise self._fail(f"GetObject {key}", err) from err

    def open_stream(self, key: str):
        """A readable, non-seekable stream of the object's bytes (for large objects read once, like tars)."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as err:
            if _code(err) in NOT_FOUND_CODES:
                raise ObjectNotFound(key, self.bucket) from None
            raise self._fail(f"GetObject {key}", err) from err

    def upload(self, path: Path, key: str, metadata: dict[str, str] | None = None) -> None:
        """Copy a local file to `key` (multipart for large files; visible once complete)."""
        from boto3.exceptions import S3UploadFailedError

        extra = {"Metadata": dict(metadata)} if metadata else None
        try:
            self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra)
        except ClientError as err:
            raise self._fail(f"PutObject {key}", err) from err
        except S3UploadFailedError as err:
            raise StorageError(f"upload of {path} to {self.uri(key)} failed: {err}") from err

    def download(self, key: str, path: Path) -> None:
        """Copy the object to a local file (multipart, for objects read with random access)."""
        try:
            self.client.download_file(self.bucket, key, str(path))
        except ClientError as err:
            if _code(err) in NOT_FOUND_CODES:
                raise ObjectNotFound(key, self.bucket) from None
            raise self._fail(f"GetObject {key}", err) from err

    def head(self, key: str) -> dict[str, Any] | None:
        """{"size", "metadata", "etag"} of the object, or None when there is none."""
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if _code(err) in NOT_FOUND_CODES:
                return None
            raise self._fail(f"HeadObject {key}", err) from err
        return {"size": r["ContentLength"], "metadata": dict(r.get("Metadata") or {}), "etag": r.get("ETag")}

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def list_objects(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Every key starting with `prefix` (a full key prefix) -> {"size", "etag"}, sorted by key;
        paginated under the hood (a thousand keys a request, so far cheaper than a HEAD per key)."""
        objects: dict[str, dict[str, Any]] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                objects.update(
                    (obj["Key"], {"size": obj["Size"], "etag": obj.get("ETag")})
                    for obj in page.get("Contents", [])
                )
        except ClientError as err:
            raise self._fail(f"ListObjectsV2 {prefix}", err) from err
        return dict(sorted(objects.items()))

    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        """Every key starting with `prefix` -> its size in bytes, sorted by key."""
        return {key: obj["size"] for key, obj in self.list_objects(prefix).items()}

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix` (a full key prefix), sorted."""
        return list(self.list_objects(prefix))

    def delete(self, key: str) -> None:
        """Remove the object (no error when it is absent)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if _code(err) not in NOT_FOUND_CODES:
                raise self._fail(f"DeleteObject {key}", err) from err


def object_store_from_config(storage_cfg: StorageSettings, state_dir: Path) -> ObjectStore:
    """The ObjectStore for a `StorageConfig`, its bucket created if missing.

    `endpoint_url: null` means the embedded SeaweedFS server of `state_dir` (started if needed, its
    credentials used); any other endpoint uses boto3's default credential chain.
    """
    if storage_cfg.endpoint_url is None:
        from infra.s3.embedded import ensure_running

        ep = ensure_running(state_dir, s3_port=storage_cfg.embedded_port)
        store = ObjectStore.on_server(ep, storage_cfg.bucket, storage_cfg.prefix)
    else:
        store = ObjectStore(
            storage_cfg.endpoint_url, storage_cfg.bucket, storage_cfg.prefix, storage_cfg.region
        )
    store.ensure_bucket()
    return store
