"""The key server's TLS certificate: the administrator's, or a self-signed one made on first start.

``ensure_certificate(directory, names)`` creates ``<keystore>/server-tls/cert.pem`` and
``key.pem`` (0600, written through volumed.safefile; an existing key others can read is refused, ECDSA P-256, ten years, subjectAltName: localhost, 127.0.0.1, ::1, this host's
name and the listen address) once and reuses them afterwards; hosts trust it by pinning the file
(``--ca-bundle cert.pem`` / AWS_CA_BUNDLE) after comparing the SHA-256 fingerprint the server
prints. Caller: volumed.kms.server.serve.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from volumed import safefile
from volumed.errors import UsageError

TLS_DIR = "server-tls"


def fingerprint(cert_path: str) -> str:
    """SHA-256 fingerprint of a PEM certificate, as ``openssl x509 -fingerprint -sha256`` prints it."""
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    seen = set()
    for name in names:
        if not name or name in seen or name in ("0.0.0.0", "::"):
            continue
        seen.add(name)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def ensure_certificate(keystore_dir: str, extra_names: list[str]) -> tuple[str, str, bool]:
    """(cert path, key path, created now) of the server's self-signed certificate."""
    d = os.path.join(keystore_dir, TLS_DIR)
    cert_path, key_path = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        mode = os.stat(key_path).st_mode & 0o777
        if mode & 0o077:
            raise UsageError(f"the server's TLS private key {key_path} has mode {mode:04o}: others could "
                             f"read it and impersonate the key server; run 'chmod 600 {key_path}'")
        return cert_path, key_path, False
    os.makedirs(d, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    names = ["localhost", "127.0.0.1", "::1", host, socket.getfqdn(), *extra_names]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"volumed kms serve on {host}")])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=3650))
            .add_extension(_san(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # the certificate first: a crash in between leaves no key, so the next start makes a new pair
    safefile.write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    safefile.write_atomic(key_path, key_pem, mode=0o600)
    return cert_path, key_path, True
