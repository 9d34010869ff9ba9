"""Sampling an exported pipeline folder as its users would: `DiffusionPipeline.from_pretrained` in a fresh
process that cannot import ldmflow, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

_SAMPLE = """
import json, sys
for package in ("models", "tasks", "flows", "infra"):  # ldmflow's own packages: the folder must not need them
    sys.modules[package] = None
import numpy as np
from diffusers import DiffusionPipeline
folder, out, call = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
np.save(out, pipe(**call, output_type="np").images)
print(type(pipe).__module__)
"""


def sample_exported(folder: Path, work: Path, **call) -> tuple[np.ndarray, str]:
    """(the images of `pipe(**call)` as uint8 [N, H, W, 3], the module the pipeline class came from)."""
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf")}
    env.pop("PYTHONPATH", None)
    out = work / "images.npy"
    args = [sys.executable, "-c", _SAMPLE, str(folder), str(out), json.dumps(call)]
    done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return np.load(out), done.stdout.strip().splitlines()[-1]
