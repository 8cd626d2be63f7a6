"""Test certificates for the SuperLink: a CA, and a server certificate for the names asked."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.flower.certs import create_test_certificates
from pplink.errors import KeyFileError, UsageError


def test_server_certificate_is_signed_by_the_ca_for_loopback(tmp_path: Path) -> None:
    """Invariant: the server certificate names 127.0.0.1 and localhost, is issued and signed by
    the CA, is not itself a CA, and both private keys are owner-only."""
    files = create_test_certificates(tmp_path)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert server.issuer == ca.subject
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    server.verify_directly_issued_by(ca)
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (files.ca_key, files.server_key):
        assert key.stat().st_mode & 0o077 == 0


def test_certificates_are_never_overwritten(tmp_path: Path) -> None:
    """Invariant: a second call refuses and leaves the first CA in place."""
    files = create_test_certificates(tmp_path)
    before = files.ca_cert.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        create_test_certificates(tmp_path)
    assert files.ca_cert.read_bytes() == before


def test_bad_ip_is_refused(tmp_path: Path) -> None:
    """Invariant: a malformed IP address is a usage error and nothing is written."""
    with pytest.raises(UsageError):
        create_test_certificates(tmp_path, ip_addresses=["300.1.1.1"])
    assert not any(tmp_path.iterdir())
