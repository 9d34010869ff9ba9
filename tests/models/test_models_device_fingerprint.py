import pytest
import torch

from models.fingerprint import module_fingerprint
from models.sampler.device import autocast, pick_device


def test_pick_device_explicit_and_auto():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="must be one of"):
        pick_device("meta")


def test_autocast_is_noop_on_cpu():
    with autocast(torch.device("cpu")):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


def test_fingerprint_equal_for_same_seed_and_changes_with_one_weight(tiny_vae):
    a, b = tiny_vae(seed=0), tiny_vae(seed=0)
    fa = module_fingerprint(a)
    assert len(fa) == 64 and fa == module_fingerprint(b)
    assert fa != module_fingerprint(tiny_vae(seed=1))
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-3
    assert module_fingerprint(b) != fa
    # dtype is part of the key; bf16 tensors (no numpy dtype) are hashed too
    assert module_fingerprint(a.to(torch.bfloat16)) != fa
