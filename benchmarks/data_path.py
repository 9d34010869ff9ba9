"""The data path, measured side by side in one run with the default tiny models (params.yaml):

P1  U-Net train steps/s from the caches vs encoding images (VAE) and captions (text encoder) every step
P2  U-Net train steps/s streaming the latent cache from the S3 server vs all latents in RAM (goal >= 0.95)
P3  cache stage images/s vs a bare VAE-encoder forward loop over the same images (goal >= 0.9), and the
    stage with its S3 uploads left out (shards encoded and packed, not stored): what storing costs
and the stored bytes per sample of each cache.

Starts its own SeaweedFS server on 127.0.0.1 (stopped at the end) and works in a temporary folder.

    .venv/bin/python benchmarks/data_path.py [--images 12000] [--steps 240] [--rounds 6] [--server-core N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin_apart(server_pid: int, core: int) -> int:
    """Put every thread of the S3 server on `core` and this process on the other cores (threads it starts
    later inherit that); returns how many cores this process keeps."""
    for thread in os.listdir(f"/proc/{server_pid}/task"):
        os.sched_setaffinity(int(thread), {core})
    mine = os.sched_getaffinity(0) - {core}
    os.sched_setaffinity(0, mine)
    return len(mine)


def rates_in_turns(steps: dict[str, Callable[[], object]], total: int, rounds: int, warmup: int = 10):
    """Calls per second of each `step()` in each of `rounds` rounds; a round times every variant in turn,
    total / rounds calls each."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    n = max(1, total // rounds)
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(n):
                step()
            rates[name].append(n / (time.perf_counter() - start))
    return rates


