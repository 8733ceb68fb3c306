"""Pure given the clock: the webhook's CA and serving certificate, and when to renew them.

They live in one Secret (keys ca.crt, ca.key, tls.crt, tls.key) that every replica reads, so
all replicas serve certificates of one CA and the caBundle is one. EC P-256 keys: small, fast
to make at start-up, and accepted by every API server in the support window.

Renewal: the serving certificate with less than a third of its configured lifetime left (or
names other than those asked for); the CA likewise, in two steps, so that the API server never
meets a certificate it cannot verify: first the new CA joins the bundle (`ca.crt` = new, then
old), and only once the caller reports that bundle injected is the serving certificate issued
from it. A CA past its end leaves the bundle.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "appidentity-webhook-ca"
SKEW = timedelta(minutes=5)  # backdated, for clocks a little behind


@dataclass(frozen=True)
class Material:
    """The Secret's four PEMs (ca_crt may hold several CAs, the signing one first)."""

    ca_crt: bytes
    ca_key: bytes
    tls_crt: bytes
    tls_key: bytes

    @classmethod
    def from_secret(cls, data: Mapping[str, str] | None) -> Material | None:
        data = data or {}
        try:
            parts = [base64.b64decode(data[k]) for k in ("ca.crt", "ca.key", "tls.crt", "tls.key")]
        except (KeyError, ValueError):
            return None
        return cls(*parts)

    def secret_data(self) -> dict[str, str]:
        values = (self.ca_crt, self.ca_key, self.tls_crt, self.tls_key)
        keys = ("ca.crt", "ca.key", "tls.crt", "tls.key")
        return {k: base64.b64encode(v).decode() for k, v in zip(keys, values, strict=True)}


def _key() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key, pem


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def new_ca(now: datetime, seconds: float) -> tuple[bytes, bytes]:
    key, key_pem = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + timedelta(seconds=seconds))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _pem(cert), key_pem


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue(
    ca_crt: bytes, ca_key: bytes, hosts: Sequence[str], now: datetime, seconds: float
) -> tuple[bytes, bytes]:
    """A serving certificate for `hosts` from the first CA of `ca_crt`."""
    ca = x509.load_pem_x509_certificates(ca_crt)[0]
    signer = serialization.load_pem_private_key(ca_key, None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    key, key_pem = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(min(now + timedelta(seconds=seconds), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(hosts), critical=False)
        .sign(signer, hashes.SHA256())
    )
    return _pem(cert), key_pem


def _due(cert: x509.Certificate, now: datetime, seconds: float) -> bool:
    """Less than a third of the configured lifetime left (or past its end), or more left than
    the whole of it (the lifetime was shortened)."""
    left = cert.not_valid_after_utc - now
    return not timedelta(seconds=seconds / 3) <= left <= timedelta(seconds=seconds) + SKEW


def _hosts(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in san}


def plan(
    current: Material | None,
    hosts: Sequence[str],
    now: datetime,
    cert_seconds: float,
    ca_seconds: float,
    bundle_injected: bool,
) -> Material | None:
    """What the Secret should hold next, or None when it is fine as it is. `bundle_injected`:
    the webhook configuration's caBundle is the current `ca.crt`."""
    if current is None:
        ca_crt, ca_key = new_ca(now, ca_seconds)
        return Material(ca_crt, ca_key, *issue(ca_crt, ca_key, hosts, now, cert_seconds))
    cas = [
        c for c in x509.load_pem_x509_certificates(current.ca_crt) if c.not_valid_after_utc > now
    ]
    if not cas:
        return plan(None, hosts, now, cert_seconds, ca_seconds, bundle_injected)
    bundle = b"".join(_pem(c) for c in cas)
    if _due(cas[0], now, ca_seconds):
        ca_crt, ca_key = new_ca(now, ca_seconds)  # step one: the new CA joins the bundle
        return Material(ca_crt + bundle, ca_key, current.tls_crt, current.tls_key)
    served = x509.load_pem_x509_certificate(current.tls_crt)
    from_old_ca = served.issuer != cas[0].subject or not _signed_by(served, cas[0])
    if from_old_ca and not bundle_injected:
        return None  # step two waits until the API server trusts the new CA
    if from_old_ca or _due(served, now, cert_seconds) or _hosts(served) != set(hosts):
        tls = issue(bundle, current.ca_key, hosts, now, cert_seconds)
        return Material(bundle, current.ca_key, *tls)
    if bundle != current.ca_crt:
        return Material(bundle, current.ca_key, current.tls_crt, current.tls_key)
    return None


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False
