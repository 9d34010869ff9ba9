"""Reading a tar shard with limits that hold before anything is decompressed into memory.

Python's tarfile trusts a shard: in stream mode it decompresses as much as one compressed block gives, reads
a PAX or GNU long-name header of any size whole, follows a GNU sparse map as long as it claims, and keeps
every member's header. Here the shard is decompressed by us, a bounded read at a time, counting the bytes
(`data.max_tar_bytes`); the headers that tarfile reads whole are refused past MAX_HEADER_BYTES before they
are read; sparse members are refused; and only the headers of the current member are kept. Past a limit
the rest of the shard is not read (TarLimit): what came before stays.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

# PAX and GNU long-name headers of one member together (a long path is 4 KiB), and the global PAX headers
# of a whole shard together: tarfile reads each one whole, and parses it with a regex.
MAX_HEADER_BYTES = 64 * 2**10
_MEMBER_HEADERS = (
    tarfile.XHDTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
Reader = Callable[[], bytes]
_COMPRESSIONS = (
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)


class TarLimit(tarfile.TarError):
    """The shard passed a limit here; the rest of it is not read."""


class _Counted(io.RawIOBase):
    """The decompressed stream, TarLimit once more than `limit` bytes came out of it."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self.stream, self.limit, self.count = stream, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self.stream.read(len(buffer))  # gzip, bz2 and lzma decompress at most what is asked
        except (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as err:
            raise tarfile.ReadError(f"the compressed stream breaks: {type(err).__name__}: {err}") from None
        except OSError as err:
            if err.errno is not None:  # the file's, not the data's (bz2 reports bad data with none)
                raise
            raise tarfile.ReadError(f"the compressed stream breaks: {err}") from None
        self.count += len(data)
        if self.count > self.limit:
            raise TarLimit(f"it decompresses past data.max_tar_bytes={self.limit}")
        buffer[: len(data)] = data
        return len(data)


class _Header(tarfile.TarInfo):
    """A TarInfo that refuses, before tarfile reads them, headers above MAX_HEADER_BYTES and sparse maps."""

    def _proc_member(self, tar: _Shard):  # tarfile's hook: called with each header block, before its data
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise TarLimit(f"{self.name!r} is a GNU sparse member; sparse members are not read")
        if self.type in _MEMBER_HEADERS or self.type == tarfile.XGLTYPE:
            kind = "global PAX" if self.type == tarfile.XGLTYPE else "PAX or long-name"
            total = tar.header_bytes[kind] = tar.header_bytes.get(kind, 0) + self.size
            if total > MAX_HEADER_BYTES:
                raise TarLimit(
                    f"a {kind} header of {self.size} bytes ({total} with the others it adds to) before "
                    f"byte {self.offset} is above {MAX_HEADER_BYTES} bytes; it is not read"
                )
        return super()._proc_member(tar)

    def _proc_gnusparse_10(self, next, pax_headers, tar):  # reads a sparse map as long as it claims
        raise TarLimit(f"{next.name!r} is a GNU sparse member; sparse members are not read")


class _Shard(tarfile.TarFile):
    tarinfo = _Header

    def __init__(self, *args, **kwargs) -> None:
        self.header_bytes: dict[str, int] = {}  # kind -> bytes (the first member is read in __init__)
        super().__init__(*args, **kwargs)


def _decompressed(stream: BinaryIO) -> BinaryIO:
    """`stream`, decompressed if it starts as gzip, bzip2 or xz do."""
    head = stream.read(6)
    stream.seek(0)
    for magic, opener in _COMPRESSIONS:
        if head.startswith(magic):
            return opener(stream)
    return stream


def regular_members(stream: BinaryIO, max_tar_bytes: int) -> Iterator[tuple[tarfile.TarInfo, Reader]]:
    """The regular members of the shard in `stream` (seekable), each with a function that reads its bytes
    (before the next member is asked for); TarLimit past a limit, tarfile's errors where the shard breaks."""
    counted = io.BufferedReader(_Counted(_decompressed(stream), max_tar_bytes), tarfile.RECORDSIZE)
    with _Shard.open(fileobj=counted, mode="r|") as shard:
        while (member := shard.next()) is not None:
            shard.members.clear()  # tarfile keeps every header it read; a shard can hold millions
            shard.header_bytes.pop("PAX or long-name", None)  # those were this member's
            if member.isfile():
                yield member, lambda member=member: shard.extractfile(member).read()
