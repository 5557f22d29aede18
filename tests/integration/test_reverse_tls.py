"""TLS termination on a reverse listener: SNI picks the certificate (and Host the route),
TLS 1.1 is refused, and a missing certificate file is named by `ferryman check`."""

from __future__ import annotations

import socket
import ssl
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
import yaml

from tests.helpers.origin import Backend, backends
from tests.helpers.procs import (
    Ferryman,
    ferryman_check,
    ferryman_cli,
    free_port,
    reverse_config,
    run_reverse,
    upstream,
)


@dataclass
class Certs:
    ca_pem: Path
    pairs: dict[str, tuple[Path, Path]]  # name -> (cert chain, key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("sni-certs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    pairs = {}
    for name in ("a.test", "b.test"):
        leaf = ca.issue_cert(name)
        cert, key = d / f"{name}.pem", d / f"{name}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        pairs[name] = (cert, key)
    return Certs(d / "ca.pem", pairs)


def _tls_block(certs: Certs) -> dict[str, object]:
    return {"certificates": [{"cert": str(c), "key": str(k)} for c, k in certs.pairs.values()]}


@pytest.fixture(scope="module")
def sites() -> Iterator[list[Backend]]:
    with backends("site-a", "site-b") as bs:
        yield bs


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, certs: Certs, sites: list[Backend]) -> Iterator[Ferryman]:
    a, b = sites
    routes = [
        {"name": "a", "match": {"host": "a.test"}, "upstream": "a"},
        {"name": "b", "match": {"host": "b.test"}, "upstream": "b"},
    ]
    with run_reverse(tmp_path_factory.mktemp("tls"), routes=routes, tls=_tls_block(certs),
                     upstreams={"a": upstream(a.url), "b": upstream(b.url)}) as fm:
        yield fm


def _san(cert: dict[str, object]) -> list[str]:
    return [v for k, v in cert["subjectAltName"] if k == "DNS"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["a.test", "b.test"])
def test_curl_sni_gets_the_right_certificate_and_route(
    proxy: Ferryman, certs: Certs, sites: list[Backend], name: str
) -> None:
    out = subprocess.run(
        ["curl", "-sS", "-v", "--noproxy", "*", "--resolve", f"{name}:{proxy.port}:127.0.0.1",
         "--cacert", str(certs.ca_pem), f"https://{name}:{proxy.port}/hello"],
        capture_output=True, text=True, timeout=10, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"site-{name[0]}"
    assert f'subjectAltName: host "{name}" matched cert\'s "{name}"' in out.stderr
    assert "ALPN: server accepted http/1.1" in out.stderr
    seen = sites[0 if name == "a.test" else 1].last()
    assert seen.header("x-forwarded-proto") == "https"
    assert seen.header("host") == f"{name}:{proxy.port}"


@pytest.mark.parametrize("name", ["a.test", "b.test"])
def test_httpx_sni_peer_certificate(proxy: Ferryman, certs: Certs, name: str) -> None:
    ctx = ssl.create_default_context(cafile=str(certs.ca_pem))
    with httpx.Client(verify=ctx, trust_env=False, timeout=10) as c:
        r = c.get(f"https://127.0.0.1:{proxy.port}/x", headers={"Host": name},
                  extensions={"sni_hostname": name})
        peer = r.extensions["network_stream"].get_extra_info("ssl_object").getpeercert()
    assert r.status_code == 200 and r.text == f"site-{name[0]}"
    assert _san(peer) == [name]


def _handshake(port: int, ctx: ssl.SSLContext, sni: str) -> ssl.SSLSocket:
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=sni)


def test_unknown_sni_gets_the_first_certificate(proxy: Ferryman, certs: Certs) -> None:
    ctx = ssl.create_default_context(cafile=str(certs.ca_pem))
    ctx.check_hostname = False  # the name will not match: we only look at which cert came
    with _handshake(proxy.port, ctx, "c.test") as s:
        peer = s.getpeercert()
        assert s.version() in ("TLSv1.2", "TLSv1.3")
    assert peer is not None and _san(peer) == ["a.test"]


def _legacy_client(max_version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 constants are deprecated
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = max_version
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL 3 offer the old versions at all
    return ctx


def _tls_1_1() -> ssl.TLSVersion:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return ssl.TLSVersion.TLSv1_1


def test_tls_1_1_client_is_refused(proxy: Ferryman, sites: list[Backend]) -> None:
    before = sites[0].count()
    with pytest.raises(ssl.SSLError) as info:
        _handshake(proxy.port, _legacy_client(_tls_1_1()), "a.test").close()
    # The client did offer TLS 1.1 (it did not fail on its own for want of a protocol) ...
    assert info.value.reason != "NO_PROTOCOLS_AVAILABLE"
    # ... and the same client allowed TLS 1.2 gets through, so the refusal was about the version.
    with _handshake(proxy.port, _legacy_client(ssl.TLSVersion.TLSv1_2), "a.test") as s:
        assert s.version() == "TLSv1.2"
    assert sites[0].count() == before


@pytest.mark.xfail(
    strict=True,
    reason="KNOWN GAP: the refusal works (see test above) but asyncio/uvloop's TLS layer closes "
    "without flushing the protocol_version alert; fixing it needs ferryman's own MemoryBIO handshake",
)
def test_tls_1_1_client_gets_a_protocol_version_alert(proxy: Ferryman) -> None:
    with pytest.raises(ssl.SSLError) as info:
        _handshake(proxy.port, _legacy_client(_tls_1_1()), "a.test").close()
    assert info.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


def _missing_cert_config(tmp_path: Path, certs: Certs) -> dict[str, object]:
    tls = _tls_block(certs)
    tls["certificates"][0]["cert"] = str(tmp_path / "missing.pem")  # type: ignore[index]
    return reverse_config(free_port(), tmp_path / "access.log", tls=tls, routes=[{"respond": {"body": "x"}}])


def test_missing_certificate_file_is_named_by_check(tmp_path: Path, certs: Certs) -> None:
    out = ferryman_check(tmp_path, _missing_cert_config(tmp_path, certs))
    assert out.returncode != 0
    assert "listeners[0].tls.certificates[0].cert" in out.stderr
    assert "missing.pem" in out.stderr
    assert "certificates[0].key" not in out.stderr  # only the broken field is named


def test_missing_certificate_file_is_named_by_run(tmp_path: Path, certs: Certs) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_missing_cert_config(tmp_path, certs)))
    out = ferryman_cli(tmp_path, "run", "-c", str(path))
    assert out.returncode == 2
    assert f"listeners[0].tls.certificates[0].cert: cannot read {tmp_path / 'missing.pem'}" in out.stderr


def test_valid_tls_config_passes_check(tmp_path: Path, certs: Certs) -> None:
    cfg = reverse_config(free_port(), tmp_path / "access.log", tls=_tls_block(certs),
                         routes=[{"respond": {"body": "x"}}])
    out = ferryman_check(tmp_path, cfg)
    assert out.returncode == 0, out.stderr
