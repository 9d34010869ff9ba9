"""Run stages, each in a process of its own, and record what its code touches (for tests/test_stage_graph.py).

    python tests/stage_probe.py PROJECT_ROOT OUT_DIR STAGE [STAGE ...]

Writes OUT_DIR/STAGE.json = {"modules": project files of every module imported by the end of the stage,
"reads": the params sections the stage's code read}, for each stage in the order given. The reads are
recorded by a Config whose attribute access notes each section; the MLflow run around the stage
(tracking.uri, the logged params) is read through the plain Config, since it is the harness of every
stage, not the stage's code.

The third-party libraries are imported once, here; each stage then runs in a fork of this process, so it
starts with no project module but the harness's and imports the rest itself.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("flows", "infra", "models", "tasks")
THIRD_PARTY = ("torch", "diffusers", "transformers", "accelerate", "mlflow", "pandas", "pyarrow", "PIL",
               "boto3", "torchmetrics")  # fmt: skip


def project_modules() -> list[str]:
    found = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(REPO):
            relative = Path(file).resolve().relative_to(REPO)
            if relative.parts[0] in PROJECT_PACKAGES:
                found.add(relative.as_posix())
    return sorted(found)


def probe(root: str, name: str, out: Path) -> None:
    from infra.tracking import stage_run
    from tasks.common.config import Config, load_config
    from tasks.common.paths import ProjectPaths
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
    out.write_text(json.dumps({"modules": project_modules(), "reads": sorted(reads)}, indent=2))


def main(root: str, out_dir: str, *names: str) -> int:
    for module in THIRD_PARTY:
        importlib.import_module(module)
    assert not project_modules(), "a third-party import pulled in project code"
    for name in names:
        sys.stdout.flush()
        child = os.fork()
        if child == 0:
            code = 1
            try:
                probe(root, name, Path(out_dir) / f"{name}.json")
                code = 0
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(child, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            print(f"stage_probe: {name} failed (exit {os.waitstatus_to_exitcode(status)})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
