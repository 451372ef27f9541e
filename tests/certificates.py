"""Certificates made for the TLS tests: a CA, a server certificate for localhost and 127.0.0.1,
and a client certificate, as PEM bytes and files."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def new_key() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


def pem_key(key: Any, password: bytes | None = None) -> bytes:
    """The private key as PKCS#8 PEM, encrypted with ``password`` when one is given."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption(),
    )


def _name(subject: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])


def _certificate(
    subject: str, key: Any, issuer: tuple[str, Any] | None, *, server: bool = False
) -> bytes:
    """A PEM certificate for ``subject``, self-signed (a CA) when ``issuer`` (name, key) is
    None, else for a server or a client."""
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    elif server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False
        )
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_pki(folder: Path) -> tuple[dict[str, bytes], dict[str, Path]]:
    """``ca``, ``server_cert``, ``server_key``, ``client_cert`` and ``client_key``: their PEM
    bytes, and the files in ``folder`` that hold them."""
    ca_key, server_key, client_key = new_key(), new_key(), new_key()
    ca = ("impasto test CA", ca_key)
    files = {
        "ca": _certificate(ca[0], ca_key, None),
        "server_cert": _certificate("localhost", server_key, ca, server=True),
        "server_key": pem_key(server_key),
        "client_cert": _certificate("a client", client_key, ca),
        "client_key": pem_key(client_key),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.pem"
        paths[name].write_bytes(data)
    return files, paths
