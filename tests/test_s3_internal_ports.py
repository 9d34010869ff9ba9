"""The embedded SeaweedFS serves S3 and, beside it, its master, volume, filer and admin over HTTP and gRPC.
Only the S3 port may answer someone without the project's keys: each internal port refuses a client
without weed's own certificate, in plain HTTP and in TLS alike, while weed's own certificate gets in (so
the refusals are not just a closed port)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl

import pytest

from infra.s3.tls import ensure_certificates

HTTP2_PREFACE = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
)  # + empty SETTINGS


def internal_ports(state_dir) -> dict[str, int]:
    ports = json.loads((state_dir / "server.json").read_text())["ports"]
    return {name: port for name, port in ports.items() if name not in ("s3",)}


def plain_answer(port: int, grpc: bool) -> str:
    """What the port says to a client speaking plain text (HTTP, or gRPC's HTTP/2)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(HTTP2_PREFACE if grpc else b"GET /dir/assign HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            return sock.recv(200).decode("latin-1")
        except ConnectionResetError:
            return ""


def tls_answer(port: int, grpc: bool, cert: tuple[str, str] | None) -> str:
    """The status line (HTTP) or the first bytes (gRPC) the port sends over TLS; 'refused: ...' when the
    handshake or the first read fails."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(*cert)
    if grpc:
        ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as sock:
            if grpc:
                sock.sendall(HTTP2_PREFACE)
                return repr(sock.recv(100)) or "refused: closed"
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.sock = sock
            conn.request("GET", "/dir/assign")
            response = conn.getresponse()
            return f"HTTP {response.status} {response.read(200)!r}"
    except (ssl.SSLError, ConnectionError, OSError) as err:
        return f"refused: {type(err).__name__}: {err}"


@pytest.mark.faults
def test_only_the_s3_port_answers_without_weeds_certificate(s3_server, s3_state_dir, fault):
    ports = internal_ports(s3_state_dir)
    assert set(ports) == {"s3.grpc"} | {
        f"{s}{g}" for s in ("master", "volume", "filer", "admin") for g in ("", ".grpc")
    }
    for name, port in ports.items():
        grpc = name.endswith(".grpc")
        plain = plain_answer(port, grpc)
        assert plain == "" or "HTTP request to an HTTPS server" in plain, (name, plain)
        assert tls_answer(port, grpc, cert=None).startswith("refused:"), name
        fault(
            f"unauthenticated request to weed's {name} port",
            "refused (plain and TLS without the certificate)",
        )

    files = ensure_certificates(s3_state_dir)
    own = (str(files["cert"]), str(files["key"]))
    assigned = tls_answer(ports["master"], grpc=False, cert=own)
    assert assigned.startswith("HTTP 200") and '"fid"' in assigned, assigned  # the master, to weed itself
    assert not tls_answer(ports["filer.grpc"], grpc=True, cert=own).startswith("refused:")


@pytest.mark.faults
def test_a_forged_certificate_is_refused(s3_server, s3_state_dir, tmp_path, fault):
    """Another project's certificate (its own CA) does not open this project's server."""
    other = ensure_certificates(tmp_path / "other-project")
    assert other["ca"].read_bytes() != ensure_certificates(s3_state_dir)["ca"].read_bytes()
    port = internal_ports(s3_state_dir)["filer"]
    answer = tls_answer(port, grpc=False, cert=(str(other["cert"]), str(other["key"])))
    assert answer.startswith("refused:"), answer
    fault("another project's certificate at weed's filer port", "refused")


@pytest.mark.parametrize("part", ["tls/weed.key", "tls", "security.toml"])
def test_the_keys_are_private(s3_server, s3_state_dir, part):
    mode = (s3_state_dir / part).stat().st_mode & 0o777
    assert mode & 0o077 == 0, oct(mode)
