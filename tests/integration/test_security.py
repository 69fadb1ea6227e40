"""Security of the embedded mesh: who can reach it, and proof that STRICT really holds.

Raw clients (Python's ssl, openssl s_client) attack service-b-v1's pod address, where its
STRICT sidecar listens behind the relay; a raw Envoy, configured by the same translator but
told to expect another identity, faces the real server. Every attempt must fail, with the
error a learner would see. Workload certificates live 10 s here, so they rotate (at half
life, through SDS) while the tests run; one test proves rotation drops no request.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshlab.embedded import home as homes
from meshlab.embedded import xds
from meshlab.embedded.ca import CertificateAuthority, load_certificate
from meshlab.embedded.model import MeshConfig, Pod, Service, ServicePort, Snapshot
from meshlab.embedded.processes import find_processes
from meshlab.embedded.sidecar import Sidecar, envoy_argv
from tests.conftest import DEPLOYMENTS, NS, start_mesh, stop_mesh

A_ID = "spiffe://cluster.local/ns/istio-meshlab/sa/service-a"
REQUEST = b"GET /hello HTTP/1.1\r\nHost: service-b-v1:8080\r\nConnection: close\r\n\r\n"
CERT_TTL_S = 10


@pytest.fixture(scope="module")
def secure_mesh(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("secure-home")
    mesh = start_mesh(home, cert_ttl=f"{CERT_TTL_S}s")
    try:
        for name in ("namespace.yaml", "service-a.yaml", "service-b-v1.yaml",
                     "istio-mtls-peer-auth.yaml"):  # fmt: skip
            mesh.apply(DEPLOYMENTS / name)
        mesh.wait_ready()
        yield mesh
    finally:
        stop_mesh(mesh)


@pytest.fixture(scope="module")
def pods(secure_mesh) -> dict[str, dict]:
    """The snapshot's pods by workload (ip, inner_ip, service account, ...)."""
    return {p["name"].rsplit("-", 2)[0]: p for p in secure_mesh._request("snapshot")["pods"]}


