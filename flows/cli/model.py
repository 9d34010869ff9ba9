"""Commands on a registered model: generate, interpolate, explain, latents, export, lineage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.cli.project import add_params_args, project
from tasks.common.config import Config
from tasks.common.paths import ProjectPaths

if TYPE_CHECKING:
    from mlflow import MlflowClient


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum` (argparse says which option and why)."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: it must be at least {minimum}")
        return value

    return count


def _registry_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """MLflow's refusals as one line and a non-zero exit, not a traceback: a request past the model's limits
    (exit 2, as for the other bad arguments), and a model, version or alias the registry does not have, or a
    tracking server that says no (exit 1)."""

    @wraps(command)
    def run(args: argparse.Namespace) -> int:
        from mlflow.exceptions import MlflowException  # every model command imports MLflow anyway

        try:
            return command(args)
        except MlflowException as err:
            refused = err.error_code == "INVALID_PARAMETER_VALUE"  # models/pyfunc.py's request limits
            where = f"{args.model}: " if getattr(args, "model", None) and not refused else ""
            print(f"ldmflow {args.command}: {where}{' '.join(str(err.message).split())}", file=sys.stderr)
            return 2 if refused else 1

    return run


def _add_model_args(p: argparse.ArgumentParser, out: str, sampling: bool = True, seed: bool = False) -> None:
    """What every command that draws a registered model takes: the model, the PNG, the params; and how to
    sample, where it samples."""
    p.add_argument("--model", default=None, help="model URI (default models:/<registered_model>@champion)")
    kind = "PNG" if out.endswith(".png") else "folder"
    p.add_argument("--out", default=out, help=f"output {kind} (default {out})")
    if seed:
        p.add_argument("--seed", type=int, default=0)
    if sampling:
        p.add_argument(
            "--steps", type=_at_least(1), default=None, help="sampling steps (default: the model's)"
        )
        p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    add_params_args(p)


def _sampling_params(args: argparse.Namespace) -> dict:
    """The model's request params that --steps and --guidance set (the rest keep the model's defaults)."""
    given = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    return {name: value for name, value in given.items() if value is not None}


@dataclass
class Registered:
    """The registered model `--model` names (default: the champion): its URI, the MLflow client of the
    project's registry, and the project's config. The model loads on first use (lineage loads none), from
    its pipeline folder alone."""

    uri: str
    client: MlflowClient
    cfg: Config
    paths: ProjectPaths

    @classmethod
    def connect(cls, args: argparse.Namespace) -> Registered:
        paths, cfg = project(args, environment=True)
        from infra.tracking import CHAMPION, connect

        client, _ = connect(cfg, paths)
        return cls(args.model or f"models:/{cfg.tracking.registered_model}@{CHAMPION}", client, cfg, paths)

    @cached_property
    def pipe(self):
        """The model's LatentDiffusionPipeline, from its pipeline folder's safetensors and JSON: none of the
        code that came with the model runs (no python_model.pkl, no logged code file)."""
        from infra.tracking import registered_pipeline

        return registered_pipeline(self.uri)

    @property
    def model(self) -> Any:
        """The served model (its request limits and PNG output) around the pipeline."""
        from models.pyfunc import TextToImageModel

        return TextToImageModel(self.pipe)


def _write_grid(images, out: str, ncols: int | None, what: str) -> None:
    from models.sampler.images import make_grid

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, ncols=ncols).save(path)
    print(f"wrote {path} ({len(images)} image(s) of {images.shape[2]}x{images.shape[1]}: {what})")


def cmd_generate(args: argparse.Namespace) -> int:
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    found = Registered.connect(args)
    params = {"num_images_per_prompt": args.n, "seed": args.seed, **_sampling_params(args)}
    result = found.model.predict(None, pd.DataFrame({"prompt": [args.prompt]}), params)
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
    from models.pyfunc import request_params
    from models.views.interpolation import fractions  # (torch: after the arguments are checked)
    from models.views.walks import prompt_walk, seed_sheet, seed_walk

    wanted = {"num_images_per_prompt": args.frames**2 if len(args.seeds) == 4 else args.frames}
    wanted |= _sampling_params(args)
    p = request_params(args.prompts, wanted)  # the served model's limits and defaults
    found = Registered.connect(args)
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
    from models.pyfunc import request_params
    from models.views.attention_maps import explain
    from tasks.evaluate.attention_view import attention_figure

    wanted = {"seed": args.seed, **_sampling_params(args)}
    p = request_params(args.prompts, wanted)  # the served model's limits and defaults
    if p["guidance_scale"] == 0:
        print("ldmflow explain: guidance 0 samples without the prompt: no attention to show", file=sys.stderr)
        return 2
    found = Registered.connect(args)
    explained = explain(found.pipe, args.prompts, p["seed"], p["num_inference_steps"], p["guidance_scale"])
    attention_figure(explained, args.prompts, Path(args.out))
    tokens = "; ".join(" ".join(e.tokens) for e in explained)
    print(f"wrote {args.out}: the attention maps of {len(explained)} sample(s) from {found.uri} ({tokens})")
    return 0


def cmd_latents(args: argparse.Namespace) -> int:
    """The model's VAE on the project's held-out images: projection, channel statistics, random decodes."""
    from tasks.evaluate.latent_view import latent_space_view

    found = Registered.connect(args)
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

    found = Registered.connect(args)
    export_pipeline(found.pipe, out)
    print(f"wrote {out}: the diffusers pipeline of {found.uri}; load it with "
          f"DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)")  # fmt: skip
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    """Where a registered model came from: its lineage tags, and the commands that bring them back."""
    found = Registered.connect(args)
    from mlflow.exceptions import MlflowException

    from infra.tracking import model_version, run_artifact_text
    from tasks.evaluate.lineage import FROM_RUN, LOCK_ARTIFACT, PARAMS_ARTIFACT, lineage_report

    try:
        version = model_version(found.client, found.uri)
        if args.dvc_lock and version.tags.get("lineage.source") == FROM_RUN:
            why = version.tags.get("lineage.why", "a run of other params")
            print(f"ldmflow lineage: {found.uri}: dvc.lock does not describe this version ({why}); "
                  "its own params: --run-params", file=sys.stderr)  # fmt: skip
            return 1
        if args.dvc_lock or args.run_params:
            artifact = LOCK_ARTIFACT if args.dvc_lock else PARAMS_ARTIFACT
            print(run_artifact_text(found.client, version.run_id, artifact), end="")
        else:
            print(
                lineage_report(
                    version.name, version.version, list(version.aliases), version.run_id, dict(version.tags)
                )
            )
    except MlflowException as err:
        print(f"ldmflow lineage: {found.uri}: {err.message}", file=sys.stderr)
        return 1
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="sample images from a registered model into a PNG grid")
    gen.add_argument("prompt")
    gen.add_argument("-n", type=_at_least(1), default=4, help="number of images (default 4)")
    _add_model_args(gen, "grid.png", seed=True)
    gen.set_defaults(func=_registry_errors(cmd_generate))

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
    walk.add_argument(
        "--frames", type=_at_least(2), default=8, help="frames of a walk, or a sheet's side (default 8)"
    )
    _add_model_args(walk, "interpolation.png")
    walk.set_defaults(func=_registry_errors(cmd_interpolate))

    why = sub.add_parser("explain", help="each prompt token's cross-attention map over its sample")
    why.add_argument("prompts", nargs="+", metavar="PROMPT", help="one row of maps per prompt")
    _add_model_args(why, "attention.png", seed=True)
    why.set_defaults(func=_registry_errors(cmd_explain))

    space = sub.add_parser(
        "latents", help="a registered model's latent space on the held-out images, as one figure"
    )
    _add_model_args(space, "latents.png", sampling=False)
    space.set_defaults(func=_registry_errors(cmd_latents))

    export = sub.add_parser("export", help="a registered model as a diffusers pipeline folder")
    _add_model_args(export, "pipeline", sampling=False)
    export.set_defaults(func=_registry_errors(cmd_export))

    lineage = sub.add_parser(
        "lineage", help="where a registered model came from: git commit, params, and the md5s of its inputs"
    )
    lineage.add_argument(
        "model",
        nargs="?",
        default=None,
        help="models:/NAME/VERSION or models:/NAME@ALIAS (default: champion)",
    )
    shown = lineage.add_mutually_exclusive_group()
    used = "print the dvc.lock the model's run used (a run that dvc.lock describes)"
    shown.add_argument("--dvc-lock", action="store_true", help=used)
    params = "print the params the model's run used (a file for `ldmflow run --params`)"
    shown.add_argument("--run-params", action="store_true", help=params)
    add_params_args(lineage)
    lineage.set_defaults(func=_registry_errors(cmd_lineage))
