"""The registered text-to-image model: an MLflow pyfunc whose artifacts are diffusers/transformers dirs."""

from __future__ import annotations

import io
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

# name -> (mlflow type, default); the defaults `predict` uses when a param is not given
PYFUNC_PARAMS_SCHEMA: dict[str, tuple[str, Any]] = {
    "num_images_per_prompt": ("long", 1),
    "num_inference_steps": ("long", 25),
    "guidance_scale": ("double", 4.0),
    "seed": ("long", 0),
}
ARTIFACTS = ("vae", "unet", "text_encoder", "sampling")


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


class TextToImageModel(mlflow.pyfunc.PythonModel):
    """Prompts in, PNG images out (one row per image)."""

    def load_context(self, context) -> None:
        from models.pipeline import LatentDiffusionPipeline  # heavy imports only when served

        missing = [a for a in ARTIFACTS if a not in context.artifacts]
        if missing:
            raise ValueError(f"model artifacts lack {missing}; expected {list(ARTIFACTS)}")
        a = context.artifacts
        self.pipe = LatentDiffusionPipeline.from_dirs(a["vae"], a["unet"], a["text_encoder"], a["sampling"])

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
        given = dict(params or {})
        unknown = set(given) - set(PYFUNC_PARAMS_SCHEMA)
        if unknown:
            raise ValueError(f"unknown params {sorted(unknown)}; allowed: {list(PYFUNC_PARAMS_SCHEMA)}")
        p = {name: given.get(name, default) for name, (_, default) in PYFUNC_PARAMS_SCHEMA.items()}
        n = int(p["num_images_per_prompt"])
        images = self.pipe.generate(
            prompts,
            num_images_per_prompt=n,
            num_inference_steps=int(p["num_inference_steps"]),
            guidance_scale=float(p["guidance_scale"]),
            seed=int(p["seed"]),
        )
        return pd.DataFrame(
            {"prompt": [q for q in prompts for _ in range(n)], "image": [_png(img) for img in images]}
        )
