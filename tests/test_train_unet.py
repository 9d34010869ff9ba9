"""U-Net training through the stage's own entry (`ldmflow stage train_unet`) on real caches in the test
S3 server: resuming after kill -9 (the killed run leaves the previous model in place), DDP over 2 CPU
processes (gloo) under torchrun, DDP from the registry's champion killed and resumed, and two "nodes"
(torchrun with c10d rendezvous on 127.0.0.1, a working copy each) reading the caches from the shared S3."""

from __future__ import annotations

import json
import os
import re
import shutil
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


def start_group(root: Path, env: dict, argv: list[str], log: Path) -> subprocess.Popen:
    """`argv` started in `root`, its output into `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)


def process_tree(pid: int) -> list[int]:
    """`pid` and every process under it, from /proc (torchrun starts each worker in a session of its own,
    so killing its process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except (OSError, IndexError):
        return False


def kill_group(proc: subprocess.Popen) -> None:
    """kill -9 torchrun and every worker at once, as a lost machine or the OOM killer would, and wait until
    none of them is left."""
    tree = process_tree(proc.pid)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in tree):
        assert time.monotonic() < deadline, f"processes {tree} outlived kill -9"
        time.sleep(0.05)


def finish_groups(procs: list[tuple[subprocess.Popen, Path]], timeout: float) -> None:
    """Wait for every group to exit 0; on a failure or past `timeout`, kill them all (a rank left waiting in
    a collective would otherwise wait for its peers for half an hour) and fail with their output."""
    deadline = time.monotonic() + timeout
    try:
        for proc, log in procs:
            code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
            assert code == 0, f"{' '.join(proc.args)} exited {code}\n{log.read_text()[-6000:]}"
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"still running after {timeout:.0f} s:\n" + "\n".join(log.read_text()[-3000:] for _, log in procs)
        ) from None
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                kill_group(proc)


def run_group(root: Path, env: dict, argv: list[str], log: Path, timeout: float = 300) -> None:
    finish_groups([(start_group(root, env, argv, log), log)], timeout)


def steps_log(root: Path, folder: str = "artifacts/unet") -> list[dict]:
    return [json.loads(line) for line in (root / folder / "samples.jsonl").read_text().splitlines()]


def unet_files(root: Path) -> dict[str, bytes]:
    out = root / "artifacts/unet"
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def runs_past_step(proc: subprocess.Popen, samples_log: Path, steps: int, timeout: float = 300) -> bool:
    """Wait until the run's samples log holds `steps` steps (or the run ends, or `timeout` passes); whether
    it still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if samples_log.is_file() and len(samples_log.read_text().splitlines()) >= steps:
            break
        time.sleep(0.05)
    return proc.poll() is None


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
    running = runs_past_step(proc, log, 14)  # kill it a few steps past its checkpoint
    assert running, f"the run ended before it could be killed:\n{proc.stderr.read().decode()}"
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


# what the DDP and multi-node tests run: 6 steps of a global batch of 8, however it is split over processes
SHORT = ["unet.steps=6", "unet.resume=none", "unet.checkpoint_every=0"]
WEIGHTS = "artifacts/unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def doubled_batch(project) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """One process with the whole global batch of 8: its final weights and its steps' log."""
    root, env, _ = project
    run(root, env, [str(BIN / "ldmflow"), *stage_command(*SHORT, "unet.batch_size=8")])
    return load_file(root / WEIGHTS), steps_log(root)


def test_two_process_ddp_matches_one_process_with_the_doubled_batch(project, doubled_batch):
    root, env, _ = project
    common = SHORT
    one, one_log = doubled_batch

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


def torchrun(*options: str) -> list[str]:
    """torchrun running `ldmflow` (flows.cli) in each worker, each worker's output kept under --log-dir."""
    return [str(BIN / "torchrun"), *options, "--tee", "3", "-m", "flows.cli"]


