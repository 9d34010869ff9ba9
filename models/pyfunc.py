"""The registered text-to-image model: an MLflow pyfunc whose artifact is a diffusers pipeline folder
(models/export.py); models registered before it have the parts as four artifacts.

It is logged as an MLflow "model from code" (MODEL_CODE, no pickle), and `load_pipeline` is the one way in
from a model's artifacts: ldmflow's own loads call it on the downloaded artifacts alone, MLflow's (`mlflow
models serve`) through `load_context`. It reads safetensors and JSON, and runs none of the model's code."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

if TYPE_CHECKING:
    from models.sampler.pipeline import LatentDiffusionPipeline

# name -> (mlflow type, default); the defaults `predict` uses when a param is not given
PYFUNC_PARAMS_SCHEMA: dict[str, tuple[str, Any]] = {
    "num_images_per_prompt": ("long", 1),
    "num_inference_steps": ("long", 25),
    "guidance_scale": ("double", 4.0),
    "seed": ("long", 0),
}
PIPELINE = "pipeline"  # the artifact: the pipeline folder
PARTS = ("vae", "unet", "text_encoder", "sampling")  # the artifacts of models registered before it
# What MLflow logs with the model and runs to load it: a "model from code" (it calls set_model), so no
# python_model.pkl is written, and nothing is unpickled when MLflow loads or serves the model.
MODEL_CODE = Path(__file__).with_name("served.py")

# What one request may ask of a served model (all its images are made in one batch).
MAX_PROMPTS = 16
MAX_PROMPT_CHARS = 2000
MAX_IMAGES = 16  # prompts x num_images_per_prompt
STEPS_RANGE = (1, 250)  # num_inference_steps
GUIDANCE_RANGE = (0.0, 50.0)  # guidance_scale
SEED_RANGE = (0, 2**63 - 1)


def signature() -> ModelSignature:
    """Input `prompt: string`; output `prompt: string, image: binary` (PNG); the sampling params."""
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema([ColSpec("string", "prompt"), ColSpec("binary", "image")]),
        params=ParamSchema(
            [ParamSpec(name, kind, default) for name, (kind, default) in PYFUNC_PARAMS_SCHEMA.items()]
        ),
    )


def _png(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def load_pipeline(artifacts: Mapping[str, str | Path], device: str | None = None) -> LatentDiffusionPipeline:
    """The sampler of a registered model from its artifacts (name -> local path): the pipeline folder, or
    the four parts of a model registered before it. Safetensors and JSON only: none of the code that came
    with the model runs (the sampler modules shipped in the folder, a logged code file, a pickle)."""
    from models.sampler.pipeline import LatentDiffusionPipeline  # heavy imports only when a model loads

    a = artifacts
    if PIPELINE in a:
        return LatentDiffusionPipeline.from_folder(a[PIPELINE], device=device)
    missing = [part for part in PARTS if part not in a]
    if missing:
        raise ValueError(f"model artifacts lack {missing}; expected {PIPELINE!r} or {list(PARTS)}")
    return LatentDiffusionPipeline.from_dirs(a["vae"], a["unet"], a["text_encoder"], a["sampling"], device)


class TextToImageModel(mlflow.pyfunc.PythonModel):
    """Prompts in, PNG images out (one row per image). MLflow builds it from MODEL_CODE and calls
    `load_context`; ldmflow's commands give it the pipeline they loaded (`load_pipeline`)."""

    def __init__(self, pipe: LatentDiffusionPipeline | None = None):
        self.pipe = pipe

    def load_context(self, context) -> None:
        self.pipe = load_pipeline(context.artifacts)

    def predict(self, context, model_input, params=None):
        """model_input: DataFrame with a `prompt` column (or a list of str) -> DataFrame[prompt, image]."""
        if isinstance(model_input, pd.DataFrame):
            if "prompt" not in model_input.columns:
                raise ValueError(f"input needs a `prompt` column, got columns {list(model_input.columns)}")
            prompts = [str(p) for p in model_input["prompt"]]
        elif isinstance(model_input, str):
            prompts = [model_input]
        else:
            prompts = [str(p) for p in model_input]
        p = request_params(prompts, params)
        n = p["num_images_per_prompt"]
        images = self.pipe.generate(
            prompts,
            num_images_per_prompt=n,
            num_inference_steps=p["num_inference_steps"],
            guidance_scale=p["guidance_scale"],
            seed=p["seed"],
        )
        return pd.DataFrame(
            {"prompt": [q for q in prompts for _ in range(n)], "image": [_png(img) for img in images]}
        )


def _refuse(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)  # HTTP 400 when served


def request_params(prompts: list[str], params: dict | None) -> dict[str, Any]:
    """The sampling params of one request, checked against the limits above before any work; each
    refusal (HTTP 400 when served) names the limit."""
    given = dict(params or {})
    unknown = set(given) - set(PYFUNC_PARAMS_SCHEMA)
    if unknown:
        raise _refuse(f"unknown params {sorted(unknown)}; allowed: {list(PYFUNC_PARAMS_SCHEMA)}")
    p = {name: given.get(name, default) for name, (_, default) in PYFUNC_PARAMS_SCHEMA.items()}
    try:
        n, steps, seed = int(p["num_images_per_prompt"]), int(p["num_inference_steps"]), int(p["seed"])
        guidance = float(p["guidance_scale"])
    except (TypeError, ValueError, OverflowError) as err:
        raise _refuse(f"params must be numbers: {err}") from None
    longest = max((len(q) for q in prompts), default=0)
    checks = [
        (1 <= len(prompts) <= MAX_PROMPTS, f"{len(prompts)} prompts; a request takes 1 to {MAX_PROMPTS}"),
        (longest <= MAX_PROMPT_CHARS, f"a prompt of {longest} characters; the limit is {MAX_PROMPT_CHARS}"),
        (n >= 1, f"num_images_per_prompt={n}; it must be at least 1"),
        (len(prompts) * n <= MAX_IMAGES, f"{len(prompts)} prompts x num_images_per_prompt={n} images; "
                                         f"a request makes at most {MAX_IMAGES}"),
        (STEPS_RANGE[0] <= steps <= STEPS_RANGE[1], f"num_inference_steps={steps}; allowed: {STEPS_RANGE}"),
        (math.isfinite(guidance) and GUIDANCE_RANGE[0] <= guidance <= GUIDANCE_RANGE[1],
         f"guidance_scale={guidance}; allowed: a number in {GUIDANCE_RANGE}"),
        (SEED_RANGE[0] <= seed <= SEED_RANGE[1], f"seed={seed}; allowed: {SEED_RANGE}"),
    ]  # fmt: skip
    refused = [why for ok, why in checks if not ok]
    if refused:
        raise _refuse("request refused: " + "; ".join(refused))
    return {
        "num_images_per_prompt": n,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "seed": seed,
    }
