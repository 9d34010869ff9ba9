"""`ldmflow` command line: run the pipeline, run one stage for DVC, sample a registered model, show its
lineage, manage S3, collect garbage."""

from __future__ import annotations

import argparse
import sys

from flows.cli import model, operations, pipeline
from tasks.common.config import ConfigError
from tasks.graph import ORDER


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldmflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for audience in (pipeline, model, operations):
        audience.add_commands(sub)
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
