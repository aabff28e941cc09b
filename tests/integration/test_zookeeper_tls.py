"""ZooKeeper over TLS: a real server with a secure port and a throw-away CA made here;
a daemon with the TLS options leads, one without them cannot even connect."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ..harness import Cluster, wait_until
from ..servers import free_port
from .test_zookeeper_crash_takeover import kill9_takeover

pytestmark = pytest.mark.integration


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed for this test", pytrace=False)
    d = tmp_path / "pki"
    d.mkdir()
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=failover-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extra in (("server", ["-extfile", "san.cnf"]), ("client", [])):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            f"{name}.pem",
            *extra,
            cwd=d,
        )
    (d / "server-combined.pem").write_text(
        (d / "server.key").read_text() + (d / "server.pem").read_text()
    )
    for key in d.glob("*.key"):
        key.chmod(0o600)
    return d


def tls_server(pki: Path, zk_factory: Any) -> tuple[Any, dict[str, str]]:
    """A server with a secure port (client certificates required) and the daemon settings."""
    port = free_port()
    server = zk_factory(
        max_session_timeout_ms=20000,
        extra_config={
            "secureClientPort": port,
            "serverCnxnFactory": "org.apache.zookeeper.server.NettyServerCnxnFactory",
            "ssl.keyStore.location": str(pki / "server-combined.pem"),
            "ssl.keyStore.type": "PEM",
            "ssl.trustStore.location": str(pki / "ca.pem"),
            "ssl.trustStore.type": "PEM",
            "ssl.clientAuth": "need",
        },
    )
    tls = {
        "backend": "zookeeper",
        "zookeeper.hosts": f"127.0.0.1:{port}",
        "zookeeper.use_ssl": "true",
        "zookeeper.ca_file": str(pki / "ca.pem"),
        "zookeeper.cert_file": str(pki / "client.pem"),
        "zookeeper.key_file": str(pki / "client.key"),
    }
    return server, tls


def test_daemon_leads_over_tls_and_plaintext_cannot_connect(
    pki: Path, zk_factory: Any, tmp_path: Path
) -> None:
    _, tls = tls_server(pki, zk_factory)
    hosts = tls["zookeeper.hosts"]
    secure = Cluster(tmp_path / "tls", nodes=("t1",), settings=tls)
    plain = Cluster(
        tmp_path / "plain",
        nodes=("p1",),
        settings={"backend": "zookeeper", "zookeeper.hosts": hosts},
        cluster="t2",
    )
    try:
        secure.start("t1")
        assert secure.leader_child(timeout=30)[0] == "t1"
        plain.start("p1")
        wait_until(
            lambda: any("unavailable" in s for s in plain.sentences("p1")),
            30,
            "the plaintext daemon to fail",
        )
        assert not plain.live_children()
        assert all("leader" not in s or "following" in s for s in plain.sentences("p1"))
    finally:
        secure.stop_all()
        plain.stop_all()


def test_kill9_over_tls_is_taken_over_at_once(pki: Path, zk_factory: Any, tmp_path: Path) -> None:
    """The dead daemon's keeper ends its session over TLS too (with the client certificate)."""
    server, tls = tls_server(pki, zk_factory)
    c = Cluster(tmp_path, settings=tls, probe_args=("--fork", "1", "--escape", "session"))
    try:
        took = kill9_takeover(c, server.hosts)  # the test reads nodes on the plaintext port
    finally:
        c.stop_all()
    print(f"\nkill -9 takeover over TLS: {took:.3f} s")
    assert took < 1.0, c.dump_logs()
