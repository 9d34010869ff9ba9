"""Where a source's files live: a local folder or an S3 prefix, through one fsspec filesystem.

The readers in sources.py list, open and point at files only through a root, so every convention reads
the same from `/data/my_images` and from `s3://bucket/my_images` (fsspec's local filesystem, or s3fs).
A root made from a single file (one `.parquet` or `.tar`) lists just that file. File references are small
and picklable (an fsspec filesystem pickles as its settings): decode workers in other processes read the
bytes themselves.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem


class OutsideRoot(LookupError):
    """A listed name that points out of the root (`../`, an absolute path, a symlink pointing out)."""


class MissingFile(LookupError):
    """A listed name with no file behind it."""


class TooLarge(OSError):
    """A file above its byte limit (`data.max_file_bytes`, `data.max_caption_bytes`, ...)."""


def open_inside(path: str, base: str) -> BinaryIO:
    """The local file `path` opened for reading, if it is a regular file inside the folder `base` (a real
    path) now, as opened: not through a symlink (O_NOFOLLOW; the name was resolved when it was listed),
    and not in a folder that a symlink now moves out of `base` (the opened file's own path is checked).
    OutsideRoot or MissingFile otherwise, naming `path`; no byte of it is read."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC  # NONBLOCK: a FIFO
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OutsideRoot(f"{path} is a symlink now, not the file that was listed; not read") from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise MissingFile(path) from None
        raise
    try:
        if not Path(_opened_path(fd, path)).is_relative_to(base):
            raise OutsideRoot(f"{path} now lies outside {base} (a folder on its way is a symlink); not read")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MissingFile(f"{path} is not a regular file now")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _opened_path(fd: int, path: str) -> str:
    """The real path of the file open as `fd` (Linux: /proc; else `path` resolved, if it is that file)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        real = os.path.realpath(path)
        return real if os.path.samestat(os.fstat(fd), os.stat(real)) else "/"


def over_limit(size: int, limit: int, setting: str) -> str | None:
    """Why `size` bytes are refused under `setting`, or None when they are within it."""
    return f"{size} bytes, above {setting}={limit}" if size > limit else None


@dataclass(frozen=True)
class FileRef:
    """One file of a source: read by whichever process decodes it."""

    fs: fsspec.AbstractFileSystem = field(compare=False)
    path: str
    # what the file was when listed (see `file_stamp`): unchanged stamp, unchanged bytes
    stamp: str = field(default="", compare=False)
    size: int | None = field(default=None, compare=False)  # bytes, when listed
    limit: int | None = field(default=None, compare=False)  # the most bytes `read` takes
    inside: str | None = field(default=None, compare=False)  # a local file's root folder, as a real path

    def read(self) -> bytes:
        """The file's bytes; TooLarge past `limit` (checked again here: a file can grow after listing). A
        local file is read only if it is still inside its root (see `open_inside`)."""
        with open_inside(self.path, self.inside) if self.inside else self.fs.open(self.path, "rb") as f:
            data = f.read() if self.limit is None else f.read(self.limit + 1)
        if self.limit is not None and len(data) > self.limit:
            raise TooLarge(f"{self.path}: more than {self.limit} bytes")
        return data


def _ref(root: Root, path: str, stamp: str, size: int | None, limit: int | None, setting: str) -> FileRef:
    """A reference to a listed file of `root`, read at most `limit` bytes; TooLarge (naming `setting`) when
    its listed size is already over."""
    refused = over_limit(size, limit, setting) if size is not None and limit is not None else None
    if refused:
        raise TooLarge(refused)
    return FileRef(root.fs, path, stamp, size, limit, root._real_base.as_posix() if root.local else None)


def file_stamp(info: os.stat_result | dict) -> str:
    """What changes whenever a file's bytes do: a local file's size, mtime, ctime and inode (as git's index
    and DVC's state use them), or an object's size and ETag. A copy of the same bytes gets a new stamp."""
    if isinstance(info, os.stat_result):
        return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_ino}"
    changed = info.get("ETag") or info.get("LastModified")  # S3
    if changed is None:  # fsspec's info of a local file
        changed = f"{info.get('mtime')}:{info.get('created')}:{info.get('ino')}"
    return f"{info.get('size')}:{changed}"


def local_files(base: str) -> dict[str, dict]:
    """Name (relative, '/'-separated) -> info of every file below a local folder, as fsspec's
    `find(detail=True)` lists it (a symlink is a file marked `islink`, never followed; a subfolder that
    cannot be read is left out), with just the fields `file_stamp` and `Root.locate` read: fsspec builds
    eleven per file, and took about 1.7 times as long on a nightly source of 42,000 files."""
    found: dict[str, dict] = {}
    folders = [""]
    while folders:
        folder = folders.pop()
        try:
            entries = list(os.scandir(posixpath.join(base, folder) if folder else base))
        except OSError:
            if not folder:
                raise
            continue
        for entry in entries:
            name = f"{folder}/{entry.name}" if folder else entry.name
            if entry.is_dir(follow_symlinks=False):
                folders.append(name)
                continue
            own = entry.stat(follow_symlinks=False)
            link = entry.is_symlink()
            size = own.st_size
            if link:  # the size of what it points at, 0 when that is gone
                try:
                    size = os.stat(entry.path).st_size
                except OSError:
                    size = 0
            found[name] = {"size": size, "islink": link,
                           "mtime": own.st_mtime, "created": own.st_ctime, "ino": own.st_ino}  # fmt: skip
    return found


@dataclass
class Root:
    fs: fsspec.AbstractFileSystem
    base: str  # the root folder in `fs`: an absolute local path, or bucket/prefix
    only: str | None = None  # set when the source is one file inside `base`
    _listing: dict[str, dict] | None = None  # every file below the root -> its info, listed once
    _stamps: dict[str, str] | None = None
    _folders_inside: dict[str, bool] = field(default_factory=dict)  # local folder -> resolves inside

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def _path(self, name: str) -> str:
        return posixpath.join(self.base, name) if name else self.base

    def describe(self, name: str = "") -> str:
        return self._path(name) if self.local else f"s3://{self._path(name)}"

    def listing(self) -> dict[str, dict]:
        """Name (relative, '/'-separated) -> info (fsspec's, or `local_files`'), of every file below the
        root."""
        if self._listing is None:
            if self.local:
                self._listing = local_files(self.base)
            else:
                cut = len(self.base.rstrip("/")) + 1
                self._listing = {p[cut:]: info for p, info in self.fs.find(self.base, detail=True).items()}
        return self._listing

    def stamps(self) -> dict[str, str]:
        """Name -> `file_stamp` of every file below the root (worked out once: the source's listing and
        each item's file references both want them)."""
        if self._stamps is None:
            self._stamps = {name: file_stamp(info) for name, info in self.listing().items()}
        return self._stamps

    def names(self) -> set[str]:
        return set(self.listing())

    def files(self, suffixes: tuple[str, ...]) -> list[str]:
        """Names of the files below the root with one of `suffixes`, sorted."""
        if self.only is not None:
            return [self.only]
        return sorted(n for n in self.listing() if posixpath.splitext(n)[1].lower() in suffixes)

    def exists(self, name: str) -> bool:
        if self.local:  # a local folder is walked only when a convention lists it
            return self.fs.isfile(self._path(name))
        return name in self.listing()

    def locate(self, name: str, limit: int | None = None, setting: str = "") -> FileRef:
        """`name`'s file, to be read at most `limit` bytes. OutsideRoot when the name points out of the root,
        MissingFile when no file is behind it, TooLarge (naming `setting`) when the file is over `limit`."""
        if self.local and self._listing is not None:  # a convention walked the folder (sidecar)
            info = self._listing.get(name)  # a walked name is relative and normal, and a file
            if info is not None and not info.get("islink") and self._inside(name, link=False):
                return _ref(self, self._path(name), self.stamps()[name], info.get("size"), limit, setting)
        normal = posixpath.normpath(name)
        if name.startswith("/") or os.path.isabs(name) or normal == ".." or normal.startswith("../"):
            raise OutsideRoot(name)
        if not self.local:
            info = self.listing().get(normal)
            if info is None:
                raise MissingFile(name)
            return _ref(self, self._path(normal), self.stamps()[normal], info.get("size"), limit, setting)
        path = self._path(normal)
        try:
            link = stat.S_ISLNK(os.lstat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            link = False
        if not self._inside(normal, link):
            raise OutsideRoot(name)
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise MissingFile(name) from None
        if not stat.S_ISREG(info.st_mode):
            raise MissingFile(name)
        if link:  # read where it points (inside): the file is opened without following symlinks
            path = os.path.realpath(path)
        return _ref(self, path, file_stamp(info), info.st_size, limit, setting)

    def _inside(self, normal: str, link: bool) -> bool:
        """A local file is inside the root unless it is a symlink pointing out or its folder resolves
        outside (each folder is resolved once: resolving every file's path costs a stat per component)."""
        if link:
            return Path(self._path(normal)).resolve().is_relative_to(self._real_base)
        folder = posixpath.dirname(normal)
        if folder not in self._folders_inside:
            real = Path(self._path(folder)).resolve()
            self._folders_inside[folder] = real.is_relative_to(self._real_base)
        return self._folders_inside[folder]

    @cached_property
    def _real_base(self) -> Path:
        return Path(self.base).resolve()

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        """A listed file, open for reading (seekable); a local one only if it lies inside the root (a
        symlink is followed only to a file inside): OutsideRoot otherwise."""
        if not self.local:
            with self.fs.open(self._path(name), "rb") as f:
                yield f
            return
        with open_inside(os.path.realpath(self._path(name)), self._real_base.as_posix()) as f:
            yield f

    @contextmanager
    def local_copy(self, name: str) -> Iterator[BinaryIO]:
        """A listed file open for reading, local and seekable: the file itself (as `open`), or a temporary
        download (removed after)."""
        if self.local:
            with self.open(name) as f:
                yield f
            return
        with tempfile.TemporaryFile(suffix=posixpath.splitext(name)[1]) as tmp:
            with self.fs.open(self._path(name), "rb") as remote:
                shutil.copyfileobj(remote, tmp, 2**20)
            tmp.seek(0)
            yield tmp


def open_root(path: str, endpoint_url: str | None = None) -> Root:
    """The root for `data.path`: a local folder or file, or `s3://bucket/prefix` (or one object there).

    S3 credentials come from the usual AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, an
    instance role); `endpoint_url` None means AWS S3 itself (or AWS_ENDPOINT_URL when set).
    """
    if path.startswith("s3://"):
        bucket, _, prefix = path.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"data.path: {path!r} names no bucket (expected s3://bucket/prefix)")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        # a filesystem of its own: fsspec's shared instances would keep another run's listings
        fs = fsspec.filesystem(
            "s3", endpoint_url=endpoint, client_kwargs={"region_name": region}, skip_instance_cache=True
        )
        base = posixpath.join(bucket, prefix.strip("/")) if prefix.strip("/") else bucket
        if prefix.strip("/") and fs.isfile(base):  # one object: its folder is the root
            folder, _, name = base.rpartition("/")
            return Root(fs, folder, only=name)
        root = Root(fs, base)
        if not root.names():
            raise FileNotFoundError(f"data.path: no objects under {path}")
        return root
    local = Path(path).resolve()
    fs = fsspec.filesystem("file")
    if local.is_file():
        return Root(fs, local.parent.as_posix(), only=local.name)
    if not local.is_dir():
        raise FileNotFoundError(f"data.path: {local} does not exist")
    return Root(fs, local.as_posix())


def read_ref(ref: FileRef | bytes) -> bytes:
    """The bytes behind a file reference (bytes are already the bytes: a parquet cell, a tar member)."""
    return ref if isinstance(ref, bytes) else ref.read()
