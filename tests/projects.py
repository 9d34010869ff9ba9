"""Scaffolding for tests that run `ldmflow` in a project directory of their own against the session's
S3 server: its params.yaml, and the environment the CLI subprocesses get."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from infra.s3.embedded import S3Endpoint

BIN = Path(sys.executable).parent  # the venv's ldmflow, dvc, torchrun
REPO = Path(__file__).resolve().parents[1]

# The whole pipeline in seconds: 96 synthetic images of 16x16, a few steps of each model.
TINY = {
    "seed": 0,
    "data": {"resolution": 16, "shard_size": 32, "synthetic": {"count": 96, "colors": ["red", "blue"],
             "shapes": ["circle", "square"], "sizes": ["large"], "positions": ["center"]}},
    "vae": {"block_out_channels": [8, 16, 16], "norm_num_groups": 4, "steps": 4, "batch_size": 8,
            "log_every": 2},
    "latents": {"shard_size": 32},
    "text": {"max_length": 12, "shard_size": 8},
    "unet": {"block_out_channels": [16, 32], "attention_head_dim": 4, "steps": 4, "batch_size": 8,
             "warmup_steps": 1, "num_train_timesteps": 50, "log_every": 2},
    "eval": {"samples": 8, "inference_steps": 3, "probe_steps": 3, "judge": {"steps": 3, "batch_size": 8},
             "gate": {"floor": 0.0}, "views": {"frames": 2, "refine": 2, "attention_prompts": 1}},
}  # fmt: skip


def write_params(root: Path, base: dict, s3_server: S3Endpoint, bucket: str) -> dict:
    """`base` plus this project's storage (bucket `bucket` on the test server) and MLflow (SQLite in
    `root`), written to root/params.yaml; returns the params."""
    params = {
        **base,
        "storage": {"endpoint_url": s3_server.endpoint_url, "bucket": bucket, "prefix": "cache"},
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def cli_env(s3_server: S3Endpoint, **extra: str) -> dict[str, str]:
    """This environment, the venv's scripts first on PATH, the test server's credentials, and `extra`."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **s3_server.client_environment(),
        "DVC_NO_ANALYTICS": "1",  # else each dvc command starts a daemon that reports usage over the net
        **extra,
    }


def init_project(root: Path, env: dict[str, str]) -> None:
    """Make `root` a project `ldmflow run` works in: dvc.yaml and the stage code it lists as deps (and
    infra/, which it does not, for tests that edit it), under git and DVC."""
    for f in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / f, root / f)
    for d in ("tasks", "models", "infra"):
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, env=env, check=True)  # keeps the .dvcignore
