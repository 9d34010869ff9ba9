"""Commands that look after the project: its S3 server, its garbage."""

from __future__ import annotations

import argparse
import sys

from flows.cli.project import add_params_args, project
from tasks.common.paths import ProjectPaths


def cmd_s3(args: argparse.Namespace) -> int:
    from infra.s3 import embedded

    state = ProjectPaths.at(".").s3_state  # only `start` without --port reads params
    if args.action == "start":
        port = args.port or project(args)[1].storage.embedded_port
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

    paths, cfg = project(args)
    with project_run(paths, "ldmflow gc", wait=False), serving_unless_configured(cfg.storage, paths.s3_state):
        store = object_store_from_config(cfg.storage, paths.s3_state)
        try:
            found = gc.collect(store, paths)
        except gc.Refused as err:
            print(f"ldmflow gc: {err}", file=sys.stderr)
            return 2
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    s3 = sub.add_parser("s3", help="start, stop or check the embedded SeaweedFS S3 server")
    s3.add_argument("action", choices=["start", "stop", "status"])
    s3.add_argument("--port", type=int, default=None, help="default: storage.embedded_port in params")
    add_params_args(s3)
    s3.set_defaults(func=cmd_s3)

    collect = sub.add_parser(
        "gc", help="list local checkpoint copies, finished runs' checkpoints and unnamed cache shards"
    )
    collect.add_argument("--delete", action="store_true", help="remove them (default: a dry run)")
    add_params_args(collect)
    collect.set_defaults(func=cmd_gc)
