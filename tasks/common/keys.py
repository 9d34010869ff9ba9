"""Content keys: a hash of everything that determines a value (torch-free, so decode workers stay light)."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from pathlib import Path


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 hex of a file, read a MiB at a time (checkpoint files can be gigabytes)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _encode(part: bytes | str | dict | list) -> tuple[bytes, bytes]:
    if isinstance(part, bytes | bytearray | memoryview):
        return b"b", bytes(part)
    if isinstance(part, str):
        return b"s", part.encode("utf-8")
    if isinstance(part, dict | list):
        return b"j", json.dumps(part, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8"
        )
    raise TypeError(f"content_key parts must be bytes, str, dict or list, not {type(part).__name__}")


class Framed:
    """A key part encoded once, for a part that many keys share (the same bytes as the part itself)."""

    def __init__(self, part: bytes | str | dict | list) -> None:
        self.framed = _framed(part)


def _framed(part: bytes | str | dict | list | Framed) -> bytes:
    if isinstance(part, Framed):
        return part.framed
    tag, payload = _encode(part)
    return tag + struct.pack(">Q", len(payload)) + payload


_KEY_PREFIX = b"ldmflow-content-key-v1"


def content_key(*parts: bytes | str | dict | list | Framed) -> str:
    """sha256 hex over typed, length-prefixed parts: ("ab", "c") != ("a", "bc"); dicts are key-order free."""
    h = hashlib.sha256(_KEY_PREFIX)
    for part in parts:
        h.update(_framed(part))
    return h.hexdigest()


def content_keys(firsts: Iterable[bytes | str], *shared: bytes | str | dict | list) -> list[str]:
    """`content_key(first, *shared)` for every first part, encoding the shared parts once (a cache stage
    keys tens of thousands of items with the same model fingerprint and settings)."""
    tail = b"".join(_framed(part) for part in shared)
    start = hashlib.sha256(_KEY_PREFIX)
    keys = []
    for first in firsts:
        h = start.copy()  # the prefix hashed once
        h.update(_framed(first) + tail)
        keys.append(h.hexdigest())
    return keys