def paired(a: list[float], b: list[float]) -> float:
    """The median over rounds of a / b within a round. Both sides of a pair ran back to back, so a change of
    the machine's speed between rounds (this VM shifts by up to 20%) moves them alike; comparing each
    side's best round instead lets one side catch a fast spell the other missed."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # params.yaml has 3000; 12000 makes the cache stage run long enough (seconds) that its fixed start-up
    # (VAE load, S3 client, manifests: about 0.1 s) does not decide P3
    ap.add_argument("--images", type=int, default=12000, help="synthetic images")
    ap.add_argument("--steps", type=int, default=240, help="timed U-Net steps per variant")
    ap.add_argument("--rounds", type=int, default=6, help="rounds of train steps and of cache stage runs")
    ap.add_argument(
        "--server-core", type=int, default=None,
        help="run the S3 server alone on this core and everything else on the others: a stand-in for an S3 "
        "server on another machine (by default it shares every core with the encoder, as `ldmflow` does)",
    )  # fmt: skip
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import pandas as pd
    import torch

    from infra.s3 import embedded
    from infra.storage import ObjectStore
    from models.autoencoder.vae import build_vae
    from models.diffusion.sample_draws import draw_samples
    from models.sampler.device import pick_device
    from models.sampler.images import to_model_space
    from models.sampler.latents import posterior_fp16, set_normalisation, to_diffusion_space
    from models.sampler.text_encoder import encode_captions, load_text_encoder
    from tasks.cache_latents import run_cache_latents
    from tasks.common.config import load_config
    from tasks.common.content_cache import ShardResult, encode_shard, gather
    from tasks.common.ingested import read_ingested
    from tasks.embed_text import run_embed_text
    from tasks.ingest.stage import run_ingest
    from tasks.train_unet.data import load_training_set
    from tasks.train_unet.latent_stream import LatentStream, plan_epoch
    from tasks.train_unet.trainer import MicroBatch, UnetTraining, make_accelerator

    torch.manual_seed(0)
    device = pick_device()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        endpoint = embedded.start(tmp / "s3", embedded.find_free_s3_port())
        try:
            server_pid = int((tmp / "s3" / "server.pid").read_text())
            if args.server_core is not None:  # inside the try: a bad core still stops the server
                torch.set_num_threads(pin_apart(server_pid, args.server_core))
            store = ObjectStore.on_server(endpoint, "bench", "cache")
            store.ensure_bucket()
            cfg = load_config(
                ROOT / "params.yaml", [f"data.synthetic.count={args.images}", "storage.bucket=bench"]
            )
            u, b = cfg.unet, cfg.unet.batch_size
            run_ingest(cfg, tmp / "ingested")
            manifest, images = read_ingested(tmp / "ingested")
            v = cfg.vae  # the default VAE architecture; untrained weights encode just as fast
            vae = build_vae(block_out_channels=v.block_out_channels, layers_per_block=v.layers_per_block,
                            norm_num_groups=v.norm_num_groups, latent_channels=v.latent_channels)  # fmt: skip
            with torch.no_grad():
                set_normalisation(vae, [to_model_space(images[:256])], v.latent_norm)
            vae.save_pretrained(tmp / "vae")
            vae = vae.to(device).eval()

            # P3: the cache stage against a bare loop of the stage's own VAE forward (same batches, same
            # float16 posterior out) over the same images, already in RAM
            def bare_loop() -> float:
                start = time.perf_counter()
                with torch.no_grad():
                    for i in range(0, len(images), cfg.latents.encode_batch_size):
                        batch = to_model_space(images[i : i + cfg.latents.encode_batch_size]).to(device)
                        posterior_fp16(vae, batch, cfg.latents.flip)
                return len(images) / (time.perf_counter() - start)

            # in turns, one run of each per round; the first round only warms up (kernels, S3 volumes)
            def encode_only(jobs, desc):  # the stage's shards encoded and packed, not uploaded
                return [ShardResult(job.name, "", "", False, len(encode_shard(job))) for job in jobs]

            stage_rates, bare_rates, server_cpu, local_rates = [], [], [], []
            for run in range(1 + args.rounds):
                server_start = cpu_seconds(server_pid)
                start = time.perf_counter()
                run_cache_latents(cfg, tmp / "ingested", tmp / "vae", tmp / f"cache{run}" / "latents",
                                  ObjectStore.on_server(endpoint, "bench", f"cache{run}"))  # fmt: skip
                stage_rates.append(len(images) / (time.perf_counter() - start))
                server_cpu.append(cpu_seconds(server_pid) - server_start)
                bare_rates.append(bare_loop())
                start = time.perf_counter()
                run_cache_latents(cfg, tmp / "ingested", tmp / "vae", tmp / f"local{run}", store,
                                  map_shards=encode_only)  # fmt: skip
                local_rates.append(len(images) / (time.perf_counter() - start))
            stage_rates, bare_rates, local_rates = stage_rates[1:], bare_rates[1:], local_rates[1:]
            p3, p3_local = paired(stage_rates, bare_rates), paired(local_rates, bare_rates)
            stage_seconds = len(images) / statistics.median(stage_rates)
            server_seconds = statistics.median(server_cpu[1:])
            run_embed_text(cfg, tmp / "ingested", tmp / "text", store)

            # the three ways to feed the same U-Net training step
            data = load_training_set(tmp / "cache1" / "latents", tmp / "text", store, tmp / "text-local")
            (shape,) = data.latent_shapes.values()
            training = UnetTraining.build(u, make_accelerator(u), tuple(shape), data.captions.hidden_size)
            items = data.items
            refs = [list(items[c]) for c in ("shard", "shard_sha256", "shard_index")]
            in_ram = gather(store, *refs, "mean").float()
            plan = plan_epoch(items, b, cfg.seed, 0, u.shuffle_window)
            stream = LatentStream(store, items, b, cfg.seed, tmp / "shards", window=u.shuffle_window,
                                  prefetch=u.prefetch_shards).batches()  # fmt: skip
            tokenizer, encoder = load_text_encoder(cfg.text.encoder, device)
            by_id = dict(zip(manifest["sample_id"], range(len(manifest)), strict=True))
            pixel_rows = torch.tensor([by_id[s] for s in items["sample_id"]])
            step_no = iter(range(10**9))

            def train(latents: torch.Tensor, rows) -> None:
                text = data.text_index[rows]
                draws = draw_samples(cfg.seed, 0, range(b), u.num_train_timesteps, tuple(shape), 0.0)
                latents = to_diffusion_space(latents, data.normalisation)
                training.step([MicroBatch(latents, *data.text(text), draws.noise)])

            def from_ram() -> None:
                rows = plan[next(step_no) % len(plan)]
                train(in_ram[rows], rows)

            def from_stream() -> None:
                batch, cached = next(stream)
                train(cached["mean"].float(), batch.rows)

            def on_the_fly() -> None:
                rows = plan[next(step_no) % len(plan)]
                with torch.no_grad():
                    pixels = to_model_space(images[pixel_rows[rows].numpy()]).to(device)
                    latents = vae.encode(pixels).latent_dist.mean.float()
                    encode_captions(tokenizer, encoder, list(items["caption"].iloc[rows]),
                                    data.captions.length, clip_skip=cfg.text.clip_skip)  # fmt: skip
                train(latents, rows)

            rates = rates_in_turns({"ram": from_ram, "stream": from_stream, "fly": on_the_fly}, args.steps,
                                   args.rounds)  # fmt: skip
            p1, p2 = paired(rates["stream"], rates["fly"]), paired(rates["stream"], rates["ram"])
            ram, streamed, fly = (statistics.median(rates[name]) for name in ("ram", "stream", "fly"))
            latents = pd.read_parquet(tmp / "cache1" / "latents" / "manifest.parquet")
            latent_bytes = sum(store.head(s)["size"] for s in set(latents["shard"]))
            text = pd.read_parquet(tmp / "text" / "manifest.parquet")
            text_bytes = sum(store.head(s)["size"] for s in set(text["shard"]))
        finally:
            embedded.stop(tmp / "s3")

    where_server = "on the same cores" if args.server_core is None else f"alone on core {args.server_core}"
    print(
        f"{len(images)} synthetic images at {cfg.data.resolution}px, U-Net batch {b}, "
        f"{args.steps} train steps per variant; {args.rounds} rounds, each timing every variant in turn. "
        "Rates are medians over rounds; ratios are medians of the ratios within a round"
    )
    print(
        f"P1 train steps/s: from caches {streamed:.2f}, encoding VAE + text every step {fly:.2f}: {p1:.2f}x"
    )
    print(
        f"P2 train steps/s: streaming from S3 {streamed:.2f}, all latents in RAM {ram:.2f}: "
        f"{p2:.2f} (goal >= 0.95)"
    )
    print(
        f"P3 images/s: cache stage {statistics.median(stage_rates):.0f}, bare VAE-encoder loop "
        f"{statistics.median(bare_rates):.0f}: {p3:.2f} (goal >= 0.9); the same stage without its S3 "
        f"uploads: {p3_local:.2f}; the S3 server ({where_server}) used {server_seconds:.2f} CPU s of the "
        f"stage's {stage_seconds:.2f} s"
    )
    print(f"stored bytes per sample: latents {latent_bytes / len(latents):.0f} (mean + std, float16), "
          f"text {text_bytes / len(text):.0f} per distinct caption ({len(text)} captions)")  # fmt: skip


if __name__ == "__main__":
    main()
