"""The admin listener: loopback only, status, reload, purge without a cache."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.helpers.procs import ferryman_cli, free_port, run_ferryman
from tests.helpers.rawhttp import exchange


def test_status_reload_and_purge(tmp_path: Path) -> None:
    port = free_port()
    with run_ferryman(tmp_path, admin={"listen": f"127.0.0.1:{port}"}) as fm:
        base = f"http://127.0.0.1:{port}"
        from tests.helpers.procs import wait_port

        wait_port(port, fm.proc)
        status = httpx.get(f"{base}/status", timeout=5).json()
        assert status["config"].endswith("ferryman.yaml") and status["draining"] is False
        assert httpx.get(f"{base}/healthz", timeout=5).text == "ok\n"
        head = exchange(port, b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert head.status == 200 and head.header("content-length") == "3"
        assert head.raw.endswith(b"\r\n\r\n")  # no body after the answer to HEAD
        assert httpx.post(f"{base}/reload", json={}, timeout=10).json() == {"reloaded": True}
        fm.config_path.write_text(fm.config_path.read_text() + "bogus_key: 1\n")
        r = httpx.post(f"{base}/reload", headers={"X-Ferryman-Admin": "1"}, timeout=10)
        assert r.status_code == 409 and r.json() == {"reloaded": False}
        assert httpx.post(f"{base}/purge?url=http://a/", json={}, timeout=5).status_code == 404
        assert httpx.get(f"{base}/nope", timeout=5).status_code == 404


def test_admin_refuses_a_public_address(tmp_path: Path) -> None:
    cfg = tmp_path / "f.yaml"
    cfg.write_text('admin: {listen: "0.0.0.0:9901"}\n')
    out = ferryman_cli(tmp_path, "check", "-c", str(cfg))
    assert out.returncode != 0
    assert "admin: admin.listen must be a loopback address" in out.stderr


def test_status_is_json_with_upstream_health(tmp_path: Path) -> None:
    port = free_port()
    listen = free_port()
    with run_ferryman(
        tmp_path,
        admin={"listen": f"127.0.0.1:{port}"},
        listeners=[{"listen": f"127.0.0.1:{listen}", "mode": "reverse"}],
        routes=[{"upstream": "web"}],
        upstreams={"web": {"servers": [{"url": "http://127.0.0.1:9", "weight": 3}]}},
    ) as fm:
        from tests.helpers.procs import wait_port

        wait_port(port, fm.proc)
        doc = json.loads(httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).text)
        assert doc["upstreams"]["web"][0] == {
            "url": "http://127.0.0.1:9", "healthy": True, "ejected": False, "active": 0,
            "backup": False, "weight": 3,
        }
