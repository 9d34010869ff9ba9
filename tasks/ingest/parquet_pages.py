"""What a parquet row group would take to read, worked out from the file's metadata before any of it is read.

Arrow decompresses a page whole, into a buffer of the size its header claims, and a dictionary value is
copied into every row that refers to it: an 808-byte file can claim 64 cells of 13 MiB. So before a row
group is read, the header of every page of the columns ingest reads is parsed (Thrift's compact protocol,
the few fields needed; a binary field is skipped, never read), and the row group is refused when a page
holds more than its values' byte limit allows. Its largest page bounds the largest cell, so reading it in
batches of BATCH_BYTES / that page's rows bounds what one batch makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

BATCH_BYTES = 64 * 2**20  # at most this much of cells per batch (or one row, when a page is bigger)
MAX_BATCH_ROWS = 64
_PAGE_OVERHEAD = 8  # bytes per value besides the value (a length prefix, levels)
_PAGE_SLACK = 4096
_MAX_DEPTH = 16  # nested Thrift structs

# Thrift compact protocol types
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT, _UUID = range(1, 14)


class BadPage(ValueError):
    """A page header that does not parse."""


class _Cursor:
    """Reads Thrift compact values from a file, from an offset; skips binary fields without reading them."""

    def __init__(self, f: BinaryIO, offset: int, end: int) -> None:
        self.f, self.pos, self.end = f, offset, end
        f.seek(offset)

    def byte(self) -> int:
        if self.pos >= self.end:
            raise BadPage("a page header runs past its column chunk")
        b = self.f.read(1)
        if not b:
            raise BadPage("the file ends inside a page header")
        self.pos += 1
        return b[0]

    def varint(self) -> int:
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise BadPage("a varint longer than 64 bits")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise BadPage("a page header field runs past its column chunk")
        self.pos += n
        self.f.seek(self.pos)

    def value(self, kind: int, depth: int) -> None:
        """Skip one value of `kind`."""
        if kind in (_TRUE, _FALSE, _BYTE):
            self.skip(0 if kind != _BYTE else 1)
        elif kind in (_I16, _I32, _I64):
            self.varint()
        elif kind == _DOUBLE:
            self.skip(8)
        elif kind == _UUID:
            self.skip(16)
        elif kind == _BINARY:
            self.skip(self.varint())
        elif kind in (_LIST, _SET):
            head = self.byte()
            size, inner = head >> 4, head & 0x0F
            for _ in range(self.varint() if size == 15 else size):
                self.value(inner, depth) if inner not in (_TRUE, _FALSE) else self.skip(1)
        elif kind == _MAP:
            size = self.varint()
            if size:
                types = self.byte()
                for _ in range(size):
                    self.value(types >> 4, depth)
                    self.value(types & 0x0F, depth)
        elif kind == _STRUCT:
            self.struct(depth + 1)
        else:
            raise BadPage(f"unknown Thrift type {kind}")

    def struct(self, depth: int, wanted: tuple[int, ...] = ()) -> dict[int, int]:
        """Read a struct: {field id: value} of the `wanted` i32 fields; a wanted struct field gives its own
        field 1 (a page's num_values)."""
        if depth > _MAX_DEPTH:
            raise BadPage(f"structs nested deeper than {_MAX_DEPTH}")
        found, field = {}, 0
        while (head := self.byte()) != 0:
            kind, delta = head & 0x0F, head >> 4
            field = field + delta if delta else self.zigzag()
            if field in wanted and kind == _I32:
                found[field] = self.zigzag()
            elif field in wanted and kind == _STRUCT:
                found[field] = self.struct(depth + 1, (1,)).get(1, 0)
            else:
                self.value(kind, depth)
        return found


@dataclass(frozen=True)
class Page:
    uncompressed: int
    values: int  # of a data page, or the entries of a dictionary page


def pages(f: BinaryIO, start: int, length: int) -> list[Page]:
    """The pages of the column chunk at `start`, `length` bytes long, from their headers; BadPage when one
    does not parse."""
    found, pos, end = [], start, start + length
    while pos < end:
        cursor = _Cursor(f, pos, end)
        # PageHeader: 2 uncompressed_page_size, 3 compressed_page_size; 5/7/8 data (v1), dictionary and
        # data (v2) page headers, whose field 1 is num_values
        fields = cursor.struct(0, (2, 3, 5, 7, 8))
        uncompressed, compressed = fields.get(2, -1), fields.get(3, -1)
        if uncompressed < 0 or compressed < 0:
            raise BadPage(f"a page header at byte {pos} gives no sizes")
        found.append(Page(uncompressed, max(fields.get(5, 0), fields.get(7, 0), fields.get(8, 0))))
        pos = cursor.pos + compressed
    return found


def refusal(found: list[Page], limit: int) -> str | None:
    """Why pages holding values of at most `limit` bytes cannot be these, or None when they can."""
    for page in found:
        allowed = max(page.values, 1) * (limit + _PAGE_OVERHEAD) + _PAGE_SLACK
        if page.uncompressed > allowed:
            return f"a page of {page.uncompressed} bytes for {page.values} values"
    return None


def batch_rows(largest_page: int) -> int:
    """Rows per batch so that a batch's cells take at most BATCH_BYTES (a cell lies in one page)."""
    return max(1, min(MAX_BATCH_ROWS, BATCH_BYTES // max(largest_page, 1)))
