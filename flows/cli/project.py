"""The project preamble every command shares: the project in the working directory and its params."""

from __future__ import annotations

import argparse

from tasks.common.config import Config, load_config
from tasks.common.paths import ProjectPaths


def add_params_args(p: argparse.ArgumentParser) -> None:
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


def project(args: argparse.Namespace, environment: bool = False) -> tuple[ProjectPaths, Config]:
    """The project's paths and its config from --params and --set; with `environment`, this process's
    environment for Prefect and MLflow too (flows/runtime.py), which must be set before either is imported.
    The config loads first, so that an error in it fails fast, before anything starts."""
    paths = ProjectPaths.at(".")
    cfg = load_config(args.params, args.overrides)
    if environment:
        from flows.runtime import prepare

        prepare(paths)
    return paths, cfg
