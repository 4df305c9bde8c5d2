"""Optional mutual TLS between services: settings -> gRPC credentials, and a local CA.

Set ACCRUE_TLS_CERT and ACCRUE_TLS_KEY (PEM files) and a service serves TLS only; with
ACCRUE_TLS_CA too it also requires every client to present a certificate that CA signed,
and the channels it opens (libs/infra/grpc_client.py) present its certificate and trust
only that CA. In Kubernetes, cert-manager (a Certificate per service, the CA as a
secret) or a service mesh's mTLS does the same without these settings.
``make_local_ca`` writes a CA and one certificate for every process on a laptop.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from libs.infra.settings import ServiceSettings


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """TLS for a service's port when the settings name a certificate, else None (plaintext)."""
    if not (settings.tls_cert and settings.tls_key):
        return None
    ca = _read(settings.tls_ca)
    pair = (_read(settings.tls_key), _read(settings.tls_cert))
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(settings: ServiceSettings) -> grpc.ChannelCredentials | None:
    """What a process presents and trusts calling a service, or None (plaintext)."""
    if not settings.tls_ca:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca), private_key=_read(settings.tls_key), certificate_chain=_read(settings.tls_cert)
    )


@dataclass(frozen=True)
class LocalCa:
    ca: Path
    cert: Path
    key: Path

    def env(self) -> dict[str, str]:
        return {"ACCRUE_TLS_CA": str(self.ca), "ACCRUE_TLS_CERT": str(self.cert), "ACCRUE_TLS_KEY": str(self.key)}


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_local_ca(directory: Path, hosts: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 30) -> LocalCa:
    """A CA and one certificate (server and client) for ``hosts``, as PEM files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Accrue local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)  # key_cert_sign, crl_sign
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accrue")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = LocalCa(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    out.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(_pem_key(key))
    out.key.chmod(0o600)
    return out
