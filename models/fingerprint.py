"""Content fingerprints of model weights, for content-addressed cache keys."""

from __future__ import annotations

import hashlib

import torch


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 hex over the state dict: sorted names, dtype, shape and raw bytes of every tensor.

    Independent of the device and of the process (no pickling, no ids), so equal weights give equal keys.
    """
    h = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reinterpret as bytes: works for every dtype, bf16 included (numpy has no bf16)
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # hashed in place, not copied
    return h.hexdigest()
