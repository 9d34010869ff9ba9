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

from flows.stage_run import run_stage
from tasks.common.config import load_config
from tasks.common.paths import ProjectPaths
from tasks.graph import ORDER, STAGES

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

# Imports the stage code once, then for each stage name read from stdin forks a child that runs the stage
# and kills itself (SIGKILL: no cleanup, no finally) as it moves its staging folder into place; prints how
# each child ended. (Forked before any model ran: one import instead of six.)
KILLED_AT_SWAP = textwrap.dedent(
    """
    import os, pathlib, signal, sys
    from tasks.common.config import load_config
    from tasks.common.paths import ProjectPaths
    from flows.stage_run import run_stage
    import tasks.train_unet.loop, tasks.evaluate.stage, tasks.train_vae, tasks.cache_latents, tasks.embed_text

    def rename(self, target, real=pathlib.Path.rename):
        if self.name.endswith(".staging"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, target)

    root = pathlib.Path(sys.argv[1])
    print("ready", flush=True)
    for name in sys.stdin:
        child = os.fork()
        if child == 0:
            os.dup2(2, 1)  # the stage's prints go to stderr: stdout answers the test
            pathlib.Path.rename = rename
            run_stage(name.strip(), load_config(root / "params.yaml"), ProjectPaths.at(root))
            os._exit(0)
        _, status = os.waitpid(child, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
    """
)


def test_kill_9_in_every_stage_then_a_rerun(tmp_path, s3_server, fault, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # MLflow sets them; put back afterwards
        monkeypatch.delenv(name, raising=False)
    env = cli_env(s3_server, OMP_NUM_THREADS="1")
    for name, value in env.items():  # the reruns run here: the same credentials as the killed runs
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    write_params(tmp_path, TINY, s3_server, f"kill9-{uuid.uuid4().hex[:10]}")
    cfg, paths = load_config(tmp_path / "params.yaml"), ProjectPaths.at(tmp_path)
    killer = subprocess.Popen([sys.executable, "-c", KILLED_AT_SWAP, str(tmp_path)], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert killer.stdout.readline().strip() == "ready"
    for name in ORDER:
        out = tmp_path / STAGES[name].outs[0]
        killer.stdin.write(name + "\n")
        killer.stdin.flush()
        assert int(killer.stdout.readline()) == -signal.SIGKILL, f"{name} was not killed"
        aside = sorted(p.name for p in out.parent.glob(f".{out.name}.*"))
        assert not out.exists() and aside == [f".{out.name}.staging"], (name, aside)

        run_stage(name, cfg, paths)  # the rerun
        assert out.is_dir() and any(out.iterdir()), name
        assert not list(out.parent.glob(f".{out.name}.*")), f"{name} left a folder aside"
        fault(f"kill -9 in {name} as its output swaps in", "rerun: the output whole in place, nothing aside")
    killer.stdin.close()
    assert killer.wait(timeout=60) == 0
