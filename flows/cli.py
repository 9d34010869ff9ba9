"""`ldmflow` command line: run the pipeline, run one stage for DVC, sample a registered model, show its
lineage, manage S3, collect garbage."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.common.config import Config, ConfigError, load_config
from tasks.common.paths import METRICS, ProjectPaths
from tasks.graph import ORDER, STAGES


def _add_params_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--params", default="params.yaml", metavar="FILE", help="params file (default: params.yaml)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one param, e.g. --set unet.steps=200 (repeatable)",
    )


def _add_model_args(p: argparse.ArgumentParser, out: str, sampling: bool = True, seed: bool = False) -> None:
    """What every command that draws a registered model takes: the model, the PNG, the params; and how to
    sample, where it samples."""
    p.add_argument("--model", default=None, help="model URI (default models:/<registered_model>@champion)")
    kind = "PNG" if out.endswith(".png") else "folder"
    p.add_argument("--out", default=out, help=f"output {kind} (default {out})")
    if seed:
        p.add_argument("--seed", type=int, default=0)
    if sampling:
        p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
        p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    _add_params_args(p)


def _sampling_params(args: argparse.Namespace) -> dict:
    """The model's request params that --steps and --guidance set (the rest keep the model's defaults)."""
    given = {"num_inference_steps": args.steps or None, "guidance_scale": args.guidance}
    return {name: value for name, value in given.items() if value is not None}


def cmd_run(args: argparse.Namespace) -> int:
    from flows.runtime import prepare
    from infra.s3.embedded import serving_unless_configured

    paths = ProjectPaths.at(".")
    cfg = load_config(args.params, args.overrides)  # fail fast, before Prefect's server starts
    prepare(paths)
    from flows.pipeline import pipeline

    # The embedded S3 server binds its six ports before Prefect's temporary server picks a free one: the
    # other way round, Prefect's random port can land on one of them (seen: 8336, the filer's).
    with serving_unless_configured(cfg.storage, paths.s3_state):
        outcome = pipeline(
            stages=args.stages or None,
            params_file=args.params,
            overrides=args.overrides,
            force=args.force,
            root=str(paths.root),
        )
    width = max(len(s) for s in outcome)
    for stage, state in outcome.items():
        print(f"  {stage:<{width}}  {state}")
    metrics = paths.eval / METRICS
    if metrics.is_file():
        print(f"{metrics.relative_to(paths.root)}: {metrics.read_text().strip()}")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    """What dvc.yaml's cmds call: one stage, no Prefect (DVC owns the graph here). The embedded S3 server,
    when the stage uses storage and none is running, runs for the stage's length."""
    import os
    from contextlib import ExitStack

    from flows.run_lock import project_run
    from flows.runtime import prepare
    from flows.stage_run import run_stage
    from infra.s3.embedded import serving_unless_configured

    paths = ProjectPaths.at(".")
    cfg = load_config(args.params, args.overrides)
    prepare(paths)
    # under torchrun / accelerate launch every process runs this; the first holds the project for all
    first = os.environ.get("RANK", "0") == "0"
    wait = cfg.orchestration.on_overlap == "wait"
    with ExitStack() as held:
        if first:
            held.enter_context(project_run(paths, f"ldmflow stage {args.name}", wait))
            if STAGES[args.name].object_storage:
                held.enter_context(serving_unless_configured(cfg.storage, paths.s3_state))
        result = run_stage(args.name, cfg, paths)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    """Refresh data/source_listing.json, so that `dvc repro` sees new, changed or removed source files."""
    from tasks.ingest.listing import write_listing

    paths = ProjectPaths.at(".")
    cfg = load_config(args.params, args.overrides)
    changed = write_listing(cfg.data, paths.source_listing)
    where = paths.source_listing.relative_to(paths.root)
    scanning = ", ".join(stage.name for stage in STAGES.values() if stage.scans_source)
    print(f"{where}: {f'the source changed; {scanning} is stale' if changed else 'the source is unchanged'}")
    return 0


def cmd_dvc_yaml(args: argparse.Namespace) -> int:
    """Write dvc.yaml from the stage declaration (tasks/graph.py), or with --check say whether it differs."""
    from tasks.graph import dvc_yaml

    path, text = Path("dvc.yaml"), dvc_yaml()
    current = path.read_text() if path.is_file() else None
    if args.check:
        if current != text:
            print(f"{path} differs from the declaration in tasks/graph.py: run `ldmflow dvc-yaml`",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"{path} is what tasks/graph.py declares")
        return 0
    if current != text:
        path.write_text(text)
    print(f"wrote {path}" if current != text else f"{path} was up to date")
    return 0


