"""The model commands' bad input: counts below their minimum are argparse errors, and MLflow's refusals (a
request past the served model's limits, a model the registry does not have, a tracking server that says
no) are one line on stderr and a non-zero exit, not a traceback."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading

import pytest
from projects import BIN

from flows.cli import build_parser


@pytest.mark.faults
@pytest.mark.parametrize(
    "argv, refusal",
    [
        (["interpolate", "a", "--seeds", "1", "2", "3", "4", "--frames", "-4"],
         "--frames: -4: it must be at least 2"),
        (["interpolate", "a", "--seeds", "1", "2", "--frames", "1"], "--frames: 1: it must be at least 2"),
        (["generate", "a", "-n", "0"], "-n: 0: it must be at least 1"),
        (["generate", "a", "--steps", "0"], "--steps: 0: it must be at least 1"),
        (["explain", "a", "--steps", "-3"], "--steps: -3: it must be at least 1"),
    ],
)  # fmt: skip
def test_counts_below_their_minimum_are_argparse_errors(argv, refusal, capsys, fault):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and refusal in said, said
    fault(f"ldmflow {' '.join(argv)}", f"argparse error, exit 2: {said.split('error: ', 1)[-1]}")


class Forbidden(http.server.BaseHTTPRequestHandler):
    """A tracking server that says no to everything."""

    def do_GET(self):  # noqa: N802 - http.server's name
        body = b'{"error_code": "PERMISSION_DENIED", "message": "not for you"}'
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture
def forbidding_tracking_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.faults
def test_mlflow_refusals_are_one_line_and_a_non_zero_exit(tmp_path, forbidding_tracking_server, fault):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}

    def ldmflow(project: str, tracking: str, *args: str) -> tuple[int, str]:
        root = tmp_path / project
        root.mkdir()
        (root / "params.yaml").write_text(f"tracking: {{uri: '{tracking}'}}\n")
        done = subprocess.run([str(BIN / "ldmflow"), *args], cwd=root, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert "Traceback" not in done.stderr, done.stderr
        said = [line for line in done.stderr.splitlines() if line.startswith(f"ldmflow {args[0]}: ")]
        assert len(said) == 1, done.stderr
        return done.returncode, said[0].split(": ", 1)[1]

    sqlite = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, said = ldmflow("sheet", sqlite, "interpolate", "a", "--seeds", "1", "2", "3", "4", "--frames", "5")
    assert code == 2 and "request refused" in said and "at most 16" in said, said
    fault("ldmflow interpolate: a 5x5 sheet (25 images > 16)", f"one line, exit {code}: {said}")

    code, said = ldmflow("missing", sqlite, "generate", "a", "--model", "models:/nope/1")
    assert code == 1 and "models:/nope/1" in said and "name=nope not found" in said, said
    fault("ldmflow generate --model a version the registry lacks", f"one line, exit {code}: {said}")

    code, said = ldmflow("forbidden", forbidding_tracking_server, "generate", "a", "--model", "models:/x/1")
    assert code == 1 and "PERMISSION_DENIED" in said, said
    fault("ldmflow generate: the tracking server answers 403", f"one line, exit {code}: {said}")
