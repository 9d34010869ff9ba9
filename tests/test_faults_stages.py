"""kill -9 in every stage, at the worst moment: its new output complete aside, the swap into place begun.
The rerun finds no half output in place, puts the output there whole, and leaves nothing aside. (The
previous output's return after such a kill: test_atomic_outputs.py; kill -9 mid-training: test_train_unet.py;
mid-cache: test_cache_integrity.py.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import uuid

import pytest
from projects import TINY, cli_env, write_params

from tasks.common.config import load_config
from tasks.common.paths import ProjectPaths
from tasks.common.stage_run import run_stage
from tasks.graph import ORDER, STAGES

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

# A stage run in a process that kills itself (SIGKILL: no cleanup, no finally) as it moves its staging
# folder into place.
KILLED_AT_SWAP = textwrap.dedent(
    """
    import os, pathlib, signal, sys
    from tasks.common.config import load_config
    from tasks.common.paths import ProjectPaths
    from tasks.common.stage_run import run_stage

    real = pathlib.Path.rename
    def rename(self, target):
        if self.name.endswith(".staging"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, target)
    pathlib.Path.rename = rename
    root = pathlib.Path(sys.argv[2])
    run_stage(sys.argv[1], load_config(root / "params.yaml"), ProjectPaths.at(root))
    """
)


def test_kill_9_in_every_stage_then_a_rerun(tmp_path, s3_server, fault, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # MLflow sets them; put back afterwards
        monkeypatch.delenv(name, raising=False)
    write_params(tmp_path, TINY, s3_server, f"kill9-{uuid.uuid4().hex[:10]}")
    cfg, paths = load_config(tmp_path / "params.yaml"), ProjectPaths.at(tmp_path)
    env = cli_env(s3_server, OMP_NUM_THREADS="1")
    for name in ORDER:
        out = tmp_path / STAGES[name].outs[0]
        killed = subprocess.run([sys.executable, "-c", KILLED_AT_SWAP, name, str(tmp_path)], env=env,
                                capture_output=True, text=True, timeout=600)  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, f"{name}: {killed.stderr[-3000:]}"
        aside = sorted(p.name for p in out.parent.glob(f".{out.name}.*"))
        assert not out.exists() and aside == [f".{out.name}.staging"], (name, aside)

        run_stage(name, cfg, paths)  # the rerun
        assert out.is_dir() and any(out.iterdir()), name
        assert not list(out.parent.glob(f".{out.name}.*")), f"{name} left a folder aside"
        fault(f"kill -9 in {name} as its output swaps in", "rerun: the output whole in place, nothing aside")
