"""Locks the embedded SeaweedFS's internal ports: only the S3 port (SigV4 credentials) answers strangers.

`weed mini` also serves its master, volume, filer and admin over HTTP and gRPC, and none of them checks
S3 credentials: anyone on the host could store, list or read objects through them. Each state dir gets
its own certificate authority, which signs one certificate for weed's servers and for weed's own
clients; every internal port then demands that certificate (mutual TLS, HTTP and gRPC alike). The CA's
private key is thrown away once the certificate is signed, so nobody can make another.

JWT signing is turned on as well (fresh keys at each start): the filer then takes reads and writes only
with a token the S3 gateway signs, and the volume server only with one the master hands out. JWT alone
would not close the master, which hands a write token to whoever asks; the TLS layer does.

Weed reads `security.toml` from its working directory, the state dir (private, 0700):

    tls/ca.crt      the project's CA certificate (what weed's servers and clients verify against)
    tls/weed.crt    weed's certificate, for both its servers and its clients
    tls/weed.key    its private key (0600)
    security.toml   written at each start (0600)
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
from pathlib import Path

from infra.state import private_dir, write_private

CERT_DAYS = 3650
# weed's parts that serve gRPC (each needs the certificate to serve, and uses it to dial the others)
GRPC_PARTS = ("master", "volume", "filer", "s3", "admin", "worker", "client")
HTTPS_PARTS = ("master", "volume", "filer", "admin")  # mutual TLS (the S3 port: -s3.cert.file)
JWT_KEYS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")


def ensure_certificates(state_dir: Path) -> dict[str, Path]:
    """The state dir's CA certificate, and weed's certificate and key: made once, reused afterwards."""
    tls = private_dir(Path(state_dir) / "tls")
    files = {"ca": tls / "ca.crt", "cert": tls / "weed.crt", "key": tls / "weed.key"}
    if all(f.is_file() for f in files.values()):
        return files
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid_from, valid_to = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=CERT_DAYS)
    ca_key, weed_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"ldmflow embedded S3 CA {secrets.token_hex(4)}")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    weed = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ldmflow-weed")]))
        .issuer_name(ca_name)
        .public_key(weed_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = weed_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(files["key"], key_pem)
    write_private(files["cert"], weed.public_bytes(pem))
    write_private(files["ca"], ca.public_bytes(pem))  # last: its presence says the set is complete
    return files


def write_security_toml(state_dir: Path) -> Path:
    """Weed's security.toml for this state dir (certificates made on first use, JWT keys fresh)."""
    files = {k: json.dumps(str(v)) for k, v in ensure_certificates(state_dir).items()}  # TOML strings
    pair = f"cert = {files['cert']}\nkey = {files['key']}\n"
    sections = [f"[grpc]\nca = {files['ca']}\n"]
    sections += [f"[grpc.{part}]\n{pair}" for part in GRPC_PARTS]
    sections += [f"[https.client]\nenabled = true\n{pair}ca = {files['ca']}\n"]
    sections += [f"[https.{part}]\n{pair}ca = {files['ca']}\n" for part in HTTPS_PARTS]
    sections += [f'[{name}]\nkey = "{secrets.token_hex(32)}"\n' for name in JWT_KEYS]
    sections += ["[access]\nui = false\n"]
    path = Path(state_dir) / "security.toml"
    write_private(path, "\n".join(sections).encode())
    return path
