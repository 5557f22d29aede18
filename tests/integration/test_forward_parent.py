"""Chaining: a child ferryman forwarding through a parent ferryman."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.origin import TLS_BODY, Origin, Tls
from tests.helpers.procs import Ferryman, Nginx, run_ferryman
from tests.helpers.rawhttp import curl, proxy_request, raw_client
from tests.helpers.wait import wait_log


@pytest.fixture
def chain(tmp_path: Path, tls_origin: Origin, nginx: Nginx) -> Iterator[tuple[Ferryman, Ferryman]]:
    """parent allows CONNECT to the TLS origin only; child also to nginx's port."""
    (tmp_path / "parent").mkdir()
    (tmp_path / "child").mkdir()
    parent_fwd = {"connect_ports": [tls_origin.port]}
    child_fwd = {"connect_ports": [tls_origin.port, nginx.port]}
    with run_ferryman(tmp_path / "parent", forward=parent_fwd) as parent, \
            run_ferryman(tmp_path / "child", forward={**child_fwd, "parent": parent.proxy}) as child:
        yield parent, child


def test_http_through_two_proxies_carries_two_via_entries(chain: tuple[Ferryman, Ferryman],
                                                           nginx: Nginx) -> None:
    parent, child = chain
    with raw_client(child.port) as c:
        r = c.request(proxy_request(f"{nginx.url}/headers"))
    assert r.status == 200
    via_req = r.body.decode().split(" via=", 1)[1].split(" conn=", 1)[0]
    entries = [e.strip() for e in via_req.split(",")]
    assert len(entries) == 2, via_req
    assert entries[0].endswith(f":{child.port} (ferryman)")
    assert entries[1].endswith(f":{parent.port} (ferryman)")
    via_resp = [e.strip() for e in (r.head.get("via") or "").split(",")]
    assert len(via_resp) == 2 and via_resp[0].endswith(f":{parent.port} (ferryman)")
    # both hops logged the request
    wait_log(parent.access_log, lambda e: e["target"] == f"{nginx.url}/headers")
    entry = wait_log(child.access_log, lambda e: e["target"] == f"{nginx.url}/headers")
    assert entry["upstream"] == f"127.0.0.1:{parent.port}"


def test_curl_get_and_post_through_the_chain(chain: tuple[Ferryman, Ferryman], nginx: Nginx) -> None:
    _, child = chain
    assert curl("-x", child.proxy, f"{nginx.url}/small").stdout == b"hello from nginx\n"
    assert curl("-x", child.proxy, "--data-binary", "x=1", f"{nginx.url}/echo").stdout == b"POST /echo\n"


def test_connect_through_two_proxies(chain: tuple[Ferryman, Ferryman], tls: Tls, tls_origin: Origin) -> None:
    parent, child = chain
    with httpx.Client(proxy=child.proxy, verify=tls.client_ctx(), trust_env=False, timeout=10) as client:
        r = client.get(f"https://localhost:{tls_origin.port}/chained")
    assert r.status_code == 200 and r.content == TLS_BODY and r.headers["x-path"] == "/chained"
    out = curl("--cacert", str(tls.ca_file), "-x", child.proxy, f"https://127.0.0.1:{tls_origin.port}/c")
    assert out.stdout == TLS_BODY
    target = f"localhost:{tls_origin.port}"
    p = wait_log(parent.access_log, lambda e: e["method"] == "CONNECT" and e["target"] == target)
    c = wait_log(child.access_log, lambda e: e["method"] == "CONNECT" and e["target"] == target)
    assert p["status"] == c["status"] == 200
    assert c["upstream"] == f"127.0.0.1:{parent.port}"


def test_parent_refusal_of_connect_is_a_502_from_the_child(chain: tuple[Ferryman, Ferryman],
                                                            nginx: Nginx) -> None:
    parent, child = chain
    with raw_client(child.port) as c:
        r = c.request(f"CONNECT 127.0.0.1:{nginx.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert r.status == 502
        assert b"parent proxy refused CONNECT" in r.body and b"403" in r.body
        assert c.at_eof(5)
    p = wait_log(parent.access_log, lambda e: e["method"] == "CONNECT")
    assert p["status"] == 403
