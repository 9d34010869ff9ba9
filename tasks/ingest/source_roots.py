"""Where a source's files live: a local folder or an S3 prefix, behind one small interface.

The readers in sources.py list, open and point at files only through a root, so every convention reads
the same from `/data/my_images` and from `s3://bucket/my_images`. A root made from a single file (one
`.parquet` or `.tar`) lists just that file. File references are small and picklable: decode workers in
other processes read the bytes themselves.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tasks.common.storage import ObjectStore


class OutsideRoot(LookupError):
    """A listed name that points out of the root (`../`, an absolute path, a symlink pointing out)."""


class MissingFile(LookupError):
    """A listed name with no file behind it."""


@dataclass(frozen=True)
class LocalFile:
    path: Path

    def read(self) -> bytes:
        return self.path.read_bytes()


@dataclass(frozen=True)
class S3Object:
    store: ObjectStore = field(compare=False)
    key: str

    def read(self) -> bytes:
        return self.store.get_bytes(self.key)


FileRef = LocalFile | S3Object


@dataclass
class LocalRoot:
    path: Path  # resolved folder
    only: str | None = None  # set when the source is one file inside `path`

    def describe(self, name: str = "") -> str:
        return str(self.path / name) if name else str(self.path)

    def files(self, suffixes: tuple[str, ...]) -> list[str]:
        """Names (relative, '/'-separated) of the files below the root with one of `suffixes`, sorted."""
        if self.only is not None:
            return [self.only]
        found = (p for p in self.path.rglob("*") if p.suffix.lower() in suffixes and not p.is_dir())
        return sorted(p.relative_to(self.path).as_posix() for p in found)

    def exists(self, name: str) -> bool:
        return (self.path / name).is_file()

    def locate(self, name: str) -> LocalFile:
        candidate = self.path / name
        if Path(name).is_absolute() or not candidate.resolve().is_relative_to(self.path):
            raise OutsideRoot(name)
        if not candidate.is_file():
            raise MissingFile(name)
        return LocalFile(candidate.resolve())

    def read_text(self, name: str) -> str:
        return (self.path / name).read_text(encoding="utf-8")

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        with open(self.path / name, "rb") as f:
            yield f

    @contextmanager
    def local_path(self, name: str) -> Iterator[Path]:
        yield self.path / name


@dataclass
class S3Root:
    store: ObjectStore  # its prefix is the root
    only: str | None = None
    _listing: set[str] | None = None

    def describe(self, name: str = "") -> str:
        return self.store.uri(self.store.key(name))

    def names(self) -> set[str]:
        """Every name below the root (listed once)."""
        if self._listing is None:
            base = self.store.key("")
            cut = len(base) + 1 if base else 0
            self._listing = {k[cut:] for k in self.store.list_keys(f"{base}/" if base else "")}
        return self._listing

    def files(self, suffixes: tuple[str, ...]) -> list[str]:
        if self.only is not None:
            return [self.only]
        return sorted(n for n in self.names() if posixpath.splitext(n)[1].lower() in suffixes)

    def exists(self, name: str) -> bool:
        return name in self.names()

    def locate(self, name: str) -> S3Object:
        normal = posixpath.normpath(name)
        if name.startswith("/") or normal == ".." or normal.startswith("../"):
            raise OutsideRoot(name)
        if normal not in self.names():
            raise MissingFile(name)
        return S3Object(self.store, self.store.key(normal))

    def read_text(self, name: str) -> str:
        return self.store.get_bytes(self.store.key(name)).decode("utf-8")

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        body = self.store.open_stream(self.store.key(name))
        try:
            yield body
        finally:
            body.close()

    @contextmanager
    def local_path(self, name: str) -> Iterator[Path]:
        """The object downloaded to a temporary file (removed afterwards)."""
        fd, tmp = tempfile.mkstemp(suffix=posixpath.splitext(name)[1])
        os.close(fd)
        try:
            self.store.download(self.store.key(name), Path(tmp))
            yield Path(tmp)
        finally:
            os.unlink(tmp)


Root = LocalRoot | S3Root


def open_root(path: str, endpoint_url: str | None = None) -> Root:
    """The root for `data.path`: a local folder or file, or `s3://bucket/prefix` (or one object there).

    S3 credentials come from boto3's default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws,
    an instance role); `endpoint_url` None means AWS S3 itself (or AWS_ENDPOINT_URL when set).
    """
    if path.startswith("s3://"):
        bucket, _, prefix = path.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"data.path: {path!r} names no bucket (expected s3://bucket/prefix)")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        prefix = prefix.strip("/")
        whole = ObjectStore(endpoint_url, bucket, "", region)
        if prefix and whole.exists(prefix):  # one object: its folder is the root
            folder, _, name = prefix.rpartition("/")
            return S3Root(ObjectStore(endpoint_url, bucket, folder, region), only=name)
        root = S3Root(ObjectStore(endpoint_url, bucket, prefix, region))
        if not root.names():
            raise FileNotFoundError(f"data.path: no objects under {path}")
        return root
    local = Path(path).resolve()
    if local.is_file():
        return LocalRoot(local.parent, only=local.name)
    if not local.is_dir():
        raise FileNotFoundError(f"data.path: {local} does not exist")
    return LocalRoot(local)


def read_ref(ref: FileRef | bytes) -> bytes:
    """The bytes behind a file reference (bytes are already the bytes: a parquet cell, a tar member)."""
    return ref if isinstance(ref, bytes) else ref.read()
