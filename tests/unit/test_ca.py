"""istiod's CA (ca.py): the root, workload certificates, and that they really work for TLS
(without Envoy: cryptography's checks, openssl, and a Python TLS handshake)."""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlab.embedded.ca import (
    CLOCK_SKEW,
    ROOT_CERT_FILE,
    ROOT_KEY_FILE,
    CertificateAuthority,
    load_certificate,
)
from meshlab.errors import MeshlabError, NotSupportedError

SPIFFE_A = "spiffe://cluster.local/ns/istio-meshlab/sa/service-a"


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("state") / "ca"


@pytest.fixture(scope="module")
def ca(ca_dir) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(ca_dir)


@pytest.fixture(scope="module")
def cert(ca):
    return ca.issue("istio-meshlab", "service-a")


def ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


# ---------------------------------------------------------------------------------------
# root
# ---------------------------------------------------------------------------------------


def test_root_files_and_permissions(ca, ca_dir):
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_dir / ROOT_KEY_FILE).stat().st_mode) == 0o600
    assert (ca_dir / ROOT_CERT_FILE).read_bytes() == ca.root_pem
    assert not [p for p in ca_dir.iterdir() if p.name.endswith(".tmp")]


def test_root_is_a_self_signed_ten_year_rsa_ca(ca):
    root = x509.load_pem_x509_certificate(ca.root_pem)
    expected = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")])
    assert root.subject == expected and root.issuer == expected
    root.verify_directly_issued_by(root)
    bc = ext(root, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ext(root, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    lifetime = root.not_valid_after_utc - root.not_valid_before_utc
    assert timedelta(days=3649) < lifetime < timedelta(days=3651)
    key = root.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    assert ca.root.is_ca and ca.root.spiffe_id == ""


def test_load_or_create_reuses_the_root(ca, ca_dir):
    again = CertificateAuthority.load_or_create(ca_dir)
    assert again.root_pem == ca.root_pem
    issued = again.issue("istio-meshlab", "service-a")
    assert ca.verify(issued.cert_pem)


def test_ec_root(tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", key_type="EC")
    assert ca.root.key == "EC P-256"
    assert ca.verify(ca.issue("ns", "sa").cert_pem)


def test_trust_domain(tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", trust_domain="example.org")
    assert ca.root.subject == "O=example.org"
    assert ca.issue("ns", "sa").spiffe_id == "spiffe://example.org/ns/ns/sa/sa"


def test_broken_ca_folder_is_a_clear_error(tmp_path, ca_dir):
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(ca_dir / ROOT_CERT_FILE, half)
    with pytest.raises(MeshlabError, match=f"{ROOT_KEY_FILE}: missing"):
        CertificateAuthority.load_or_create(half)

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / ROOT_CERT_FILE).write_text("not a certificate")
    shutil.copy(ca_dir / ROOT_KEY_FILE, garbage)
    with pytest.raises(MeshlabError, match=f"{ROOT_CERT_FILE}: not a PEM certificate"):
        CertificateAuthority.load_or_create(garbage)

    other = CertificateAuthority.load_or_create(tmp_path / "other")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(ca_dir / ROOT_CERT_FILE, mixed)
    shutil.copy(tmp_path / "other" / ROOT_KEY_FILE, mixed)
    with pytest.raises(MeshlabError, match="does not belong"):
        CertificateAuthority.load_or_create(mixed)
    assert other.root_pem != (ca_dir / ROOT_CERT_FILE).read_bytes()


# ---------------------------------------------------------------------------------------
# workload certificates
# ---------------------------------------------------------------------------------------


def test_workload_certificate_is_shaped_like_istios(ca, cert):
    c = x509.load_pem_x509_certificate(cert.cert_pem)
    assert c.subject == x509.Name([])
    assert c.issuer == x509.load_pem_x509_certificate(ca.root_pem).subject
    san = ext(c, x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE_A]
    assert san.value.get_values_for_type(x509.DNSName) == []
    eku = ext(c, x509.ExtendedKeyUsage)
    assert set(eku.value) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ku = ext(c, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    assert ext(c, x509.BasicConstraints).value.ca is False
    root = x509.load_pem_x509_certificate(ca.root_pem)
    assert (
        ext(c, x509.AuthorityKeyIdentifier).value.key_identifier
        == ext(root, x509.SubjectKeyIdentifier).value.key_identifier
    )


def test_workload_certificate_validity(cert):
    now = datetime.now(UTC)
    c = x509.load_pem_x509_certificate(cert.cert_pem)
    backdate = now - c.not_valid_before_utc
    assert CLOCK_SKEW - timedelta(seconds=5) <= backdate <= CLOCK_SKEW + timedelta(seconds=5)
    ttl = c.not_valid_after_utc - now
    assert timedelta(hours=24) - timedelta(seconds=5) <= ttl <= timedelta(hours=24)
    assert cert.not_before == c.not_valid_before_utc and cert.not_after == c.not_valid_after_utc
    assert cert.valid_at(now)


def test_issued_by_the_root_and_key_matches(ca, cert):
    c = x509.load_pem_x509_certificate(cert.cert_pem)
    c.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.root_pem))
    key = serialization.load_pem_private_key(cert.key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert key.public_key().public_numbers() == c.public_key().public_numbers()
    assert ca.verify(cert.cert_pem)


def test_chain_is_the_leaf_only_root_kept_apart(ca, cert):
    chain = x509.load_pem_x509_certificates(cert.chain_pem)
    assert [x.serial_number for x in chain] == [cert.serial]
    assert ca.root_pem not in cert.chain_pem


def test_ec_workload_key(ca):
    cert = ca.issue("istio-meshlab", "service-a", key_type="EC")
    c = x509.load_pem_x509_certificate(cert.cert_pem)
    assert isinstance(c.public_key(), ec.EllipticCurvePublicKey)
    assert c.public_key().curve.name == "secp256r1"
    assert (cert.key_type, cert.key) == ("EC", "EC P-256")
    assert ca.verify(cert.cert_pem)


def test_ed25519_is_refused_because_envoy_breaks(ca):
    with pytest.raises(NotSupportedError, match="Envoy"):
        ca.issue("istio-meshlab", "service-a", key_type="Ed25519")
    with pytest.raises(MeshlabError, match="unknown key type"):
        ca.issue("istio-meshlab", "service-a", key_type="DSA")


def test_bad_names_and_ttl_are_refused(ca):
    with pytest.raises(MeshlabError, match="namespace"):
        ca.issue("Not_A_Namespace", "sa")
    with pytest.raises(MeshlabError, match="service account"):
        ca.issue("ns", "")
    with pytest.raises(MeshlabError, match="TTL"):
        ca.issue("ns", "sa", ttl=timedelta(0))


def test_serials_differ(ca):
    serials = {ca.issue("ns", "sa", key_type="EC").serial for _ in range(5)}
    assert len(serials) == 5 and all(s > 0 for s in serials)


def test_foreign_certificate_does_not_verify(ca, tmp_path):
    other = CertificateAuthority.load_or_create(tmp_path / "other", key_type="EC")
    assert not ca.verify(other.issue("istio-meshlab", "service-a", key_type="EC").cert_pem)


def test_expired_certificate_does_not_verify(ca):
    # TTL 1 s with the 2 min backdate: valid now, but not after expiry.
    cert = ca.issue("ns", "sa", ttl=timedelta(seconds=1), key_type="EC")
    assert cert.not_after <= datetime.now(UTC) + timedelta(seconds=1)
    assert not cert.valid_at(cert.not_after + timedelta(seconds=1))


# ---------------------------------------------------------------------------------------
# rotation and description
# ---------------------------------------------------------------------------------------


def test_rotate_at_is_half_of_the_requested_lifetime(cert):
    assert cert.issued_at is not None
    expected = cert.issued_at + (cert.not_after - cert.issued_at) / 2
    assert abs(cert.rotate_at() - expected) < timedelta(seconds=1)
    assert abs(cert.rotate_at() - (cert.issued_at + timedelta(hours=12))) < timedelta(seconds=2)


def test_short_ttl_rotates_in_the_future_despite_the_backdate(ca):
    cert = ca.issue("ns", "sa", ttl=timedelta(seconds=20), key_type="EC")
    wait = (cert.rotate_at() - datetime.now(UTC)).total_seconds()
    assert 8 < wait <= 10


def test_describe(cert):
    d = cert.describe()
    der = x509.load_pem_x509_certificate(cert.cert_pem).public_bytes(serialization.Encoding.DER)
    assert d["spiffe_id"] == SPIFFE_A
    assert d["subject"] == ""
    assert d["issuer"] == "O=cluster.local"
    assert d["key"] == "RSA 2048"
    assert d["serial"] == f"{cert.serial:x}"
    assert d["fingerprint_sha256"] == hashlib.sha256(der).hexdigest()
    assert datetime.fromisoformat(d["not_after"]) == cert.not_after
    assert d["is_ca"] is False


def test_load_certificate_reads_back_a_leaf(ca, cert):
    info = load_certificate(cert.cert_pem)
    assert info.spiffe_id == SPIFFE_A
    assert (info.serial, info.fingerprint_sha256) == (cert.serial, cert.fingerprint_sha256)
    # A chain with the root after the leaf still describes the leaf.
    info = load_certificate(cert.cert_pem + ca.root_pem)
    assert info.serial == cert.serial
    assert load_certificate(cert.cert_pem.decode()).serial == cert.serial
    # Issue time is estimated from the backdated notBefore.
    assert abs(info.rotate_at() - cert.rotate_at()) < timedelta(seconds=2)
    with pytest.raises(MeshlabError, match="not a PEM certificate"):
        load_certificate(b"hello")


# ---------------------------------------------------------------------------------------
# independent checks: openssl, and a real TLS handshake
# ---------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_verifies_for_client_and_server_use(ca, cert, tmp_path):
    (tmp_path / "root.pem").write_bytes(ca.root_pem)
    (tmp_path / "leaf.pem").write_bytes(cert.cert_pem)
    for purpose in ("sslclient", "sslserver"):
        out = subprocess.run(
            ["openssl", "verify", "-purpose", purpose, "-CAfile", "root.pem", "leaf.pem"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "leaf.pem: OK" in out.stdout


def _context(side, cert, root_pem, tmp_path, name):
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.chain_pem)
    key_file.write_bytes(cert.key_pem)
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # SPIFFE certificates name no host; we check the URI SAN
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(cert_file, key_file)
    ctx.load_verify_locations(cadata=root_pem.decode())
    return ctx


@pytest.mark.parametrize("key_type", ["RSA", "EC"])
def test_mutual_tls_handshake_between_two_workloads(ca, tmp_path, key_type):
    a = ca.issue("istio-meshlab", "service-a", key_type=key_type)
    b = ca.issue("istio-meshlab", "service-b-v1", key_type=key_type)
    server_ctx = _context(ssl.PROTOCOL_TLS_SERVER, b, ca.root_pem, tmp_path, "b")
    client_ctx = _context(ssl.PROTOCOL_TLS_CLIENT, a, ca.root_pem, tmp_path, "a")
    left, right = socket.socketpair()
    seen: dict[str, bytes] = {}

    def serve():
        with server_ctx.wrap_socket(right, server_side=True) as tls:
            seen["client"] = tls.getpeercert(binary_form=True)
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    with client_ctx.wrap_socket(left) as tls:
        server_cert = tls.getpeercert(binary_form=True)
        assert tls.recv(2) == b"ok"
    thread.join(5)
    uri = x509.UniformResourceIdentifier
    got_server = x509.load_der_x509_certificate(server_cert)
    got_client = x509.load_der_x509_certificate(seen["client"])
    assert ext(got_server, x509.SubjectAlternativeName).value.get_values_for_type(uri) == [
        "spiffe://cluster.local/ns/istio-meshlab/sa/service-b-v1"
    ]
    assert ext(got_client, x509.SubjectAlternativeName).value.get_values_for_type(uri) == [SPIFFE_A]


def test_handshake_fails_with_a_foreign_client_certificate(ca, tmp_path):
    other = CertificateAuthority.load_or_create(tmp_path / "other", key_type="EC")
    server_ctx = _context(
        ssl.PROTOCOL_TLS_SERVER, ca.issue("ns", "server", key_type="EC"), ca.root_pem, tmp_path, "s"
    )
    client_ctx = _context(
        ssl.PROTOCOL_TLS_CLIENT,
        other.issue("ns", "client", key_type="EC"),
        ca.root_pem,
        tmp_path,
        "c",
    )
    left, right = socket.socketpair()
    errors: list[Exception] = []

    def serve():
        try:
            with server_ctx.wrap_socket(right, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as err:
            errors.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    with pytest.raises((ssl.SSLError, ConnectionError)), client_ctx.wrap_socket(left) as tls:
        tls.sendall(b"x")
        tls.recv(1)
    thread.join(5)
    assert errors and "certificate" in str(errors[0]).lower()
