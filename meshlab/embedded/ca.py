"""istiod's certificate authority, rebuilt with ``cryptography``.

The CA keeps a self-signed root in a folder (``ca-cert.pem``, ``ca-key.pem``) and issues
each workload a short-lived certificate shaped like the ones istiod signs:

- empty subject; the identity is a critical URI SAN ``spiffe://<trust domain>/ns/NS/sa/SA``;
- extended key usage serverAuth + clientAuth, key usage digitalSignature + keyEncipherment;
- not a CA; valid from two minutes ago (clock skew) for 24 hours by default;
- RSA 2048 keys, or ECDSA P-256 on request. Ed25519 is refused: Envoy's TLS handshake fails
  with Ed25519 certificates.

The sidecar gets the leaf (plus intermediates, none here) as its ``default`` SDS secret and
the root separately as ``ROOTCA``, as Istio's agent splits the CA's answer.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlab.embedded.model import CLUSTER_DOMAIN, spiffe_id
from meshlab.errors import MeshlabError, NotSupportedError

ROOT_CERT_FILE = "ca-cert.pem"
ROOT_KEY_FILE = "ca-key.pem"
ROOT_LIFETIME = timedelta(days=3650)
WORKLOAD_TTL = timedelta(hours=24)
CLOCK_SKEW = timedelta(minutes=2)
ROTATION_RATIO = 0.5  # the agent asks for a new certificate at half of its lifetime
KEY_TYPES = ("RSA", "EC")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SA_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _new_key(key_type: str) -> PrivateKey:
    kind = key_type.upper()
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind in ("EC", "ECDSA"):
        return ec.generate_private_key(ec.SECP256R1())
    if kind in ("ED25519", "ED448"):
        raise NotSupportedError(
            f"key type {key_type!r}: Envoy cannot complete a TLS handshake with Ed25519/Ed448 "
            "certificates; use 'RSA' (2048 bit, Istio's default) or 'EC' (ECDSA P-256)"
        )
    raise MeshlabError(f"unknown key type {key_type!r}: expected one of {', '.join(KEY_TYPES)}")


def _key_description(public_key: Any) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384"}.get(
            public_key.curve.name, public_key.curve.name
        )
        return f"EC {curve}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public_key).__name__


def _key_type(public_key: Any) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "EC"
    return _key_description(public_key)


def _private_pem(key: PrivateKey) -> bytes:
    # PKCS#1 / SEC1 ("RSA PRIVATE KEY", "EC PRIVATE KEY"), like the keys Istio's agent makes.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.UniformResourceIdentifier))


@dataclass(frozen=True)
class CertificateInfo:
    """What a certificate says, for notebooks and ``describe`` output."""

    cert_pem: bytes
    spiffe_id: str  # "" when the certificate carries no SPIFFE URI SAN (a root, say)
    serial: int
    not_before: datetime
    not_after: datetime
    issuer: str  # RFC 4514, e.g. "O=cluster.local"
    subject: str  # "" for Istio workload certificates
    key_type: str  # "RSA" or "EC"
    key: str  # "RSA 2048", "EC P-256"
    fingerprint_sha256: str  # lowercase hex of the DER: the ``Hash`` in Envoy's XFCC header
    is_ca: bool = False
    # When the certificate was made. ``not_before`` is backdated for clock skew, so it is
    # not the issue time; for a certificate read back from PEM it is estimated.
    issued_at: datetime | None = None

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.not_before

    def rotate_at(self) -> datetime:
        """When Istio's agent would replace this certificate: half way from its issue time
        to its expiry (the agent counts from when it got the certificate, not from the
        backdated ``not_before``, so short TTLs still rotate at half of what was asked)."""
        start = self.issued_at or min(self.not_before + CLOCK_SKEW, self.not_after)
        return start + (self.not_after - start) * ROTATION_RATIO

    def valid_at(self, when: datetime | None = None) -> bool:
        when = when or datetime.now(UTC)
        return self.not_before <= when <= self.not_after

    def describe(self) -> dict[str, Any]:
        return {
            "spiffe_id": self.spiffe_id,
            "issuer": self.issuer,
            "subject": self.subject,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "rotate_at": self.rotate_at().isoformat(),
            "key": self.key,
            "serial": f"{self.serial:x}",
            "fingerprint_sha256": self.fingerprint_sha256,
            "is_ca": self.is_ca,
        }

    def certificate(self) -> x509.Certificate:
        """The parsed X.509 certificate (``cryptography`` object)."""
        return x509.load_pem_x509_certificate(self.cert_pem)


@dataclass(frozen=True)
class WorkloadCertificate(CertificateInfo):
    """A certificate the CA issued, with its private key.

    ``chain_pem`` is what goes into the SDS ``default`` secret: the leaf followed by any
    intermediates (none with this self-signed root). The root is served apart as ``ROOTCA``.
    """

    key_pem: bytes = b""
    chain_pem: bytes = b""


def _info_kwargs(cert: x509.Certificate) -> dict[str, Any]:
    spiffe = next((u for u in _uri_sans(cert) if u.startswith("spiffe://")), "")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    public_key = cert.public_key()
    return {
        "cert_pem": cert.public_bytes(serialization.Encoding.PEM),
        "spiffe_id": spiffe,
        "serial": cert.serial_number,
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "issuer": cert.issuer.rfc4514_string(),
        "subject": cert.subject.rfc4514_string(),
        "key_type": _key_type(public_key),
        "key": _key_description(public_key),
        "fingerprint_sha256": hashlib.sha256(
            cert.public_bytes(serialization.Encoding.DER)
        ).hexdigest(),
        "is_ca": is_ca,
    }


def load_certificate(pem: bytes | str) -> CertificateInfo:
    """Summarise a PEM certificate, e.g. one read back from a sidecar. With a chain, the
    first certificate (the leaf) is described."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise MeshlabError(f"not a PEM certificate: {err}") from None
    return CertificateInfo(**_info_kwargs(certs[0]))


