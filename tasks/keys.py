"""Content keys: a hash of everything that determines a value (torch-free, so decode workers stay light)."""

from __future__ import annotations

import hashlib
import json
import struct
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


def content_key(*parts: bytes | str | dict | list) -> str:
    """sha256 hex over typed, length-prefixed parts: ("ab", "c") != ("a", "bc"); dicts are key-order free."""
    h = hashlib.sha256(b"ldmflow-content-key-v1")
    for part in parts:
        tag, payload = _encode(part)
        h.update(tag + struct.pack(">Q", len(payload)) + payload)
    return h.hexdigest()
