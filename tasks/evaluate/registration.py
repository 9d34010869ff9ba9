"""A measured model into the registry: the gate's verdict against the champion (champion.py decides), the
version's tags (its metrics, how they were measured, lineage.py's provenance), the model itself as a
pyfunc whose artifact is its diffusers pipeline folder, and the decision in the evaluate run."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from infra import tracking
from infra.tracking import Run, current_champion
from models import pyfunc
from models.export import export_pipeline
from models.pyfunc import MODEL_CODE, PIPELINE, signature
from models.sampler.pipeline import LatentDiffusionPipeline
from tasks.common.config import Config
from tasks.common.paths import ProjectPaths
from tasks.evaluate.champion import Verdict, decide, metric_tag
from tasks.evaluate.lineage import LOCK_ARTIFACT, PARAMS_ARTIFACT, Lineage, lineage


def gate_and_register(
    cfg: Config,
    paths: ProjectPaths,
    pipe: LatentDiffusionPipeline,
    tracker: Run,
    metrics: dict[str, float],
    measured_alike: dict[str, str],  # the judge's key and the evaluation settings the metrics depend on
    measure: Callable[[LatentDiffusionPipeline], dict[str, float]],  # a pipeline's metrics, measured now
) -> str:
    """Register the evaluated model as champion or challenger; its version."""
    verdict = against_champion(cfg, tracker, metrics, measured_alike, measure)
    tags = measured_alike | {metric_tag(k): repr(float(v)) for k, v in metrics.items()}
    found = lineage(cfg, paths.root, paths.ingested)
    version = register(cfg, pipe, tracker, verdict.alias, tags | found.tags)
    record_decision(tracker, verdict)
    record_lineage(tracker, paths, cfg, found)
    print(f"registered {cfg.tracking.registered_model} version {version} as {verdict}")
    return version


def against_champion(
    cfg: Config,
    tracker: Run,
    metrics: dict[str, float],
    measured_alike: dict[str, str],
    measure: Callable[[LatentDiffusionPipeline], dict[str, float]],
) -> Verdict:
    """The gate's verdict on `metrics` against the registry's champion, which is measured again here when
    its own figures were measured otherwise."""
    gate, name = cfg.eval.gate, cfg.tracking.registered_model
    if gate.metric not in metrics:
        measured = ", ".join(sorted(metrics))
        raise ValueError(
            f"eval.gate.metric {gate.metric!r} is not measured on this data (measured: {measured})"
        )

    def measure_champion(version: str) -> float:  # from its pipeline folder: none of the registry's code runs
        return measure(tracking.registered_pipeline(f"models:/{name}/{version}"))[gate.metric]

    champion = current_champion(tracker.client, name)
    return decide(gate, metrics[gate.metric], champion, measured_alike, measure_champion)


def register(
    cfg: Config, pipe: LatentDiffusionPipeline, tracker: Run, alias: str, tags: dict[str, str]
) -> str:
    """Register the sampler as a pyfunc text-to-image model, logged from code, whose artifact is its
    diffusers pipeline folder (models/export.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_pipeline(pipe, Path(tmp) / PIPELINE)
        return tracking.register_text_to_image(
            tracker,
            cfg,
            MODEL_CODE,  # a "model from code": no pickle
            {PIPELINE: str(folder)},
            signature(),
            code_paths=[str(Path(pyfunc.__file__).parent)],  # the `models` package travels with the model
            alias=alias,
            tags=tags,
        )


def record_decision(tracker: Run, verdict: Verdict) -> None:
    """The gate's sentence and the champion's figure it was compared with."""
    tracker.set_tags({"ldmflow.gate": str(verdict)})
    if verdict.champion_value is not None:
        tracker.log_metrics({f"champion_{verdict.metric}": verdict.champion_value})


def record_lineage(tracker: Run, paths: ProjectPaths, cfg: Config, found: Lineage) -> None:
    """Beside the model: the run's params, and its dvc.lock where the lock describes the run (lineage.py)."""
    tracker.log_dict(cfg.model_dump(mode="json"), PARAMS_ARTIFACT)
    if found.from_lock:
        tracker.log_artifact(paths.root / "dvc.lock", str(Path(LOCK_ARTIFACT).parent))
