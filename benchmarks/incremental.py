"""The nightly run's work after 1% more images arrive, against the full run before it, in one run.

A user folder of N photo-like JPEGs with sidecar captions; a project set up for nightly runs
(`vae.init: champion`, `unet.init: champion`) on the embedded default (its own S3 server and MLflow DB).
`ldmflow run` once (the full run: nothing to reuse, no champion yet), then N/100 new images in the
folder and `ldmflow run` again (the nightly run). For each stage: the items it decoded or encoded and the
seconds of its own work (`stage_work_seconds`), nightly against full. Goals: the ingest and cache stages'
work at most 5% of the full run's, with no unchanged item decoded or encoded again.

Both runs start the embedded S3 server and Prefect's temporary server, which share the cores with the
stages, as in `make run`. With `--server-core N` the S3 server and a `prefect server start` run alone on
core N and both runs on the other cores (see pinned_servers.py): the figure for servers on other machines.

    .venv/bin/python benchmarks/incremental.py [--images 2000] [--set unet.steps=300 ...] [--photos DIR]
                                               [--server-core N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from ingest import make_photos  # noqa: E402
from overhead import make_project, stage_work, timed_run  # noqa: E402
from pinned_servers import run_cores, servers_on_core  # noqa: E402

GOAL = 0.05
# the first model becomes champion whatever it scores (floor 0): measured here is the work, not the model
NIGHTLY = ["data.source=sidecar", "vae.init=champion", "unet.init=champion", "eval.gate.floor=0"]


def counts(project: Path) -> dict[str, tuple[int, int]]:
    """{stage: (items done now, items reused)} from the stages' own reports."""
    ingest = json.loads((project / "data/ingested/report.json").read_text())
    latents = json.loads((project / "artifacts/latents/cache.json").read_text())
    text = json.loads((project / "artifacts/text/cache.json").read_text())
    return {
        "ingest": (ingest["decoded"], ingest["reused"]),
        "cache_latents": (latents["items_computed"], latents["items_reused"]),
        "embed_text": (text["items_computed"], text["items_reused"]),
    }


def add_photos(folder: Path, start: int, n: int) -> None:
    """`n` new photos named after the existing ones (a different seed, so new pixels and captions)."""
    with tempfile.TemporaryDirectory() as tmp:
        for path in make_photos(Path(tmp), n, seed=start):
            number = start + int(path.stem)
            path.rename(folder / f"{number:05d}.jpg")
            (folder / f"{number:05d}.txt").write_text(f"photo number {number} with six round things\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000, help="N: images of the first run")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    ap.add_argument("--photos", type=Path, metavar="DIR",
                    help="keep the N generated photos in DIR/N and start from them next time (the same N "
                         "gives the same photos): 20,000 take about 11 minutes to make")  # fmt: skip
    ap.add_argument("--server-core", type=int, metavar="N",
                    help="the S3 and Prefect servers alone on core N, the runs on the others")  # fmt: skip
    args = ap.parse_args()
    new = max(1, args.images // 100)
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        started = time.perf_counter()
        made = args.photos / f"{args.images}" if args.photos else photos
        if not (made / "done").is_file():
            make_photos(made, args.images)
            (made / "done").touch()
        if made != photos:  # the run adds to its folder: a copy (hard links; the photos are not changed)
            shutil.copytree(made, photos, copy_function=os.link, ignore=shutil.ignore_patterns("done"))
        print(f"{args.images} photos ready in {time.perf_counter() - started:.0f} s")
        project = Path(tmp) / "project"
        make_project(project, [*NIGHTLY, f"data.path={photos}", *args.overrides])
        with ExitStack() as servers:
            where = {}
            if args.server_core is not None:
                env = servers.enter_context(servers_on_core(project, args.server_core, Path(tmp) / "prefect"))
                where = {"env": env, "cores": run_cores(args.server_core)}
            full_wall = timed_run(project, **where)
            full_work, full_counts = stage_work(project), counts(project)
            add_photos(photos, args.images, new)
            nightly_wall = timed_run(project, **where)
            nightly_work, nightly_counts = stage_work(project), counts(project)
        vae_metrics = json.loads((project / "artifacts/vae/metrics.json").read_text())
        vae_init = vae_metrics.get("kept_champion_version")

    print(f"{args.images} images, then {new} more (1%); {' '.join(args.overrides) or 'default params'}")
    if args.server_core is None:
        print("the S3 and Prefect servers shared every core with the runs")
    else:
        print(f"the S3 and Prefect servers ran alone on core {args.server_core}, the runs on cores "
              f"{sorted(where['cores'])}")  # fmt: skip
    print(f"the nightly run kept the VAE of champion version {vae_init}" if vae_init else "VAE retrained")
    print(f"{'stage':<14} {'full s':>8} {'nightly s':>10} {'ratio':>7}   done (reused): full -> nightly")
    gated = ("ingest", "cache_latents", "embed_text")
    within = True
    for stage, seconds in full_work.items():
        ratio = nightly_work.get(stage, 0.0) / seconds
        done = ""
        if stage in nightly_counts:
            (a, b), (c, d) = full_counts[stage], nightly_counts[stage]
            done = f"{a} ({b}) -> {c} ({d})"
            within &= stage not in gated or (ratio <= GOAL and c <= new)
        print(f"R {stage:<12} {seconds:8.1f} {nightly_work.get(stage, 0.0):10.1f} {ratio:7.1%}   {done}")
    full_sum, nightly_sum = sum(full_work[s] for s in gated), sum(nightly_work.get(s, 0.0) for s in gated)
    together = nightly_sum / full_sum
    print(f"ingest + caches: full {full_sum:.1f} s, nightly {nightly_sum:.1f} s ({together:.1%})")
    print(f"wall: full {full_wall:.1f} s, nightly {nightly_wall:.1f} s ({nightly_wall / full_wall:.1%})")
    print(f"ingest and cache stages {'within' if within else 'over'} the goal: at most {GOAL:.0%} of the "
          f"full run's work and only the {new} new items done")  # fmt: skip


if __name__ == "__main__":
    main()