@pytest.fixture(scope="module")
def certs(secure_mesh, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Client certificates for the attacks, as files (cert, key)."""
    home = secure_mesh.home
    folder = tmp_path_factory.mktemp("attacker")
    mesh_ca = CertificateAuthority.load_or_create(home / "ca")
    out = {}

    def save(name: str, cert_pem: bytes, key_pem: bytes) -> None:
        (folder / f"{name}.crt").write_bytes(cert_pem)
        (folder / f"{name}.key").write_bytes(key_pem)
        out[name] = (folder / f"{name}.crt", folder / f"{name}.key")

    good = mesh_ca.issue(NS, "service-a", ttl=dt.timedelta(hours=1))
    save("valid", good.cert_pem, good.key_pem)
    foreign = CertificateAuthority.load_or_create(folder / "foreign-ca").issue(NS, "service-a")
    save("foreign-ca", foreign.cert_pem, foreign.key_pem)
    # The mesh's own root key, another trust domain: spiffe://evil.example/ns/.../sa/...
    other_td = CertificateAuthority.load_or_create(home / "ca", trust_domain="evil.example")
    td = other_td.issue(NS, "service-a")
    assert td.spiffe_id == "spiffe://evil.example/ns/istio-meshlab/sa/service-a"
    save("other-trust-domain", td.cert_pem, td.key_pem)
    # The mesh's own root key, a correct identity, but expired an hour ago.
    root_key = serialization.load_pem_private_key((home / "ca" / "ca-key.pem").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(mesh_ca.root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=2))
        .not_valid_after(now - dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(A_ID)]), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    save(
        "expired",
        expired.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
    )
    (folder / "root.pem").write_bytes(mesh_ca.root_pem)
    out["root"] = (folder / "root.pem", folder / "root.pem")
    return out


def b_stats(mesh, pods) -> dict[str, int]:
    """service-b-v1's sidecar counters for refused connections (virtualInbound)."""
    from meshlab.embedded.sidecar import http_get

    inner = pods["service-b-v1"]["inner_ip"]
    _, body = asyncio.run(http_get(inner, 15000, "/stats?filter=_15006"))
    out = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            out[name.rsplit(".", 1)[-1] if ".ssl." not in name else name.split(".ssl.")[1]] = int(
                value
            )
    return out


def tls_attempt(address: tuple[str, int], cert: tuple[Path, Path] | None) -> bytes:
    """A TLS client with Istio's ALPN, no server verification (the attacker does not care),
    optionally presenting ``cert``; returns what the server answered to one request."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["istio-peer-exchange", "istio"])
    if cert is not None:
        ctx.load_cert_chain(*cert)
    with (
        socket.create_connection(address, timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="service-b-v1") as tls,
    ):
        tls.sendall(REQUEST)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return answer


def openssl_attempt(address: tuple[str, int], certs, name: str | None) -> tuple[int, str]:
    args = ["openssl", "s_client", "-connect", f"{address[0]}:{address[1]}", "-alpn", "istio",
            "-CAfile", str(certs["root"][0]), "-ign_eof"]  # fmt: skip
    if name is not None:
        args += ["-cert", str(certs[name][0]), "-key", str(certs[name][1])]
    done = subprocess.run(args, input=REQUEST.decode(), capture_output=True, text=True, timeout=20)
    return done.returncode, done.stdout + done.stderr


# ---- who can reach the mesh ------------------------------------------------------------------
def test_control_socket_and_ca_key_are_private(secure_mesh):
    home = secure_mesh.home
    sock = homes.socket_path(home)
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home / "ca").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home / "ca" / "ca-key.pem").st_mode) == 0o600
    # As another user: hard links in a world-readable folder carry the files' own modes
    # only (the 0700 folders around them are not in the way), and still refuse.
    python = Path("/usr/bin/python3")
    if os.geteuid() != 0 or not shutil.which("setpriv") or not python.exists():
        pytest.skip("needs root, setpriv and /usr/bin/python3 to act as another user")
    world = Path(tempfile.mkdtemp(prefix="meshlab-world-"))
    try:
        world.chmod(0o755)
        os.link(sock, world / "control.sock")
        os.link(home / "ca" / "ca-key.pem", world / "ca-key.pem")
        script = (
            "import socket, sys\n"
            "for attempt in (lambda: socket.socket(socket.AF_UNIX).connect(sys.argv[1]),\n"
            "                lambda: open(sys.argv[2], 'rb').read()):\n"
            "    try:\n"
            "        attempt()\n"
            "        print('allowed')\n"
            "    except PermissionError:\n"
            "        print('refused')\n"
        )
        probe = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(python), "-c",
             script, str(world / "control.sock"), str(world / "ca-key.pem")],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    finally:
        shutil.rmtree(world)
    assert probe.stdout.split() == ["refused", "refused"], probe.stderr


def _listening_inodes() -> dict[int, tuple[str, str, int]]:
    """{inode: (proto, address, port)} for every listening TCP socket and every bound UDP
    socket on the host, read from /proc/net."""
    out = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if proto.startswith("tcp") and state != "0A":  # 0A = LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            raw = bytes.fromhex(hex_ip)
            if len(raw) == 4:
                ip = str(ipaddress.IPv4Address(raw[::-1]))
            else:  # four little-endian 32-bit words
                words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
                ip = str(ipaddress.IPv6Address(b"".join(words)))
            out[inode] = (proto, ip, int(hex_port, 16))
    return out


def test_no_process_of_the_mesh_listens_outside_loopback(secure_mesh):
    listening = _listening_inodes()
    seen: dict[str, list[tuple[str, str, int]]] = {}
    for pid in find_processes(secure_mesh.home):
        name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in listening:
                    seen.setdefault(f"{pid} {Path(name).name}", []).append(listening[inode])
    sockets = [s for found in seen.values() for s in found]
    # daemon (relays), two Envoys (admin, virtualOutbound, virtualInbound), two apps
    assert len(seen) == 5, seen
    assert len(sockets) >= 2 + 3 * 2 + 2
    outside = [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]
    assert outside == [], f"listening beyond loopback: {outside}"
    assert all(proto == "tcp" for proto, _, _ in sockets), sockets  # no IPv6, no UDP


# ---- STRICT holds against raw clients ----------------------------------------------------------
def test_plaintext_is_reset(secure_mesh, pods):
    address = (pods["service-b-v1"]["ip"], 8080)
    before = b_stats(secure_mesh, pods)
    with socket.create_connection(address, timeout=5) as raw:
        raw.sendall(REQUEST)
        with pytest.raises(ConnectionResetError) as info:
            raw.recv(4096)  # curl: (56) Recv failure: Connection reset by peer
    assert info.value.strerror == "Connection reset by peer"
    after = b_stats(secure_mesh, pods)
    assert after["no_filter_chain_match"] == before.get("no_filter_chain_match", 0) + 1


# (certificate, what Python's ssl raises, what openssl s_client prints, Envoy's counter)
ATTACKS = [
    (None, "TLSV13_ALERT_CERTIFICATE_REQUIRED", "tlsv13 alert certificate required",
     "fail_verify_no_cert"),
    ("foreign-ca", "TLSV1_ALERT_UNKNOWN_CA", "tlsv1 alert unknown ca", "fail_verify_error"),
    ("expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED", "sslv3 alert certificate expired",
     "fail_verify_error"),
    ("other-trust-domain", "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "sslv3 alert certificate unknown",
     "fail_verify_san"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("cert", "python_error", "openssl_error", "counter"),
    ATTACKS,
    ids=["no-client-cert", "foreign-ca", "expired", "other-trust-domain"],
)
def test_bad_client_certificates_are_refused(
    secure_mesh, pods, certs, cert, python_error, openssl_error, counter
):
    address = (pods["service-b-v1"]["ip"], 8080)
    before = b_stats(secure_mesh, pods)
    with pytest.raises(ssl.SSLError) as info:
        tls_attempt(address, certs[cert] if cert else None)
    assert info.value.reason == python_error
    code, output = openssl_attempt(address, certs, cert)
    assert code != 0
    # Envoy sends the alert, then closes a socket that still holds the client's unread
    # request: the kernel sends a RST, and a peer that had not read the alert by then loses
    # it (as with a direct connection, only likelier through the relay's extra hop). openssl
    # then reports the abrupt end instead of the alert; Python's client above always got it.
    abrupt = ("unexpected eof while reading", "Connection reset by peer", "errno=104")
    assert openssl_error in output or any(a in output for a in abrupt), output[-400:]
    assert "HTTP/1.1" not in output  # no byte of the app's answer
    after = b_stats(secure_mesh, pods)
    assert after[counter] == before.get(counter, 0) + 2


def test_a_valid_mesh_certificate_gets_through(secure_mesh, pods, certs):
    """The control: the same raw client with a certificate of the mesh's CA is served (so
    the refusals above are the policy at work, not a broken client)."""
    answer = tls_attempt((pods["service-b-v1"]["ip"], 8080), certs["valid"])
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert f"URI={A_ID}".encode() in answer


def test_client_sidecar_refuses_a_server_with_another_identity(secure_mesh, pods, tmp_path):
    """Secure naming: a client sidecar expects the service accounts of the endpoints it was
    given. A raw Envoy, configured by the mesh's translator, is told that service-b-v1's pod
    address belongs to service account ``someone-else``: the real server's certificate
    (``.../sa/service-b-v1``) must then be refused. ``service-b-v1`` with the right identity
    is the control."""
    b = pods["service-b-v1"]
    prefix = secure_mesh.status().details["address_block"].split(".0.0/")[0]
    client = Pod("raw-client", NS, {"app": "raw-client"}, "service-a",
                 f"{prefix}.1.240", f"{prefix}.128.240", sidecar=True)  # fmt: skip

    def b_as(app: str, account: str) -> Pod:
        return Pod(f"{b['name']}-{app}", NS, {"app": app}, account, b["ip"], b["inner_ip"],
                   True, tuple(b["container_ports"]), b["named_ports"], True)  # fmt: skip

    http = (ServicePort(8080, 8080, "http"),)
    snapshot = Snapshot(
        pods=(client, b_as("service-b-v1", "service-b-v1"), b_as("impostor", "someone-else")),
        services=(Service("service-b-v1", NS, {"app": "service-b-v1"}, http),
                  Service("impostor", NS, {"app": "impostor"}, http)),
        mesh=MeshConfig(),
        namespaces={NS: {"istio-injection": "enabled"}},
    )  # fmt: skip
    sidecar = Sidecar(client, tmp_path / "envoy")
    ca = CertificateAuthority.load_or_create(secure_mesh.home / "ca")
    sidecar.write_bootstrap(xds.bootstrap(client, sidecar.folder, "raw-client.istio-meshlab"))
    docs = xds.secrets(ca.issue(NS, "service-a", ttl=dt.timedelta(hours=1)), ca.root_pem)
    sidecar.write("sds_default", docs["default"])
    sidecar.write("sds_rootca", docs["ROOTCA"])
    listeners = xds.listeners(snapshot, client, sidecar.folder)
    clusters = xds.clusters(snapshot, client, sidecar.folder)
    sidecar.write("lds", xds.discovery_response(listeners, xds.LISTENER_TYPE, "v1"))
    sidecar.write("cds", xds.discovery_response(clusters, xds.CLUSTER_TYPE, "v1"))
    log = tmp_path / "envoy.log"
    with log.open("wb") as out:
        argv = [*envoy_argv(sidecar.bootstrap_path), "--file-flush-interval-msec", "50"]
        envoy = subprocess.Popen(argv, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not asyncio.run(sidecar.ready()):
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        proxy = f"http://{client.inner_ip}:15001"
        with httpx.Client(proxy=proxy, trust_env=False, timeout=10) as h:
            good = h.get("http://service-b-v1:8080/hello")
            bad = h.get("http://impostor:8080/hello")
        stats = asyncio.run(sidecar.stats("ssl.fail_verify_san"))
        deadline = time.monotonic() + 5  # the access log is flushed about once a second
        while "CERTIFICATE_VERIFY_FAILED" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        envoy.kill()
        envoy.wait()
    assert good.status_code == 200 and good.json()["caller"] == A_ID
    assert bad.status_code == 503
    assert bad.text == (
        "upstream connect error or disconnect/reset before headers. retried and the latest "
        "reset reason: remote connection failure"
    )
    # Each attempt (the first and Istio's two retries) failed the SAN check.
    impostor = "cluster.outbound|8080||impostor.istio-meshlab.svc.cluster.local"
    assert stats[f"{impostor}.ssl.fail_verify_san"] == "3"
    assert stats.get(
        "cluster.outbound|8080||service-b-v1.istio-meshlab.svc.cluster.local.ssl.fail_verify_san"
    ) in (None, "0")
    # The access log says why (what `kubectl logs -c istio-proxy` shows on a cluster).
    lines = [line for line in log.read_text().splitlines() if '"impostor:8080"' in line]
    assert lines and " 503 URX,UF upstream_reset_before_response_started" in lines[-1]
    assert (
        "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify_cert_failed:_SAN_matcher,"
        "_certificate_SANs_are_[spiffe://cluster.local/ns/istio-meshlab/sa/service-b-v1]"
    ) in lines[-1]


# ---- rotation ------------------------------------------------------------------------------------
def _loaded_serial(mesh, workload: str) -> int:
    """The serial of the certificate the sidecar has loaded (its SDS ``default`` secret)."""
    dump = mesh.sidecar_config(workload, NS, resource="dynamic_active_secrets")
    (secret,) = [c for c in dump["configs"] if c["name"] == "default"]
    chain = secret["secret"]["tls_certificate"]["certificate_chain"]["inline_bytes"]
    return load_certificate(base64.b64decode(chain)).serial


def test_certificates_rotate_at_half_life_without_a_failed_request(secure_mesh, pods, certs):
    mesh = secure_mesh
    first = {w: mesh.certificate(w, NS) for w in ("service-a", "service-b-v1")}
    for cert in first.values():
        assert cert.lifetime <= dt.timedelta(seconds=CERT_TTL_S + 121)  # + 2 min backdating
    outcomes: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        proxy = f"http://{pods['service-a']['inner_ip']}:15001"
        with httpx.Client(proxy=proxy, trust_env=False, timeout=5) as client:
            while not stop.is_set():
                try:
                    response = client.get("http://service-b-v1:8080/hello")
                    outcomes.append(str(response.status_code))
                except httpx.HTTPError as err:
                    outcomes.append(repr(err))
                time.sleep(0.005)

    def handshakes() -> None:
        # A new TLS handshake with service-b-v1's sidecar each time (the sidecars' own
        # connections are pooled, so this is what meets each freshly loaded certificate).
        address = (pods["service-b-v1"]["ip"], 8080)
        while not stop.is_set():
            try:
                answer = tls_attempt(address, certs["valid"])
                fresh.append(answer.split(b"\r\n", 1)[0].decode())
            except OSError as err:
                fresh.append(repr(err))
            time.sleep(0.02)

    fresh: list[str] = []
    threads = [threading.Thread(target=f, daemon=True) for f in (traffic, handshakes)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 3 * CERT_TTL_S
        while time.monotonic() < deadline:
            now = {w: mesh.certificate(w, NS) for w in first}
            if all(now[w].serial != first[w].serial for w in first):
                break
            time.sleep(0.25)
        time.sleep(1.0)  # and keep calling a little after the last rotation
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert all(now[w].serial != first[w].serial for w in first), "no rotation happened"
    for w, cert in now.items():
        # Rotated at about half of the old certificate's life, long before it expired.
        issued = cert.not_before + dt.timedelta(minutes=2)
        assert issued < first[w].not_after - dt.timedelta(seconds=2)
        assert _loaded_serial(mesh, w) in (cert.serial, mesh.certificate(w, NS).serial)
    assert len(outcomes) > 100
    assert set(outcomes) == {"200"}, [o for o in outcomes if o != "200"][:5]
    assert len(fresh) > 20
    assert set(fresh) == {"HTTP/1.1 200 OK"}, [o for o in fresh if o != "HTTP/1.1 200 OK"][:5]
    # A new handshake gets the new certificate from the server.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(*certs["valid"])
    address = (pods["service-b-v1"]["ip"], 8080)
    with socket.create_connection(address, timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    served = x509.load_der_x509_certificate(der)
    assert served.serial_number != first["service-b-v1"].serial
    latest = mesh.certificate("service-b-v1", NS)
    fingerprints = {latest.fingerprint_sha256, now["service-b-v1"].fingerprint_sha256}
    assert hashlib.sha256(der).hexdigest() in fingerprints
