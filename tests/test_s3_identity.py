"""Holding the embedded S3 server's port proves nothing: another user on the host may take it whenever weed
is not on it (between runs, or in the second before weed binds it). The server speaks HTTPS with a
certificate of the project's own CA, whose private key is gone, and ldmflow's clients and DVC trust that
CA alone; weed's unix sockets sit in the owner-only state folder, where nobody else can reach or squat them.
Each test runs the other user as a real second uid."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from other_user import (
    attackers_certificate,
    fake_s3_server,
    other_users_python,
    require_other_user,
    run_as_other_user,
)
from projects import BIN

from flows import dvc_state
from infra.s3 import embedded
from tasks.common.config import StorageConfig


@pytest.mark.faults
@pytest.mark.parametrize("speaks", ["plain HTTP", "TLS, its own CA"])
def test_a_listener_another_user_puts_on_the_s3_port_is_refused_by_name(monkeypatch, fault, speaks):
    require_other_user(needs_python=True)
    attacker = Path(tempfile.mkdtemp(prefix="ldmflow-attacker-"))
    try:
        certificate = None if speaks == "plain HTTP" else attackers_certificate(attacker)
        port = embedded.find_free_s3_port()
        # the other user takes the port after ldmflow found it free and before weed binds it
        monkeypatch.setattr(embedded, "busy_ports", lambda s3_port: {})
        state = attacker / "ours"
        with fake_s3_server(port, certificate) as requests:
            with pytest.raises(embedded.S3ServerError, match=f"port {port} is not this project's S3 server"):
                embedded.start(state, port)
        assert requests == []  # no signed request reached it
        assert embedded.server_pid(state) is None  # and the weed that lost the port is not left running
        fault(f"local attacker: another uid's S3 look-alike ({speaks}) takes the port as weed starts",
              f"refused, the port named; it got {len(requests)} requests")  # fmt: skip
    finally:
        shutil.rmtree(attacker)


@pytest.mark.faults
@pytest.mark.parametrize("speaks", ["plain HTTP", "TLS, its own CA"])
def test_dvc_push_sends_nothing_to_another_users_listener_on_a_stopped_servers_port(fault, speaks):
    """Between runs the embedded server is stopped (the idle watchdog sees to it) and its port is free."""
    require_other_user(needs_python=True)
    root = Path(tempfile.mkdtemp(prefix="ldmflow-remote-"))
    root.chmod(0o755)
    certificate = None if speaks == "plain HTTP" else attackers_certificate(root / "attacker")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # DVC's keys: only ours
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1")
    port = embedded.find_free_s3_port()
    state = root / ".ldmflow" / "s3"
    try:
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, env=env, check=True)
        dvc_state.ensure_remote(root, StorageConfig(bucket=f"b-{uuid.uuid4().hex[:8]}", embedded_port=port),
                                state)  # fmt: skip
        embedded.stop(state)
        (root / "data.txt").write_text("the project's output\n")
        subprocess.run([str(BIN / "dvc"), "add", "-q", "data.txt"], cwd=root, env=env, check=True)
        with fake_s3_server(port, certificate) as requests:
            pushed = subprocess.run(
                [str(BIN / "dvc"), "push"], cwd=root, env=env, capture_output=True, text=True
            )
        sent = [r for r in requests if r.startswith(("PUT", "POST"))]
        assert pushed.returncode != 0 and sent == [], (requests, pushed.stdout + pushed.stderr)
        assert "SSL validation failed" in pushed.stderr
        fault(f"local attacker: another uid's look-alike ({speaks}) on a stopped S3 server's port; dvc push",
              f"nothing sent ({len(requests)} requests): DVC trusts only the project's CA")  # fmt: skip
    finally:
        embedded.stop(state)
        shutil.rmtree(root)


@pytest.mark.faults
def test_weeds_sockets_are_the_owners_alone_and_nobody_can_squat_them(tmp_path, fault):
    require_other_user(needs_python=True)
    port = embedded.find_free_s3_port()
    squat = Path(tempfile.gettempdir()) / f"seaweedfs-s3-{port}.sock"  # weed's default socket path
    run_as_other_user(["touch", str(squat)], check=True)
    state = tmp_path / "s3"
    umask = os.umask(0)  # a careless caller's umask: weed must not hand it on to its sockets
    try:
        embedded.start(state, port)
    finally:
        os.umask(umask)
        squat.unlink()
    try:
        in_temp = [p for p in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock") if is_socket(p)]
        made = [p for p in state.rglob("*") if is_socket(p)] + in_temp
        reached = [s for s in made if connects_as_other_user(s)]
        assert made and reached == [], f"the other user reaches {reached}"
        assert in_temp == [] and {s.parent for s in made} == {state / "sockets"}
        assert all(stat.S_IMODE(s.lstat().st_mode) & 0o077 == 0 for s in made)
        fault(
            "local attacker: another uid squats weed's socket path and connects to its sockets",
            f"weed starts; its {len(made)} sockets: owner-only, in the state folder; {len(reached)} reached",
        )
    finally:
        embedded.stop(state)
    assert not any(s.exists() for s in made)


def is_socket(path: Path) -> bool:
    return stat.S_ISSOCK(path.lstat().st_mode)


def connects_as_other_user(path: Path) -> bool:
    probe = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
    return run_as_other_user([other_users_python(), "-c", probe, str(path)]).returncode == 0
