"""The cache shard format: one safetensors blob (many samples per object), checksummed (keys:
tasks/common/keys.py).

A shard's sha256 is recorded where it is referenced (S3 metadata, manifests) and verified on read, so a
damaged shard raises `CorruptShard` (to be recomputed) instead of being trained on.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from tasks.common.keys import sha256_hex


class CorruptShard(ValueError):
    """A shard whose bytes do not match their checksum or are not valid safetensors."""


def pack_shard(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise tensors (dtypes kept) and string metadata to safetensors bytes."""
    meta = dict(metadata or {})
    bad = [k for k, v in meta.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"shard metadata must map str to str; offending keys: {bad}")
    return _st_save({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, metadata=meta)


def _header_metadata(data: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__") or {})


def unpack_shard(
    data: bytes, expected_sha256: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a shard; raises CorruptShard on a checksum mismatch or unreadable bytes."""
    if expected_sha256 is not None:
        actual = sha256_hex(data)
        if actual != expected_sha256:
            raise CorruptShard(
                f"shard checksum mismatch: expected sha256 {expected_sha256}, "
                f"got {actual} ({len(data)} bytes)"
            )
    try:
        return _st_load(data), _header_metadata(data)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise CorruptShard(f"shard is not valid safetensors ({len(data)} bytes): {err}") from err
