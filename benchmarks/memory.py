"""Peak memory of every stage at N and at 10N images, measured side by side in one run.

Each stage runs through its own entry (`ldmflow stage NAME`, what `dvc repro` runs) in a process of its
own, so its peak resident set (ru_maxrss) is that stage's alone. Two projects of the built-in synthetic
set, N and factor x N images, with the default params but fewer training steps (a stage's memory does not
grow with its steps). A stage whose memory grew with the data would hold a split or a cache in memory;
the goal is at most 1.3x at 10N. Starts its own SeaweedFS server on 127.0.0.1 (stopped at the end);
works in temporary projects.

    .venv/bin/python benchmarks/memory.py [--images 3000] [--factor 10] [--steps 100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GOAL = 1.3


def run_stage(project: Path, env: dict, name: str) -> tuple[float, float]:
    """(peak resident set in MiB, seconds) of `ldmflow stage NAME` in `project`."""
    start = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "ldmflow"), "stage", name], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"ldmflow stage {name} in {project} exited {proc.returncode}\n{stderr[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start  # ru_maxrss: KiB on Linux


def make_project(project: Path, images: int, steps: int, endpoint, bucket: str) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["synthetic"]["count"] = images
    params["vae"]["steps"] = steps
    params["unet"].update(steps=steps, checkpoint_every=0)
    params["unet"]["validation"]["every"] = 0
    params["eval"]["probe_steps"] = steps
    params["eval"]["judge"]["steps"] = steps
    params["storage"].update(endpoint_url=endpoint.endpoint_url, bucket=bucket)
    params["tracking"]["uri"] = f"sqlite:///{project / 'mlflow.db'}"
    project.mkdir(parents=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000, help="N: synthetic images of the small project")
    ap.add_argument("--factor", type=int, default=10, help="the large project has factor x N images")
    ap.add_argument("--steps", type=int, default=100, help="VAE, U-Net, probe and judge training steps")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from infra.s3 import embedded
    from tasks.graph import ORDER

    sizes = (args.images, args.images * args.factor)
    peaks: dict[int, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        endpoint = embedded.start(Path(tmp) / ".s3", embedded.find_free_s3_port())
        env = {**os.environ, **endpoint.client_environment()}
        try:
            for n in sizes:
                project = Path(tmp) / f"n{n}"
                make_project(project, n, args.steps, endpoint, f"memory-{n}")
                peaks[n] = {}
                for name in ORDER:
                    peak, seconds = peaks[n][name] = run_stage(project, env, name)
                    print(f"  {n} images: {name} peak {peak:.0f} MiB ({seconds:.0f} s)")
        finally:
            embedded.stop(Path(tmp) / ".s3")

    small, large = sizes
    print(f"peak resident set per stage, {small} vs {large} synthetic images ({args.steps} training steps), "
          f"{os.cpu_count()} cores; goal: at most {GOAL}x")  # fmt: skip
    worst = 0.0
    for name in ORDER:
        at_n, at_large = peaks[small][name][0], peaks[large][name][0]
        worst = max(worst, at_large / at_n)
        print(f"M {name:<14} {at_n:7.0f} MiB -> {at_large:7.0f} MiB: {at_large / at_n:.2f}x")
    print(f"worst {worst:.2f}x ({'within' if worst <= GOAL else 'over'} the goal of {GOAL}x)")


if __name__ == "__main__":
    main()