class CertificateAuthority:
    """A self-signed root that signs workload certificates, kept in ``folder``."""

    def __init__(
        self, root_cert: x509.Certificate, root_key: PrivateKey, trust_domain: str = CLUSTER_DOMAIN
    ) -> None:
        self.root_cert = root_cert
        self._root_key = root_key
        self.trust_domain = trust_domain
        self.root_pem = root_cert.public_bytes(serialization.Encoding.PEM)
        self._ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())

    # -- root -----------------------------------------------------------------------------
    @classmethod
    def load_or_create(
        cls, folder: Path | str, trust_domain: str = CLUSTER_DOMAIN, key_type: str = "RSA"
    ) -> CertificateAuthority:
        """Load the root from ``folder``, or create one (10 years, self-signed) there.

        The folder is made private (0700) and the key file is written 0600, then renamed into
        place, so a reader never sees half a key.
        """
        folder = Path(folder)
        cert_path, key_path = folder / ROOT_CERT_FILE, folder / ROOT_KEY_FILE
        if cert_path.exists() or key_path.exists():
            return cls._load(cert_path, key_path, trust_domain)
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        key = _new_key(key_type)
        cert = cls._self_signed_root(key, trust_domain)
        _write_private(key_path, _private_pem(key), 0o600)
        _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(cert, key, trust_domain)

    @classmethod
    def _load(cls, cert_path: Path, key_path: Path, trust_domain: str) -> CertificateAuthority:
        for path in (cert_path, key_path):
            if not path.exists():
                raise MeshlabError(
                    f"{path}: missing; the CA folder must hold both {ROOT_CERT_FILE} and "
                    f"{ROOT_KEY_FILE} (delete the folder to start a new CA)"
                )
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError as err:
            raise MeshlabError(f"{cert_path}: not a PEM certificate ({err})") from None
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError) as err:
            raise MeshlabError(f"{key_path}: not an unencrypted PEM private key ({err})") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise MeshlabError(f"{key_path}: key type {type(key).__name__} is not RSA or EC")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():
            raise MeshlabError(f"{key_path}: this key does not belong to {cert_path}")
        return cls(cert, key, trust_domain)

    @staticmethod
    def _self_signed_root(key: PrivateKey, trust_domain: str) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )

    @property
    def root(self) -> CertificateInfo:
        return CertificateInfo(**_info_kwargs(self.root_cert))

    # -- workloads ------------------------------------------------------------------------
    def issue(
        self,
        namespace: str,
        service_account: str,
        ttl: timedelta = WORKLOAD_TTL,
        key_type: str = "RSA",
    ) -> WorkloadCertificate:
        """Sign a new key pair for ``spiffe://<trust domain>/ns/<namespace>/sa/<sa>``."""
        if not _DNS_LABEL.match(namespace or ""):
            raise MeshlabError(f"namespace {namespace!r} is not a valid Kubernetes name")
        if not _SA_NAME.match(service_account or ""):
            raise MeshlabError(f"service account {service_account!r} is not a valid name")
        if ttl <= timedelta(0):
            raise MeshlabError(f"certificate TTL must be positive, got {ttl}")
        key = _new_key(key_type)
        identity = spiffe_id(namespace, service_account, self.trust_domain)
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.root_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + ttl)
            # An empty subject makes the SAN the identity; RFC 5280 then wants it critical.
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
            .sign(self._root_key, hashes.SHA256())
        )
        info = _info_kwargs(cert)
        return WorkloadCertificate(
            **info, issued_at=now, key_pem=_private_pem(key), chain_pem=info["cert_pem"]
        )

    def verify(self, cert_pem: bytes) -> bool:
        """True when the (first) certificate in ``cert_pem`` was signed by this root and is
        within its validity period now."""
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
        try:
            cert.verify_directly_issued_by(self.root_cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        now = datetime.now(UTC)
        return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)
