"""Certificates for the SuperLink's TLS and the key pairs SuperNodes authenticate with.

An operator makes one CA and a server certificate for the names devices dial
(``make_certificates``); devices get ``ca.crt`` and nothing else. Each device makes its own
node key pair (``make_node_key``: NIST P-384, what Flower's SuperNode authentication expects)
and gives the operator only the public half to register. Private keys are written 0600 and
never leave the machine that made them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmarket.exceptions import InvalidInput
from fedmarket.files import atomic_write, write_secret

VALID_DAYS = 365
LOOPBACK = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class CertificatePaths:
    """``ca`` goes to every device; ``certificate`` and ``private_key`` stay on the server."""

    ca: Path
    certificate: Path
    private_key: Path

    @classmethod
    def in_folder(cls, folder: Path) -> CertificatePaths:
        return cls(folder / "ca.crt", folder / "server.pem", folder / "server.key")

    def check(self) -> None:
        missing = [str(p) for p in (self.ca, self.certificate, self.private_key) if not p.is_file()]
        if missing:
            raise InvalidInput(
                f"TLS files missing: {', '.join(missing)}; make them with "
                "`fedmarket server certs --out DIR --host NAME`"
            )


@dataclass(frozen=True)
class NodeKeyPaths:
    """A SuperNode's authentication key pair: ``public_key`` (OpenSSH) goes to the operator."""

    private_key: Path
    public_key: Path

    @classmethod
    def in_folder(cls, folder: Path) -> NodeKeyPaths:
        return cls(folder / "node.key", folder / "node.pub")


def make_certificates(folder: Path, hosts: Sequence[str]) -> CertificatePaths:
    """A new CA and a server certificate for ``hosts`` (DNS names or IP addresses) and for
    loopback, where the server's own tools reach its Control and Runtime APIs."""
    if not hosts:
        raise InvalidInput("name at least one host (DNS name or IP) the devices will dial")
    paths = CertificatePaths.in_folder(folder)
    if any(p.exists() for p in (paths.ca, paths.certificate, paths.private_key)):
        raise InvalidInput(f"{folder} already holds certificates; choose an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmarket SuperLink CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
            ca_name,
            server_key.public_key(),
            now,
        )
        .add_extension(
            x509.SubjectAlternativeName([_san(h) for h in dict.fromkeys([*hosts, *LOOPBACK])]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    # The CA key signs nothing after this: it is not kept, so it cannot leak.
    _write(paths.ca, ca.public_bytes(serialization.Encoding.PEM))
    _write(paths.certificate, server.public_bytes(serialization.Encoding.PEM))
    write_secret(paths.private_key, _private_pem(server_key))
    return paths


def make_node_key(folder: Path) -> NodeKeyPaths:
    """A SuperNode authentication key pair (P-384) in ``folder``."""
    paths = NodeKeyPaths.in_folder(folder)
    if paths.private_key.exists():
        raise InvalidInput(
            f"{paths.private_key} exists; a node keeps its key (choose another folder)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    # OpenSSH's private key format: what flower-supernode reads.
    openssh = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    write_secret(paths.private_key, openssh)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(paths.public_key, public + b"\n")
    return paths


def _write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda out: out.write(data))


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: dt.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
