"""The embedded S3 server's idle watchdog: `python -m infra.s3.idle STATE_DIR WEED_PID IDLE_S`.

Started beside a server that nobody pinned (embedded.py). It stops the server once no process has used
it (`serving` registers its users) for IDLE_S seconds, and exits when the server it watches is gone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from infra.s3 import embedded


def watch(state_dir: Path, weed_pid: int, idle_s: float) -> None:
    idle_since = time.monotonic()
    while True:
        time.sleep(max(0.5, min(5.0, idle_s / 4)))
        if embedded.server_pid(state_dir) != weed_pid:
            return  # stopped, or replaced by another server with its own watchdog
        if embedded.pinned(state_dir) or embedded.live_users(state_dir):
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= idle_s:
            print(f"s3 idle: no user for {idle_s:.0f} s: stopping the S3 server (pid {weed_pid})", flush=True)
            embedded.stop(state_dir)
            return


if __name__ == "__main__":
    watch(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
