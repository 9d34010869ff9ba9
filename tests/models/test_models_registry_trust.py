"""Loading a registered model runs none of the registry's code (DESIGN.md's threat model: whoever can write
to a shared registry). ldmflow's own loads (`ldmflow generate` and the other model commands, the gate's
re-measure of the champion) read the pipeline folder's safetensors and JSON, never the version's
`python_model.pkl` or its logged code file; and the model is logged as an MLflow "model from code", so
MLflow's own loads (`mlflow models serve`) unpickle nothing either."""

from __future__ import annotations

import io
import pickle
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow.pyfunc
import pandas as pd
import pytest
import yaml
from PIL import Image
from projects import BIN

from infra import tracking
from infra.tracking import CHAMPION
from tasks.common.config import load_config
from tasks.common.paths import ProjectPaths
from tasks.evaluate.champion import JUDGE_TAG, SETTINGS_TAG
from tasks.evaluate.registration import against_champion, register

PROMPT = "a red circle"


class _Payload:
    """A pickle that runs code when it is loaded: it creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture
def project(tiny_pipe, tmp_path):
    """A project whose registry (SQLite and a local artifact store, the embedded default) holds the tiny
    pipeline as its champion, registered the way the evaluate stage registers: (root, config, version)."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text("seed: 0\n")
    cfg = load_config(root / "params.yaml")
    with tracking.run(cfg, ProjectPaths.at(root), "evaluate") as tracker:
        version = register(cfg, tiny_pipe, tracker, CHAMPION, {})
    return root, cfg, version


def model_folder(root: Path, cfg, version: str) -> Path:
    """Where the artifact store keeps the registered version's model (MLmodel, artifacts/pipeline, ...)."""
    client, _ = tracking.connect(cfg, ProjectPaths.at(root))
    location = client.get_model_version_download_uri(cfg.tracking.registered_model, version)
    return Path(unquote(urlparse(location).path))


def plant(model: Path, marker: Path, how: str) -> None:
    """What a registry writer can do to a version: a `python_model.pkl` that runs code when unpickled, a
    code file that runs it when imported, and an MLmodel that names one of them (`how`)."""
    (model / "python_model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    (model / "planted.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport mlflow.models\nmlflow.models.set_model(lambda x: x)\n"
    )
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    flavor.pop("python_model", None)
    flavor.pop("model_code_path", None)
    if how == "pickle":
        flavor |= {"loader_module": "mlflow.pyfunc.model", "python_model": "python_model.pkl"}
    else:
        flavor |= {"loader_module": "mlflow.pyfunc.loaders.code_model", "model_code_path": "planted.py"}
    (model / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def test_the_registered_model_is_logged_from_code_with_no_pickle(project):
    root, cfg, version = project
    model = model_folder(root, cfg, version)
    assert (model / "artifacts" / "pipeline" / "model_index.json").is_file()
    assert not sorted(model.rglob("*.pkl")), "a pickle in the logged model"
    flavor = yaml.safe_load((model / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in flavor and (model / Path(flavor["model_code_path"]).name).is_file()


def test_mlflow_itself_loads_the_model_from_code_and_predicts(project, monkeypatch):
    """The served path: `mlflow.pyfunc.load_model` (what `mlflow models serve` calls) runs the logged code
    file, which builds the model from its pipeline folder; nothing is unpickled, so it loads where MLflow
    is told to refuse pickles."""
    root, cfg, version = project
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    tracking.connect(cfg, ProjectPaths.at(root))
    loaded = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.registered_model}/{version}")
    out = loaded.predict(pd.DataFrame({"prompt": [PROMPT]}), params={"num_inference_steps": 2, "seed": 3})
    assert Image.open(io.BytesIO(out["image"][0])).size == (32, 32)
    assert not sorted(model_folder(root, cfg, version).rglob("*.pkl"))


def generate(root: Path, cfg, version: str) -> None:
    """`ldmflow generate`, as a user runs it, on the champion: two images in a grid."""
    done = subprocess.run(
        [str(BIN / "ldmflow"), "generate", PROMPT, "-n", "2", "--steps", "2", "--out", "grid.png"],
        cwd=root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert Image.open(root / "grid.png").size[0] > 32


def remeasure(root: Path, cfg, version: str) -> None:
    """The gate's re-measure of a champion judged otherwise, which samples from it."""
    measured = []

    def measure(pipe) -> dict[str, float]:
        measured.append(pipe.generate([PROMPT], num_inference_steps=2, seed=0).shape)
        return {"r_precision_judge": 0.5}

    client, _ = tracking.connect(cfg, ProjectPaths.at(root))
    otherwise = {JUDGE_TAG: "another judge", SETTINGS_TAG: "other settings"}
    verdict = against_champion(
        cfg, tracking.Run(client, "unused"), {"r_precision_judge": 0.9}, otherwise, measure
    )
    assert measured == [(1, 32, 32, 3)] and str(verdict.champion) == version and verdict.champion_value == 0.5


@pytest.mark.faults
@pytest.mark.parametrize("load", [generate, remeasure], ids=["generate", "gate"])
@pytest.mark.parametrize("how", ["pickle", "code"])
def test_a_registry_writers_code_never_runs_in_ldmflows_loads(project, tmp_path, how, load, fault):
    root, cfg, version = project
    marker = tmp_path / "their-code-ran"
    plant(model_folder(root, cfg, version), marker, how)
    try:
        load(root, cfg, version)  # and the model still samples
    finally:
        assert not marker.exists(), f"{load.__name__} ran the code a registry writer planted ({how})"
    planted = "python_model.pkl" if how == "pickle" else "logged code file (MLmodel's model_code_path)"
    what = "ldmflow generate" if load is generate else "the gate's re-measure of the champion"
    fault(
        f"local attacker: a registry writer swaps the champion's {planted} for code",
        f"never ran: {what} read the pipeline folder's safetensors and sampled",
    )
