import io

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import AutoencoderKL
from legacy_sampling import save_sampling_config
from mlflow.exceptions import MlflowException
from PIL import Image

from infra.tracking import registered_pipeline
from models.diffusion.noise_schedule import make_train_scheduler
from models.pyfunc import MODEL_CODE, PYFUNC_PARAMS_SCHEMA, TextToImageModel, signature
from models.sampler.images import make_grid
from models.sampler.pipeline import LatentDiffusionPipeline
from models.sampler.text_encoder import encode_captions


@pytest.fixture(scope="module")
def saved_parts(tmp_path_factory, minilm, tiny_vae, tiny_unet):
    """A tiny VAE + U-Net (cross-attention to MiniLM's 384-d tokens) and the encoder, saved as dirs."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(root / "vae")
    tiny_unet(cross_attention_dim=384).save_pretrained(root / "unet")
    tokenizer, encoder = minilm
    encoder.save_pretrained(root / "text_encoder")
    tokenizer.save_pretrained(root / "text_encoder")
    save_sampling_config(root / "sampling.json", make_train_scheduler(1000, "scaled_linear").config, 16)
    return {name: str(root / name) for name in ("vae", "unet", "text_encoder")} | {
        "sampling": str(root / "sampling.json")
    }


def test_pipeline_round_trip_is_deterministic(saved_parts):
    a = saved_parts
    pipe = LatentDiffusionPipeline.from_dirs(
        a["vae"], a["unet"], a["text_encoder"], a["sampling"], device="cpu"
    )
    assert pipe.max_length == 16 and pipe.vae.config.scaling_factor == 0.5
    prompts = ["a small red circle at the top left", "a large blue square"]
    x = pipe.generate(prompts, num_images_per_prompt=2, num_inference_steps=3, guidance_scale=4.0, seed=7)
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.uint8
    pipe2 = LatentDiffusionPipeline.from_dirs(
        a["vae"], a["unet"], a["text_encoder"], a["sampling"], device="cpu"
    )
    y = pipe2.generate(prompts, num_images_per_prompt=2, num_inference_steps=3, guidance_scale=4.0, seed=7)
    np.testing.assert_array_equal(x, y)
    z = pipe.generate(prompts, num_images_per_prompt=2, num_inference_steps=3, guidance_scale=4.0, seed=8)
    assert not np.array_equal(x, z)


def test_the_sampling_config_carries_the_text_layer_read(saved_parts, minilm, tmp_path):
    a = saved_parts
    scheduler = make_train_scheduler(1000, "scaled_linear").config
    save_sampling_config(tmp_path / "skip.json", scheduler, 16, clip_skip=2)
    parts = (a["vae"], a["unet"], a["text_encoder"])
    pipe = LatentDiffusionPipeline.from_dirs(*parts, tmp_path / "skip.json", "cpu")
    assert pipe.clip_skip == 2
    want, _ = encode_captions(*minilm, ["a red circle"], 16, clip_skip=2)
    torch.testing.assert_close(pipe.encode(["a red circle"])[0], want)
    older = {"scheduler": dict(scheduler), "max_length": 16}  # registered before clip_skip: the last layer
    assert LatentDiffusionPipeline.from_dirs(*parts, older, "cpu").clip_skip == 0


def test_pipeline_rejects_mismatched_encoder(saved_parts, minilm, tiny_unet):
    a = saved_parts
    tokenizer, encoder = minilm
    with pytest.raises(ValueError, match="16 .* 384"):
        LatentDiffusionPipeline(
            AutoencoderKL.from_pretrained(a["vae"]), tiny_unet(cross_attention_dim=16), tokenizer, encoder,
            make_train_scheduler(1000, "linear").config, 16, "cpu",
        )  # fmt: skip


def test_make_grid():
    images = np.full((5, 4, 6, 3), 200, dtype=np.uint8)
    grid = make_grid(images, ncols=3, pad=2)
    assert grid.size == (3 * 8 + 2, 2 * 6 + 2)  # (width, height)
    assert make_grid(images).size == (3 * 8 + 2, 2 * 6 + 2)  # ceil(sqrt(5)) = 3 columns


def test_pyfunc_save_load_predict(saved_parts, tmp_path):
    path = tmp_path / "model"
    mlflow.pyfunc.save_model(
        str(path),
        python_model=str(MODEL_CODE),  # as registered: a model from code
        artifacts=saved_parts,
        signature=signature(),
        pip_requirements=["torch", "diffusers", "transformers"],
    )
    model = mlflow.pyfunc.load_model(str(path))
    out = model.predict(
        pd.DataFrame({"prompt": ["a red circle", "a green triangle"]}),
        params={"num_images_per_prompt": 2, "num_inference_steps": 2, "seed": 3},
    )
    assert list(out.columns) == ["prompt", "image"] and len(out) == 4
    assert out["prompt"].tolist() == ["a red circle"] * 2 + ["a green triangle"] * 2
    img = Image.open(io.BytesIO(out["image"][0]))
    assert img.format == "PNG" and img.size == (32, 32)
    # same seed, same PNGs; the list-of-str input works too
    again = model.unwrap_python_model().predict(None, ["a red circle"], {"num_inference_steps": 2, "seed": 3})
    assert again["image"][0] == out["image"][0]
    # ldmflow's own load of a model registered before the pipeline folder: its four artifacts alone
    pipe = registered_pipeline(str(path))
    image = pipe.generate(["a red circle"], num_inference_steps=2, seed=3)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(out["image"][0])).convert("RGB")), image)
    assert [p.name for p in signature().params.params] == list(PYFUNC_PARAMS_SCHEMA)


@pytest.mark.parametrize(
    "prompts, params, limit",
    [
        (["a"] * 17, {}, r"17 prompts; a request takes 1 to 16"),
        ([], {}, r"0 prompts"),
        (["x" * 2001], {}, r"2001 characters; the limit is 2000"),
        (["a", "b"], {"num_images_per_prompt": 9}, r"2 prompts x num_images_per_prompt=9 images"),
        (["a"], {"num_images_per_prompt": 0}, r"num_images_per_prompt=0"),
        (["a"], {"num_inference_steps": 0}, r"num_inference_steps=0; allowed"),
        (["a"], {"num_inference_steps": 10_000}, r"num_inference_steps=10000; allowed"),
        (["a"], {"guidance_scale": float("nan")}, r"guidance_scale=nan; allowed"),
        (["a"], {"guidance_scale": 1e9}, r"guidance_scale=1000000000.0; allowed"),
        (["a"], {"seed": -1}, r"seed=-1; allowed"),
        (["a"], {"steps": 3}, r"unknown params \['steps'\]"),
    ],
)
def test_a_served_model_refuses_requests_past_its_limits_before_any_work(prompts, params, limit):
    """No pipeline is loaded: a refused request never reaches the model."""
    with pytest.raises(MlflowException, match=limit) as refused:
        TextToImageModel().predict(None, prompts, params)
    assert refused.value.get_http_status_code() == 400