@dataclass
class Registered:
    """The pyfunc model `--model` names (default: the champion), its URI, and the project's config."""

    model: Any
    uri: str
    cfg: Config
    paths: ProjectPaths

    @classmethod
    def load(cls, args: argparse.Namespace) -> Registered:
        from flows.runtime import prepare

        paths = ProjectPaths.at(".")
        cfg = load_config(args.params, args.overrides)
        prepare(paths)
        import mlflow

        from infra.tracking import connect

        connect(cfg, paths)
        uri = args.model or f"models:/{cfg.tracking.registered_model}@champion"
        return cls(mlflow.pyfunc.load_model(uri), uri, cfg, paths)

    @property
    def pipe(self):
        """The model's LatentDiffusionPipeline."""
        return self.model.unwrap_python_model().pipe


def _write_grid(images, out: str, ncols: int | None, what: str) -> None:
    from models.images import make_grid

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, ncols=ncols).save(path)
    print(f"wrote {path} ({len(images)} image(s) of {images.shape[2]}x{images.shape[1]}: {what})")


def cmd_generate(args: argparse.Namespace) -> int:
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    found = Registered.load(args)
    params = {"num_images_per_prompt": args.n, "seed": args.seed, **_sampling_params(args)}
    result = found.model.predict(pd.DataFrame({"prompt": [args.prompt]}), params=params)
    images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in result["image"]])
    _write_grid(images, args.out, None, f"from {found.uri}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    """One prompt and two seeds: the noise slerped; two prompts: their embeddings at one seed; one prompt
    and four seeds: a sheet with the seeds at its corners."""
    if args.seeds is None:
        args.seeds = [0] if len(args.prompts) == 2 else [0, 1]
    if len(args.prompts) > 2:
        print("ldmflow interpolate: one prompt, or two to walk between", file=sys.stderr)
        return 2
    if len(args.prompts) == 2 and len(args.seeds) != 1:
        print("ldmflow interpolate: two prompts walk at one seed (--seeds S)", file=sys.stderr)
        return 2
    if len(args.prompts) == 1 and len(args.seeds) not in (2, 4):
        print("ldmflow interpolate: one prompt walks between 2 seeds, or over a sheet of 4", file=sys.stderr)
        return 2
    from models.interpolation import fractions  # (torch: after the arguments are checked)
    from models.pyfunc import request_params
    from models.walks import prompt_walk, seed_sheet, seed_walk

    wanted = {"num_images_per_prompt": args.frames**2 if len(args.seeds) == 4 else args.frames}
    wanted |= _sampling_params(args)
    p = request_params(args.prompts, wanted)  # the served model's limits and defaults
    found = Registered.load(args)
    pipe = found.pipe
    sampling = {"steps": p["num_inference_steps"], "guidance": p["guidance_scale"]}
    if len(args.prompts) == 2:
        images = prompt_walk(pipe, tuple(args.prompts), args.seeds[0], fractions(args.frames), **sampling)
        what = f"{args.prompts[0]!r} to {args.prompts[1]!r} at seed {args.seeds[0]}"
    elif len(args.seeds) == 2:
        images = seed_walk(pipe, args.prompts[0], tuple(args.seeds), fractions(args.frames), **sampling)
        what = f"{args.prompts[0]!r}, seed {args.seeds[0]} to seed {args.seeds[1]}"
    else:
        images = seed_sheet(pipe, args.prompts[0], tuple(args.seeds), args.frames, **sampling)
        what = f"{args.prompts[0]!r} over seeds {args.seeds} at the corners"
    _write_grid(images, args.out, args.frames, f"{what}, from {found.uri}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Each token's cross-attention map over the sample it steered."""
    from models.attention_maps import explain
    from models.pyfunc import request_params
    from tasks.evaluate.attention_view import attention_figure

    wanted = {"seed": args.seed, **_sampling_params(args)}
    p = request_params(args.prompts, wanted)  # the served model's limits and defaults
    if p["guidance_scale"] == 0:
        print("ldmflow explain: guidance 0 samples without the prompt: no attention to show", file=sys.stderr)
        return 2
    found = Registered.load(args)
    explained = explain(found.pipe, args.prompts, p["seed"], p["num_inference_steps"], p["guidance_scale"])
    attention_figure(explained, args.prompts, Path(args.out))
    tokens = "; ".join(" ".join(e.tokens) for e in explained)
    print(f"wrote {args.out}: the attention maps of {len(explained)} sample(s) from {found.uri} ({tokens})")
    return 0


def cmd_latents(args: argparse.Namespace) -> int:
    """The model's VAE on the project's held-out images: projection, channel statistics, random decodes."""
    from tasks.evaluate.latent_view import latent_space_view

    found = Registered.load(args)
    out, ingested = Path(args.out), found.paths.ingested
    measured = latent_space_view(found.pipe.vae, ingested, out, found.cfg.seed)
    pairs = zip(measured["channel_mean"], measured["channel_std"], strict=True)
    stats = ", ".join(f"{m:+.2f}/{s:.2f}" for m, s in pairs)
    print(f"wrote {out}: {measured['projection'].upper()} of {measured['points']} held-out latents of "
          f"{ingested} through the VAE of {found.uri}; channel mean/std {stats}")  # fmt: skip
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A registered model as a diffusers pipeline folder (models/export.py) that users load offline."""
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"ldmflow export: {out} exists and is not an empty folder; name a new one", file=sys.stderr)
        return 2
    from models.export import export_pipeline

    found = Registered.load(args)
    export_pipeline(found.pipe, out)
    print(f"wrote {out}: the diffusers pipeline of {found.uri}; load it with "
          f"DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)")  # fmt: skip
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    """Where a registered model came from: its lineage tags, and the commands that bring them back."""
    from flows.runtime import prepare

    paths = ProjectPaths.at(".")
    cfg = load_config(args.params, args.overrides)
    prepare(paths)
    from mlflow.exceptions import MlflowException

    from infra.tracking import connect, model_version, run_artifact_text
    from tasks.evaluate.lineage import LOCK_ARTIFACT, lineage_report

    client, _ = connect(cfg, paths)
    uri = args.model or f"models:/{cfg.tracking.registered_model}@champion"
    try:
        found = model_version(client, uri)
        if args.dvc_lock:
            print(run_artifact_text(client, found.run_id, LOCK_ARTIFACT), end="")
        else:
            print(
                lineage_report(found.name, found.version, list(found.aliases), found.run_id, dict(found.tags))
            )
    except MlflowException as err:
        print(f"ldmflow lineage: {uri}: {err.message}", file=sys.stderr)
        return 1
    return 0


def cmd_s3(args: argparse.Namespace) -> int:
    from infra.s3 import embedded

    state = ProjectPaths.at(".").s3_state
    if args.action == "start":
        port = args.port or load_config(args.params, args.overrides).storage.embedded_port
        ep = embedded.ensure_running(state, s3_port=port, pin=True)
        print(f"S3 server running at {ep.endpoint_url} (credentials in {state / 'credentials.json'})")
    elif args.action == "stop":
        embedded.stop(state)
        print("S3 server stopped")
    else:
        ep = embedded.status(state)
        print(f"S3 server running at {ep.endpoint_url}" if ep else "S3 server not running")
        return 0 if ep else 1
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """List (and with --delete, remove) what the project no longer needs: see flows/gc.py."""
    from flows import gc
    from flows.run_lock import project_run
    from infra.s3.embedded import serving_unless_configured
    from infra.storage import object_store_from_config

    paths = ProjectPaths.at(".")
    cfg = load_config(args.params, args.overrides)
    with project_run(paths, "ldmflow gc", wait=False), serving_unless_configured(cfg.storage, paths.s3_state):
        store = object_store_from_config(cfg.storage, paths.s3_state)
        found = gc.collect(store, paths)
        for item in found.garbage:
            print(f"{item.size:>14,}  {item.kind}: {item.where}")
        for why in found.unread:
            print(f"kept every cache shard: a recorded manifest cannot be read: {why}")
        kinds = sorted({item.kind for item in found.garbage})
        for kind in kinds:
            items = [g for g in found.garbage if g.kind == kind]
            print(f"{kind}: {len(items)}, {sum(g.size for g in items):,} bytes")
        total = sum(g.size for g in found.garbage)
        if args.delete:
            gc.remove(found.garbage, store)
            print(f"removed {len(found.garbage)} item(s), {total:,} bytes")
        else:
            print(f"would remove {len(found.garbage)} item(s), {total:,} bytes (a dry run: --delete removes)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the pipeline as a Prefect deployment on the cron from params (needs a Prefect server)."""
    import os

    from flows.runtime import prepare

    paths = ProjectPaths.at(".")
    cfg = load_config(args.params, args.overrides)
    prepare(paths)
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "schedules need a Prefect server: run `prefect server start` and set PREFECT_API_URL "
            "(the temporary server cannot schedule)",
            file=sys.stderr,
        )
        return 2
    from flows.pipeline import pipeline

    pipeline.serve(
        name="nightly",
        cron=cfg.orchestration.schedule_cron,
        parameters={"params_file": args.params, "overrides": args.overrides, "root": str(paths.root)},
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldmflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="run the pipeline (or the named stages) through Prefect; up-to-date stages skip"
    )
    run.add_argument("stages", nargs="*", metavar="STAGE", help=f"any of: {', '.join(ORDER)} (default: all)")
    run.add_argument(
        "--force", action="store_true", help="run the selected stages even if DVC says up to date"
    )
    _add_params_args(run)
    run.set_defaults(func=cmd_run)

    stage = sub.add_parser("stage", help="run one stage without Prefect (the command dvc.yaml runs)")
    stage.add_argument("name", choices=ORDER)
    _add_params_args(stage)
    stage.set_defaults(func=cmd_stage)

    scan = sub.add_parser(
        "scan", help="list the data source into data/source_listing.json (before `dvc repro`)"
    )
    _add_params_args(scan)
    scan.set_defaults(func=cmd_scan)

    graph = sub.add_parser("dvc-yaml", help="write dvc.yaml from the stage declaration in tasks/graph.py")
    graph.add_argument("--check", action="store_true", help="only check: exit 1 when dvc.yaml differs")
    graph.set_defaults(func=cmd_dvc_yaml)

    gen = sub.add_parser("generate", help="sample images from a registered model into a PNG grid")
    gen.add_argument("prompt")
    gen.add_argument("-n", type=int, default=4, help="number of images (default 4)")
    _add_model_args(gen, "grid.png", seed=True)
    gen.set_defaults(func=cmd_generate)

    walk = sub.add_parser(
        "interpolate", help="a grid that walks between two seeds, two prompts, or four seeds (a sheet)"
    )
    walk.add_argument("prompts", nargs="+", metavar="PROMPT", help="one prompt, or two to walk between")
    walk.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="2 or 4 seeds with one prompt (default 0 1), 1 with two (default 0)",
    )
    walk.add_argument("--frames", type=int, default=8, help="frames of a walk, or a sheet's side (default 8)")
    _add_model_args(walk, "interpolation.png")
    walk.set_defaults(func=cmd_interpolate)

    why = sub.add_parser("explain", help="each prompt token's cross-attention map over its sample")
    why.add_argument("prompts", nargs="+", metavar="PROMPT", help="one row of maps per prompt")
    _add_model_args(why, "attention.png", seed=True)
    why.set_defaults(func=cmd_explain)

    space = sub.add_parser(
        "latents", help="a registered model's latent space on the held-out images, as one figure"
    )
    _add_model_args(space, "latents.png", sampling=False)
    space.set_defaults(func=cmd_latents)

    export = sub.add_parser("export", help="a registered model as a diffusers pipeline folder")
    _add_model_args(export, "pipeline", sampling=False)
    export.set_defaults(func=cmd_export)

    lineage = sub.add_parser(
        "lineage", help="where a registered model came from: git commit, data and params hashes"
    )
    lineage.add_argument(
        "model",
        nargs="?",
        default=None,
        help="models:/NAME/VERSION or models:/NAME@ALIAS (default: champion)",
    )
    lineage.add_argument("--dvc-lock", action="store_true", help="print the dvc.lock the model's run used")
    _add_params_args(lineage)
    lineage.set_defaults(func=cmd_lineage)

    s3 = sub.add_parser("s3", help="start, stop or check the embedded SeaweedFS S3 server")
    s3.add_argument("action", choices=["start", "stop", "status"])
    s3.add_argument("--port", type=int, default=None, help="default: storage.embedded_port in params")
    _add_params_args(s3)
    s3.set_defaults(func=cmd_s3)

    collect = sub.add_parser(
        "gc", help="list local checkpoint copies, finished runs' checkpoints and unnamed cache shards"
    )
    collect.add_argument("--delete", action="store_true", help="remove them (default: a dry run)")
    _add_params_args(collect)
    collect.set_defaults(func=cmd_gc)

    serve = sub.add_parser(
        "serve", help="serve the pipeline on the cron in params (orchestration.schedule_cron)"
    )
    _add_params_args(serve)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [s for s in getattr(args, "stages", []) if s not in ORDER]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    from flows.run_lock import ProjectBusy

    try:
        return args.func(args)
    except ConfigError as err:
        print(f"ldmflow: config error:\n{err}", file=sys.stderr)
        return 2
    except ProjectBusy as err:
        print(f"ldmflow: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
