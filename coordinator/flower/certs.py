"""``pplink coordinator certs``: a test certificate authority and the SuperLink's TLS certificate.

For pilots and tests on one machine or a private network: a self-made CA (``ca.crt``, its key
``ca.key`` mode 0600) and a server certificate for the SuperLink (``server.pem``, ``server.key``
0600) whose subject alternative names cover the given IP addresses and DNS names (by default
``127.0.0.1`` and ``localhost``). Agencies' SuperNodes trust ``ca.crt`` only. In production the
organisation's own CA issues the server certificate and this command is not used.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pplink.errors import KeyFileError, UsageError

__all__ = ["CA_CERT", "SERVER_CERT", "SERVER_KEY", "TlsFiles", "create_test_certificates", "tls_files"]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA and server certificate files are."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def tls_files(directory: Path) -> TlsFiles:
    """The certificate file paths inside ``directory`` (they may not exist yet)."""
    d = Path(directory)
    return TlsFiles(d / CA_CERT, d / CA_KEY, d / SERVER_CERT, d / SERVER_KEY)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, *, private: bool) -> None:
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def create_test_certificates(
    directory: Path,
    *,
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    dns_names: Sequence[str] = ("localhost",),
    days: int = 365,
) -> TlsFiles:
    """Create a test CA and a SuperLink server certificate signed by it.

    Args:
        directory: folder for ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key``.
        ip_addresses: IP subject alternative names of the server certificate.
        dns_names: DNS subject alternative names of the server certificate.
        days: validity from now.

    Returns:
        The paths written.

    Raises:
        KeyFileError: one of the files already exists (nothing is overwritten).
        UsageError: an IP address is malformed or no name is given.
    """
    files = tls_files(directory)
    existing = [p for p in (files.ca_cert, files.ca_key, files.server_cert, files.server_key) if p.exists()]
    if existing:
        raise KeyFileError(f"{existing[0]}: already exists; refusing to overwrite a certificate or key")
    try:
        ips = [ipaddress.ip_address(a) for a in ip_addresses]
    except ValueError as exc:
        raise UsageError(f"--ip: {exc}") from None
    if not ips and not dns_names:
        raise UsageError("the server certificate needs at least one IP address or DNS name")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pplink test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    sans: list[x509.GeneralName] = [x509.IPAddress(ip) for ip in ips] + [x509.DNSName(n) for n in dns_names]
    common_name = dns_names[0] if dns_names else str(ips[0])
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    Path(directory).mkdir(parents=True, exist_ok=True)
    _write(files.ca_key, _key_pem(ca_key), private=True)
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(files.server_key, _key_pem(server_key), private=True)
    _write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    return files