def rank_outputs(log_dir: Path) -> dict[int, str]:
    """The stdout of each worker of the torchrun whose --log-dir was `log_dir`: local rank -> text."""
    return {int(out.parent.name): out.read_text() for out in log_dir.glob("*/attempt_0/*/stdout.log")}


def champion_unet(root: Path, folder: Path) -> None:
    """A U-Net the project's caches fit, saved in `folder`, its weights drawn with a seed of its own."""
    from models.sampler.unet import build_unet

    shapes = json.loads((root / "artifacts/latents/cache.json").read_text())["latent_shapes"]
    ((channels, h, _),) = shapes.values()  # one bucket: 16x16 images
    hidden = json.loads((root / "artifacts/text/cache.json").read_text())["hidden_size"]
    torch.manual_seed(7)
    u = PARAMS["unet"]
    unet = build_unet(sample_size=h, in_channels=channels, block_out_channels=u["block_out_channels"],
                      layers_per_block=1, attention_head_dim=u["attention_head_dim"],
                      cross_attention_dim=hidden, pooled_text_embedding=True)  # fmt: skip
    unet.save_pretrained(folder)


def register_champion(root: Path, unet_dir: Path) -> str:
    """Register `unet_dir` in the project's registry as the champion, laid out as evaluate registers a
    model (the pipeline folder's `unet/`): its version."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    name = f"registered-{uuid.uuid4().hex[:8]}"  # an experiment of its own, its artifacts in this project
    run_id = client.create_run(client.create_experiment(name, (root / name).as_uri())).info.run_id
    client.log_artifacts(run_id, str(unet_dir), "text_to_image/artifacts/pipeline/unet")
    client.set_terminated(run_id)
    if not client.search_registered_models("name = 'ldmflow'"):
        client.create_registered_model("ldmflow")
    source = f"{client.get_run(run_id).info.artifact_uri}/text_to_image"
    version = client.create_model_version("ldmflow", source, run_id).version
    client.set_registered_model_alias("ldmflow", "champion", version)
    return str(version)


@pytest.mark.faults
def test_ddp_from_the_champion_killed_with_9_resumes_every_rank_at_the_same_step(project, tmp_path, fault):
    """Under `unet.init: champion` each process downloads the champion into a folder of its own: the run's
    identity must name the weights it starts from, not that folder, or the ranks resume different runs."""
    root, env, _ = project
    champion_unet(root, tmp_path / "champion")
    version = register_champion(root, tmp_path / "champion")

    steps = ["unet.init=champion", "unet.steps=16", "unet.checkpoint_every=4", "unet.batch_size=4"]
    env = {**env, "GLOO_SOCKET_IFNAME": "lo"}

    def ddp(logs: str, prefix: str) -> list[str]:
        options = ["--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
        return [*torchrun(*options, "--log-dir", str(tmp_path / logs)), *stage_command(*steps, prefix)]

    run_group(root, env, ddp("whole", "storage.prefix=champion-whole"), tmp_path / "whole.log")
    whole, whole_log = load_file(root / WEIGHTS), steps_log(root)
    started = rank_outputs(tmp_path / "whole")
    assert len(started) == 2 and all(f"from champion version {version}" in out for out in started.values())

    staging = root / "artifacts/.unet.staging/samples.jsonl"  # the steps of a run that has not completed
    argv = ddp("killed", "storage.prefix=champion-killed")
    proc = start_group(root, env, argv, tmp_path / "killed.log")
    running = runs_past_step(proc, staging, 6)  # kill it a few steps past its checkpoint
    assert running, f"it ended before the kill:\n{(tmp_path / 'killed.log').read_text()}"
    kill_group(proc)
    killed_at = len(steps_log(root, "artifacts/.unet.staging"))
    assert 6 <= killed_at < 16

    run_group(root, env, ddp("resumed", "storage.prefix=champion-killed"), tmp_path / "resumed.log", 240)
    resumed_at = {
        rank: [int(n) for n in re.findall(r"^train_unet: resumed from step (\d+)", out, re.MULTILINE)]
        for rank, out in rank_outputs(tmp_path / "resumed").items()
    }
    metrics = json.loads((root / "artifacts/unet/metrics.json").read_text())
    start = metrics["resumed_from_step"]
    assert start in (4, 8, 12) and resumed_at == {0: [start], 1: [start]}, resumed_at
    resumed_log = steps_log(root)
    assert [r["step"] for r in resumed_log] == list(range(16))
    for a, b in zip(whole_log, resumed_log, strict=True):
        assert a["samples"] == b["samples"], f"step {a['step']}: other samples after the resume"
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6), f"step {a['step']}"
    distance = relative_distance(load_file(root / WEIGHTS), whole)
    assert distance < 1e-6, f"the resumed run ends {distance:.2e} away from the uninterrupted one"
    fault(f"kill -9 of DDP train_unet (2 ranks, unet.init champion) at step {killed_at}",
          f"both ranks resumed at {start}; weights {distance:.0e} from an uninterrupted run")  # fmt: skip


def node_copy(root: Path, node: Path) -> Path:
    """Another machine's working copy of the project: the params (the shared S3 and MLflow, by
    configuration) and train_unet's declared deps, as `dvc pull` would fetch them; nothing else of `root`."""
    node.mkdir()
    shutil.copy(root / "params.yaml", node / "params.yaml")
    for dep in ("artifacts/latents", "artifacts/text", "artifacts/vae"):
        shutil.copytree(root / dep, node / dep)
    return node


