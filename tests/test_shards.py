"""The cache shard format: safetensors round trip, checksum verification, content keys."""

from __future__ import annotations

import pytest
import torch

from tasks.common.cache_shards import CorruptShard, pack_shard, unpack_shard
from tasks.common.keys import content_key, content_keys, sha256_hex


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "mean": torch.randn(3, 4, 8, 8, generator=g).half(),
        "ids": torch.arange(12, dtype=torch.int64).reshape(3, 4),
        "mask": torch.tensor([[True, False], [False, True], [True, True]]),
        "pixels": torch.randint(0, 256, (3, 2, 2), dtype=torch.uint8, generator=g),
        "strided": torch.randn(4, 6, generator=g).t(),  # non-contiguous input
    }


def test_pack_unpack_round_trip_keeps_dtypes_and_metadata():
    tensors = sample_tensors()
    data = pack_shard(tensors, {"keys": '["a", "b", "c"]', "kind": "latents"})
    out, meta = unpack_shard(data, expected_sha256=sha256_hex(data))
    assert meta == {"keys": '["a", "b", "c"]', "kind": "latents"}
    assert set(out) == set(tensors)
    for name, t in tensors.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        assert torch.equal(out[name], t)
    assert out["mean"].dtype == torch.float16 and out["mask"].dtype == torch.bool


def test_flipped_byte_raises_corrupt_shard():
    data = pack_shard(sample_tensors(), {"kind": "latents"})
    checksum = sha256_hex(data)
    damaged = bytearray(data)
    damaged[len(damaged) - 5] ^= 0x01  # inside the tensor payload
    with pytest.raises(CorruptShard, match="checksum mismatch") as info:
        unpack_shard(bytes(damaged), expected_sha256=checksum)
    assert checksum in str(info.value) and sha256_hex(bytes(damaged)) in str(info.value)


def test_garbage_without_checksum_raises_corrupt_shard():
    with pytest.raises(CorruptShard):
        unpack_shard(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")


def test_metadata_must_be_strings():
    with pytest.raises(TypeError):
        pack_shard({"x": torch.zeros(1)}, {"n": 3})  # type: ignore[dict-item]


def test_content_key_separates_parts_and_is_stable():
    assert content_key("ab", "c") != content_key("a", "bc")
    assert content_key("a", "b") != content_key("b", "a")
    assert content_key("x") != content_key(b"x")
    assert content_key("") != content_key()
    assert content_key({"a": 1, "b": [2, 3]}) == content_key({"b": [2, 3], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 1.5})
    key = content_key("sha", "fp", {"size": 32})
    assert key == content_key("sha", "fp", {"size": 32}) and len(key) == 64
    # pinned: changing the encoding would silently invalidate every cache in object storage
    assert content_key("a", b"b", {"c": 1}) == PINNED


def test_content_keys_equal_content_key_per_item():
    shared = ("fingerprint", {"height": 32, "width": 48})
    firsts = ["a", "", "ä" * 3, b"bytes"]
    assert content_keys(firsts, *shared) == [content_key(f, *shared) for f in firsts]
    assert content_keys(["a"]) == [content_key("a")]


def test_content_key_rejects_other_types():
    with pytest.raises(TypeError):
        content_key(3)  # type: ignore[arg-type]


PINNED = "560fe7d36eb97f68c94138f513d4958ecb4e771b923da5f4eca1545a76f94955"
