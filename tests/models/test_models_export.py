"""A model as a diffusers pipeline folder (models/export.py): Stable Diffusion's layout, whose parts
ldmflow's loaders take as they are, and ldmflow's sampler shipped inside it, which diffusers loads in a
fresh process without ldmflow and which draws the images `generate` draws."""

from __future__ import annotations

import io
import json

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from exported import sample_exported
from PIL import Image

from models.diffusion.noise_schedule import make_train_scheduler
from models.export import export_pipeline
from models.fingerprint import module_fingerprint
from models.pretrained import load_pretrained_unet, load_pretrained_vae
from models.pyfunc import MODEL_CODE, PIPELINE, signature
from models.sampler.pipeline import LatentDiffusionPipeline
from models.sampler.text_encoder import load_text_encoder

PROMPTS = ["a small red circle at the top left", "a large blue square"]


@pytest.fixture(scope="module")
def pipe(minilm, tiny_vae, tiny_unet):
    """The tiny pipeline with per-channel latent statistics (which Stable Diffusion's pipeline ignores)."""
    vae = tiny_vae()
    vae.register_to_config(
        scaling_factor=1.0, latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.5, 2.0, 1.0, 0.7]
    )
    tokenizer, encoder = minilm
    schedule = make_train_scheduler(1000, "scaled_linear").config
    return LatentDiffusionPipeline(
        vae, tiny_unet(cross_attention_dim=384), tokenizer, encoder, schedule, 16, "cpu"
    )


@pytest.fixture(scope="module")
def folder(pipe, tmp_path_factory):
    return export_pipeline(pipe, tmp_path_factory.mktemp("export") / "pipeline")


def test_the_folder_has_stable_diffusions_layout_and_ldmflows_loaders_take_it(pipe, folder):
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "LatentDiffusionPipeline"]
    assert index["max_length"] == 16 and index["clip_skip"] == 0
    for part in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir() and index[part][1]
    assert module_fingerprint(load_pretrained_vae(str(folder))) == module_fingerprint(pipe.vae)
    assert module_fingerprint(load_pretrained_unet(str(folder))) == module_fingerprint(pipe.unet)
    tokenizer, encoder = load_text_encoder(str(folder))
    assert module_fingerprint(encoder) == module_fingerprint(pipe.text_encoder)
    assert tokenizer("a red circle")["input_ids"] == pipe.tokenizer("a red circle")["input_ids"]


def test_diffusers_alone_loads_it_in_a_fresh_process_and_draws_generates_images(pipe, folder, tmp_path):
    want = pipe.generate(PROMPTS, num_images_per_prompt=2, num_inference_steps=3, guidance_scale=4.0, seed=5)
    call = {"prompt": PROMPTS, "num_images_per_prompt": 2, "num_inference_steps": 3, "seed": 5}
    images, module = sample_exported(folder, tmp_path, **call)
    assert module.startswith("diffusers_modules.")  # the class shipped in the folder, not ldmflow's
    np.testing.assert_array_equal(images, want)  # bit for bit, on the same device


def test_ldmflows_own_loader_and_the_pyfunc_model_read_the_folder(pipe, folder, tmp_path):
    again = LatentDiffusionPipeline.from_folder(folder, device="cpu")
    assert again.max_length == 16 and type(again.scheduler) is type(pipe.scheduler)
    want = pipe.generate(PROMPTS[:1], num_inference_steps=2, seed=3)
    np.testing.assert_array_equal(again.generate(PROMPTS[:1], num_inference_steps=2, seed=3), want)
    call = again(PROMPTS[0], num_inference_steps=2, seed=3)  # diffusers' call: PIL images
    np.testing.assert_array_equal(np.asarray(call.images[0]), want[0])

    path = tmp_path / "model"
    mlflow.pyfunc.save_model(str(path), python_model=str(MODEL_CODE), artifacts={PIPELINE: str(folder)},
                             signature=signature(), pip_requirements=["torch"])  # fmt: skip
    out = mlflow.pyfunc.load_model(str(path)).predict(
        pd.DataFrame({"prompt": PROMPTS[:1]}), params={"num_inference_steps": 2, "seed": 3}
    )
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(out["image"][0])).convert("RGB")), want[0])