def test_two_nodes_under_c10d_rendezvous_match_one_process_with_the_doubled_batch(
    project, doubled_batch, tmp_path
):
    """torchrun --nnodes 2 on 127.0.0.1, as two machines would run it: a working copy each, the caches from
    the shared S3, the rendezvous through c10d on the first node."""
    root, env, _ = project
    one, one_log = doubled_batch
    nodes = [node_copy(root, tmp_path / f"node{i}") for i in range(2)]
    endpoint, rdzv_id = f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:12]
    env = {**env, "GLOO_SOCKET_IFNAME": "lo"}  # gloo's own sockets on the loopback too
    groups = []
    for i, node in enumerate(nodes):
        host = f"is_host={str(i == 0).lower()}"  # the first node serves the rendezvous store
        rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id,
                      "--rdzv-conf", host, "--local-addr", "127.0.0.1"]  # fmt: skip
        options = ["--nnodes", "2", "--nproc-per-node", "1", *rendezvous, "--max-restarts", "0"]
        log = tmp_path / f"node{i}.log"
        argv = [
            *torchrun(*options, "--log-dir", str(tmp_path / f"l{i}")),
            *stage_command(*SHORT, "unet.batch_size=4"),
        ]
        groups.append((start_group(node, env, argv, log), log))
    finish_groups(groups, timeout=300)

    # the rendezvous decides which node is rank 0: that one writes the model into its working copy
    written = [node for node in nodes if (node / WEIGHTS).is_file()]
    assert len(written) == 1, f"the model was written on {len(written)} nodes"
    two, two_log = load_file(written[0] / WEIGHTS), steps_log(written[0])
    metrics = json.loads((written[0] / "artifacts/unet/metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["global_batch"] == 8
    # each node read the caches from the shared S3 into its own working copy
    for node in nodes:
        assert any((node / ".ldmflow/shards").glob("rank*/*")), f"{node}: no latent shards streamed"
        assert any((node / ".ldmflow/shards/text").iterdir()), f"{node}: no text shards"

    assert [r["samples"] for r in one_log] == [r["samples"] for r in two_log]
    for a, b in zip(one_log, two_log, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    distance = relative_distance(two, one)
    print(f"relative distance: two nodes vs one process with the doubled batch {distance:.2e}")
    assert distance < 1e-3
