"""Throwaway certificates for TLS tests: a CA, and leaf certificates it signs for IP addresses.

Each certificate is written as STEM.crt and STEM.key (PEM, unencrypted) in one directory.
A leaf has no extended key usage, so it serves as a server and a client certificate alike.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA = "ca"
LOOPBACK = ("127.0.0.1",)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def issue(
    directory: Path,
    stem: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    addresses: Sequence[str] = LOOPBACK,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate (issuer None), or a leaf signed by `issuer` whose
    subject alternative names are `addresses` (IP addresses)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(f"agentmesh test {stem}")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
            ),
            False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def make_pki(
    directory: Path, *leaves: str, addresses: Mapping[str, Sequence[str]] | None = None
) -> Path:
    """A CA (`ca.crt`, `ca.key`) and one leaf certificate per name, all in `directory`.

    A leaf is for the addresses `addresses` gives for its name, else for 127.0.0.1.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = issue(directory, CA, None)
    for stem in leaves:
        issue(directory, stem, ca, (addresses or {}).get(stem, LOOPBACK))
    return directory
