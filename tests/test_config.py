import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.common.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_repo_params_yaml_is_valid_and_complete():
    cfg = load_config(REPO / "params.yaml")
    assert isinstance(cfg, Config)
    assert len(cfg.vae.block_out_channels) == 3  # latents 4x smaller than the images
    assert cfg.text.encoder.startswith("package:")


def test_unknown_key_names_its_path(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key `unet\.stepz`"):
        load_config(write(tmp_path, "unet:\n  stepz: 3\n"))


def test_ill_typed_key_names_its_path(tmp_path):
    with pytest.raises(ConfigError, match=r"`vae\.lr`"):
        load_config(write(tmp_path, "vae:\n  lr: fast\n"))


def test_nested_unknown_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.synthetic\.colours"):
        load_config(write(tmp_path, "data:\n  synthetic:\n    colours: [red]\n"))


def test_overrides_apply_and_validate(tmp_path):
    p = write(tmp_path, "unet:\n  steps: 3\n")
    cfg = load_config(
        p, ["unet.steps=7", "data.synthetic.colors=[red, blue]", "storage.endpoint_url=http://x:1"]
    )
    assert cfg.unet.steps == 7
    assert cfg.data.synthetic.colors == ["red", "blue"]
    assert cfg.storage.endpoint_url == "http://x:1"
    with pytest.raises(ConfigError, match=r"`unet\.steps`"):
        load_config(p, ["unet.steps=-1"])
    with pytest.raises(ConfigError, match=r"unknown key `unet\.nope`"):
        load_config(p, ["unet.nope=1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(p, ["unet.steps"])


def test_an_override_that_is_not_yaml_is_a_string(tmp_path):
    p = write(tmp_path, "{}\n")
    cfg = load_config(p, ["orchestration.schedule_cron=* * * * *"])
    assert cfg.orchestration.schedule_cron == "* * * * *"
    with pytest.raises(ConfigError, match=r"`unet\.steps`"):  # a string where a number goes: the key is named
        load_config(p, ["unet.steps=*3"])


def test_config_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path, "{}\n"))
    with pytest.raises(ValidationError):
        cfg.unet.steps = 3  # type: ignore[misc]


def test_bucket_name_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"`storage\.bucket`"):
        load_config(write(tmp_path, "storage:\n  bucket: No_Such\n"))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [\n"))


def test_code_defaults_match_params_yaml():
    """params.yaml is the source of every value; the schema's defaults (used for omitted keys) must agree."""
    assert load_config(REPO / "params.yaml") == Config()


@pytest.mark.parametrize(
    "key, secret, host",
    [
        ("storage.endpoint_url", "http://AKIA123:s3cr3t@", "127.0.0.1:9000"),
        ("data.endpoint_url", "https://user:pass@", "minio.example.org"),
        ("data.path", "s3://key:secret@", "bucket/images"),
        ("tracking.uri", "https://alice:hunter2@", "mlflow.example.org"),
        ("orchestration.notify_url", "https://token@", "hooks.example.org/x"),
        ("tracking.uri", "alice:hunter2@", "mlflow.example.org:5000"),  # no scheme: still a credential
    ],
)
def test_credentials_in_urls_are_refused_with_where_to_put_them(key, secret, host):
    with pytest.raises(ConfigError, match=rf"{key}.*credentials in a URL are refused.*environment"):
        load_config(REPO / "params.yaml", [f"{key}={secret}{host}"])
    scheme = f"{secret.split('//')[0]}//" if "//" in secret else ""
    load_config(REPO / "params.yaml", [f"{key}={scheme}{host}"])  # the same URL without them is fine


@pytest.mark.parametrize(
    "override, key",
    [
        ("unet.lr=.inf", "unet.lr"),
        ("eval.guidance_scale=.inf", "eval.guidance_scale"),
        ("eval.gate.floor=.nan", "eval.gate.floor"),
        ("data.background=[999,-1,3]", "data.background.0"),
        ("seed=12345678901234567890123", "seed"),
        ("seed=-1", "seed"),
    ],
)
def test_values_out_of_range_are_refused_by_key(override, key):
    with pytest.raises(ConfigError, match=rf"`{re.escape(key)}`"):
        load_config(REPO / "params.yaml", [override])


def test_deeply_nested_params_are_a_config_error(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(deep)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(REPO / "params.yaml", ["unet.lr=" + "[" * 100_000 + "]" * 100_000])
