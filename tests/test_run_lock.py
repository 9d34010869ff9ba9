"""One run at a time per project: a second run fails at once naming the holder, or waits for it; a killed
holder leaves no stale lock."""

import signal
import subprocess
import sys
import time

import pytest

from flows.run_lock import ProjectBusy, lock_path, project_run
from tasks.common.paths import ProjectPaths

HOLD = """
import sys, time
from flows.run_lock import project_run
from tasks.common.paths import ProjectPaths
with project_run(ProjectPaths.at(sys.argv[1]), "the holder", wait=False):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(root, seconds: float) -> subprocess.Popen:
    command = [sys.executable, "-c", HOLD, str(root), str(seconds)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.faults
def test_a_second_run_fails_at_once_naming_the_holder(tmp_path, fault):
    holder = _holder(tmp_path, 60)
    try:
        started = time.monotonic()
        with pytest.raises(ProjectBusy, match=rf"the holder \(pid {holder.pid}.*on_overlap is 'fail'"):
            with project_run(ProjectPaths.at(tmp_path), "second", wait=False):
                pass
        assert time.monotonic() - started < 5
        fault("two concurrent runs (on_overlap: fail)", "the second refused at once, naming the holder's pid")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.faults
def test_a_second_run_waits_for_the_first(tmp_path, capsys, fault):
    holder = _holder(tmp_path, 2)
    started = time.monotonic()
    with project_run(ProjectPaths.at(tmp_path), "second", wait=True):
        assert time.monotonic() - started > 1.0  # it got in only when the first one let go
    holder.wait()
    assert "waiting for the holder" in capsys.readouterr().out
    assert lock_path(ProjectPaths.at(tmp_path)).read_text() == ""  # released: no holder left named
    fault("two concurrent runs (on_overlap: wait)", "the second waited, then ran")


@pytest.mark.faults
def test_a_killed_holder_leaves_no_stale_lock(tmp_path, fault):
    holder = _holder(tmp_path, 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with project_run(ProjectPaths.at(tmp_path), "next", wait=False):
        pass
    fault("kill -9 of the run holding the project lock", "no stale lock: the next run starts")
