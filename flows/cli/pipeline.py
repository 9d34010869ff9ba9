"""Commands that run the pipeline: run, stage, scan, dvc-yaml, serve."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flows.cli.project import add_params_args, project
from tasks.common.paths import METRICS
from tasks.graph import ORDER, STAGES


def cmd_run(args: argparse.Namespace) -> int:
    from infra.prefect_server import run_server_unless_configured
    from infra.s3.embedded import serving_unless_configured

    paths, cfg = project(args, environment=True)
    from flows.pipeline import pipeline

    # The embedded S3 server binds its six ports before the run's Prefect server takes a free one: the
    # other way round, that port could be one of them.
    with serving_unless_configured(cfg.storage, paths.s3_state), run_server_unless_configured():
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
    from flows.stage_run import run_stage
    from infra.s3.embedded import serving_unless_configured

    paths, cfg = project(args, environment=True)
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

    paths, cfg = project(args)
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


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the pipeline as a Prefect deployment on the cron from params (needs a Prefect server)."""
    import os

    paths, cfg = project(args, environment=True)
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "schedules need a Prefect server: run `prefect server start` and set PREFECT_API_URL "
            "(the temporary server cannot schedule)",
            file=sys.stderr,
        )
        return 2
    if not os.environ.get("PREFECT_API_AUTH_STRING"):
        print(
            "ldmflow serve: no PREFECT_API_AUTH_STRING: a Prefect server without auth takes runs from anyone "
            "who can reach it; on a shared host set PREFECT_SERVER_API_AUTH_STRING (README, A schedule)",
            file=sys.stderr,
        )
    from flows.pipeline import served_pipeline

    # the project, params file and overrides are this command's, fixed in the served flow: a run's
    # starter chooses only the stages and force (see served_pipeline)
    served = served_pipeline(str(paths.root), args.params, args.overrides)
    served.serve(
        name="nightly",
        cron=cfg.orchestration.schedule_cron,
        description=f"the ldmflow pipeline of {paths.root}, with the params `ldmflow serve` was given; "
        "a run chooses only `stages` and `force`",
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run", help="run the pipeline (or the named stages) through Prefect; up-to-date stages skip"
    )
    run.add_argument("stages", nargs="*", metavar="STAGE", help=f"any of: {', '.join(ORDER)} (default: all)")
    run.add_argument(
        "--force", action="store_true", help="run the selected stages even if DVC says up to date"
    )
    add_params_args(run)
    run.set_defaults(func=cmd_run)

    stage = sub.add_parser("stage", help="run one stage without Prefect (the command dvc.yaml runs)")
    stage.add_argument("name", choices=ORDER)
    add_params_args(stage)
    stage.set_defaults(func=cmd_stage)

    scan = sub.add_parser(
        "scan", help="list the data source into data/source_listing.json (before `dvc repro`)"
    )
    add_params_args(scan)
    scan.set_defaults(func=cmd_scan)

    graph = sub.add_parser("dvc-yaml", help="write dvc.yaml from the stage declaration in tasks/graph.py")
    graph.add_argument("--check", action="store_true", help="only check: exit 1 when dvc.yaml differs")
    graph.set_defaults(func=cmd_dvc_yaml)

    serve = sub.add_parser(
        "serve", help="serve the pipeline on the cron in params (orchestration.schedule_cron)"
    )
    add_params_args(serve)
    serve.set_defaults(func=cmd_serve)
