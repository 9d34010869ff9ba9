"""U-Net training speed, measured side by side in one run through the stage's own entry
(`ldmflow stage train_unet`, under torchrun for 2 processes), with the default tiny models (params.yaml):

S1  steps/s with 1 process vs 2 processes (DDP: gloo on CPU, NCCL on GPUs) at the same batch per process;
    scaling efficiency = samples/s with 2 / (2 x samples/s with 1)
S2  steps/s and peak memory with vs without gradient checkpointing (1 process)

Speeds are of the training loop alone (metrics.json: steps_per_second; start-up and validation excluded).
Peak memory is allocated CUDA memory on a GPU, else the process's peak resident set above its size when
the loop started. Starts its own SeaweedFS server on 127.0.0.1 (stopped at the end); works in a temporary
project.

    .venv/bin/python benchmarks/train.py [--images 3000] [--steps 150] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(project: Path, env: dict, processes: int, overrides: list[str]) -> dict:
    """metrics.json of one train_unet run."""
    entry = [str(BIN / "ldmflow")]
    if processes > 1:
        entry = [str(BIN / "torchrun"), "--nproc-per-node", str(processes), "--master-addr", "127.0.0.1",
                 "--master-port", str(free_port()), "-m", "flows.cli"]  # fmt: skip
    argv = [*entry, "stage", "train_unet", *(a for o in overrides for a in ("--set", o))]
    proc = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads((project / "artifacts/unet/metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000, help="synthetic images (params.yaml: 3000)")
    ap.add_argument("--steps", type=int, default=150, help="timed U-Net steps per variant")
    ap.add_argument("--batch", type=int, default=64, help="batch per process")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from infra.s3 import embedded
    from infra.storage import ObjectStore
    from models.autoencoder.vae import build_vae
    from tasks.cache_latents import run_cache_latents
    from tasks.common.config import load_config
    from tasks.common.paths import ProjectPaths
    from tasks.embed_text import run_embed_text
    from tasks.ingest.stage import run_ingest

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        endpoint = embedded.start(project / ".s3", embedded.find_free_s3_port())
        try:
            params = yaml.safe_load((ROOT / "params.yaml").read_text())
            params["data"]["synthetic"]["count"] = args.images
            params["storage"].update(endpoint_url=endpoint.endpoint_url, bucket="bench")
            params["tracking"]["uri"] = f"sqlite:///{project / 'mlflow.db'}"
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            cfg = load_config(project / "params.yaml")
            paths = ProjectPaths.at(project)
            store = ObjectStore.on_server(endpoint, "bench", "cache")
            store.ensure_bucket()
            run_ingest(cfg, paths.ingested)
            v = cfg.vae  # the default VAE architecture; untrained weights make latents just as large
            build_vae(block_out_channels=v.block_out_channels, layers_per_block=v.layers_per_block,
                      norm_num_groups=v.norm_num_groups,
                      latent_channels=v.latent_channels).save_pretrained(paths.vae)  # fmt: skip
            run_cache_latents(cfg, paths.ingested, paths.vae, paths.latents, store)
            run_embed_text(cfg, paths.ingested, paths.text, store)
            env = {**os.environ, **endpoint.client_environment()}
            common = [f"unet.steps={args.steps}", f"unet.batch_size={args.batch}", "unet.resume=none",
                      "unet.checkpoint_every=0", "unet.validation.prompts=0"]  # fmt: skip
            one = train(project, env, 1, common)
            two = train(project, env, 2, common)
            checkpointed = train(project, env, 1, [*common, "unet.gradient_checkpointing=true"])
        finally:
            embedded.stop(project / ".s3")

    def above_start(m: dict) -> float:
        return m["peak_memory_mb"] - (m["memory_at_start_mb"] or 0)

    samples = {k: m["steps_per_second"] * m["global_batch"] for k, m in (("one", one), ("two", two))}
    print(f"{args.images} synthetic images, default U-Net, batch {args.batch} per process, "
          f"{args.steps} steps per variant, {os.cpu_count()} cores")  # fmt: skip
    print(
        f"S1 steps/s: 1 process {one['steps_per_second']:.2f} ({samples['one']:.0f} samples/s), "
        f"2 processes {two['steps_per_second']:.2f} ({samples['two']:.0f} samples/s): "
        f"scaling efficiency {samples['two'] / (2 * samples['one']):.2f}"
    )
    speed = (checkpointed["steps_per_second"], one["steps_per_second"])
    memory = (above_start(checkpointed), above_start(one))
    print(
        f"S2 gradient checkpointing: steps/s {speed[0]:.2f} vs {speed[1]:.2f} without "
        f"({speed[0] / speed[1]:.2f}x); "
        f"peak memory above the loop's start {memory[0]:.0f} MB vs {memory[1]:.0f} MB "
        f"({memory[0] / max(memory[1], 1e-9):.2f}x)"
    )


if __name__ == "__main__":
    main()
