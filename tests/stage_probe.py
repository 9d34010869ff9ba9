"""Run one stage in a process of its own and record what its code touches (for tests/test_stage_graph.py).

    python tests/stage_probe.py PROJECT_ROOT STAGE OUT.json

Writes {"modules": project files of every module imported by the end of the stage, "reads": the params
sections the stage's code read}. The reads are recorded by a Config whose attribute access notes each
section; the MLflow run around the stage (tracking.uri, the logged params) is read through the plain
Config, since it is the harness of every stage, not the stage's code.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("flows", "models", "tasks")


def main(root: str, name: str, out: str) -> None:
    from tasks.common.config import Config, load_config
    from tasks.common.paths import ProjectPaths
    from tasks.common.tracking import stage_run
    from tasks.graph import STAGES

    reads: set[str] = set()
    sections = frozenset(Config.model_fields)

    class RecordingConfig(Config):
        def __getattribute__(self, attr: str):
            if attr in sections:
                reads.add(attr)
            return super().__getattribute__(attr)

    paths = ProjectPaths.at(root)
    cfg = load_config(paths.root / "params.yaml")
    recording = RecordingConfig.model_validate(cfg.model_dump())
    stage = STAGES[name]
    with stage_run(cfg, paths, name, stage.params) as run:
        importlib.import_module(stage.entry).main(recording, paths, run)

    modules = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(REPO):
            relative = Path(file).resolve().relative_to(REPO)
            if relative.parts[0] in PROJECT_PACKAGES:
                modules.add(relative.as_posix())
    Path(out).write_text(json.dumps({"modules": sorted(modules), "reads": sorted(reads)}, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
