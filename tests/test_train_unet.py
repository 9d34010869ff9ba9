"""U-Net training through the stage's own entry (`ldmflow stage train_unet`) on real caches in the test
S3 server: resuming after kill -9 (the killed run leaves the previous model in place), and DDP over 2 CPU
processes (gloo) under torchrun."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import torch
from projects import BIN, cli_env, write_params
from safetensors.torch import load_file
from test_caches import save_tiny_vae

from infra.storage import ObjectStore
from tasks.cache_latents import run_cache_latents
from tasks.common.config import config_from_dict
from tasks.common.paths import ProjectPaths
from tasks.embed_text import run_embed_text
from tasks.ingest.stage import run_ingest

pytestmark = pytest.mark.e2e

PARAMS = {
    "seed": 0,
    "data": {"resolution": 16, "shard_size": 32, "synthetic": {"count": 96, "colors": ["red", "blue"],
             "shapes": ["circle", "square"], "sizes": ["large"], "positions": ["center"]}},
    "latents": {"shard_size": 16},
    "text": {"max_length": 12, "shard_size": 8},
    "unet": {"block_out_channels": [16, 32], "attention_head_dim": 4, "batch_size": 8, "warmup_steps": 2,
             "num_train_timesteps": 50, "log_every": 5, "log_samples": True},
}  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3_server):
    """A project whose caches are built (ingest, a tiny VAE, latents, text): train_unet is next."""
    root = tmp_path_factory.mktemp("train")
    bucket = f"train-{uuid.uuid4().hex[:10]}"
    params = write_params(root, PARAMS, s3_server, bucket)
    cfg = config_from_dict(params)
    paths = ProjectPaths.at(root)
    store = ObjectStore(s3_server.endpoint_url, bucket, "cache", s3_server.region, s3_server.access_key,
                        s3_server.secret_key)  # fmt: skip
    store.ensure_bucket()
    run_ingest(cfg, paths.ingested)
    save_tiny_vae(paths.vae, seed=0)
    run_cache_latents(cfg, paths.ingested, paths.vae, paths.latents, store)
    run_embed_text(cfg, paths.ingested, paths.text, store)
    env = cli_env(s3_server, OMP_NUM_THREADS="1")
    return root, env, store


def stage_command(*overrides: str) -> list[str]:
    return ["stage", "train_unet", *(a for o in overrides for a in ("--set", o))]


def run(root: Path, env: dict, argv: list[str]) -> None:
    proc = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def steps_log(root: Path, folder: str = "artifacts/unet") -> list[dict]:
    return [json.loads(line) for line in (root / folder / "samples.jsonl").read_text().splitlines()]


def unet_files(root: Path) -> dict[str, bytes]:
    out = root / "artifacts/unet"
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.mark.faults
def test_kill_9_then_resume_latest_matches_an_uninterrupted_run(project, fault):
    root, env, store = project
    steps = ["unet.steps=40", "unet.checkpoint_every=10", "unet.checkpoints_total_limit=2"]
    run(root, env, [str(BIN / "ldmflow"), *stage_command(*steps, "storage.prefix=whole")])
    whole, before = steps_log(root), unet_files(root)

    staging = ".unet.staging"  # where a run writes until it completes
    log = root / "artifacts" / staging / "samples.jsonl"
    argv = [str(BIN / "ldmflow"), *stage_command(*steps, "storage.prefix=killed")]
    proc = subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # kill it a few steps past its checkpoint
        if log.is_file() and len(log.read_text().splitlines()) >= 14:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read().decode()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed_at = len(steps_log(root, f"artifacts/{staging}"))
    assert 14 <= killed_at < 40
    assert unet_files(root) == before  # the killed run left the previous model whole

    run(root, env, argv)  # unet.resume is `latest` by default
    resumed = steps_log(root)
    kept = {k.split("/")[-2] for k in store.list_keys("killed/checkpoints/") if k.endswith("checkpoint.json")}
    assert kept == {"step-00000020", "step-00000030"}  # checkpoints_total_limit=2
    assert [r["step"] for r in resumed] == list(range(40))
    assert json.loads((root / "artifacts/unet/metrics.json").read_text())["resumed_from_step"] == 10
    assert not log.parent.exists()  # swapped in
    for a, b in zip(whole, resumed, strict=True):
        assert a["samples"] == b["samples"], f"step {a['step']}: other samples after the resume"
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6), f"step {a['step']}"
    # 40 steps of 8 cover the 86 training samples several times: each epoch takes a sample at most once
    epochs = {r["epoch"] for r in resumed}
    assert len(epochs) >= 3
    for epoch in epochs:
        seen = [s for r in resumed if r["epoch"] == epoch for s in r["samples"]]
        assert len(seen) == len(set(seen))
    fault(f"kill -9 in train_unet at step {killed_at}", "previous model kept; resumed at 10, same losses")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process_with_the_doubled_batch(project):
    root, env, _ = project
    common = ["unet.steps=6", "unet.resume=none", "unet.checkpoint_every=0"]
    run(root, env, [str(BIN / "ldmflow"), *stage_command(*common, "unet.batch_size=8")])
    one = load_file(root / "artifacts/unet/diffusion_pytorch_model.safetensors")
    one_log = steps_log(root)

    torchrun = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(free_port()), "-m", "flows.cli"]  # fmt: skip
    run(root, env, [*torchrun, *stage_command(*common, "unet.batch_size=4")])
    two = load_file(root / "artifacts/unet/diffusion_pytorch_model.safetensors")
    two_log = steps_log(root)
    metrics = json.loads((root / "artifacts/unet/metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["global_batch"] == 8
    # each process streams through a shard folder of its own (one's eviction never hits the other's reads)
    assert {"rank0", "rank1"} <= {p.name for p in (root / ".ldmflow" / "shards").iterdir()}

    assert [r["samples"] for r in one_log] == [r["samples"] for r in two_log]
    for a, b in zip(one_log, two_log, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # Adam turns float-rounding differences of near-zero gradients into whole steps for a few weights, so
    # compare the weights as a whole, against how far a really different run (half the batch) lands
    assert relative_distance(two, one) < 1e-3
    run(root, env, [str(BIN / "ldmflow"), *stage_command(*common, "unet.batch_size=4")])
    half = load_file(root / "artifacts/unet/diffusion_pytorch_model.safetensors")
    print(f"relative distance: DDP vs doubled batch {relative_distance(two, one):.2e}, "
          f"half batch vs doubled {relative_distance(half, one):.2e}")  # fmt: skip
    assert relative_distance(two, one) < relative_distance(half, one) / 20


def relative_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a - b| / |b| over all the weights."""
    diff = torch.cat([(a[n] - w).flatten() for n, w in b.items()])
    return (diff.norm() / torch.cat([w.flatten() for w in b.values()]).norm()).item()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_lowers_the_validation_loss(project, prediction_type, tmp_path):
    from tasks.common.config import load_config
    from tasks.train_unet.loop import run_train_unet

    root, _, store = project
    paths = ProjectPaths.at(root)
    cfg = load_config(root / "params.yaml", [f"unet.prediction_type={prediction_type}", "unet.steps=60",
                      "unet.resume=none", "unet.validation.every=30", "unet.log_samples=false"])  # fmt: skip
    metrics = run_train_unet(
        cfg, paths.latents, paths.text, tmp_path / "unet", store, local_shards=tmp_path / "s"
    )
    assert metrics["val_loss"] < 0.9 * metrics["val_loss_start"], (
        metrics
    )  # fixed noise: only weights moved it
