"""Head and body are one versioned record (issue 9.3): with several processes on one store,
a hit's body always belongs to the headers it is sent with.

The origin switches ``/switch`` from an identity ``text/plain`` body (ETag "v1") to a gzip'd
JSON body (ETag "v2", ``Content-Encoding: gzip``).  One process stores the new version while
another still holds the old head in its index; every answer must stay self-consistent, and
no process may answer ``If-None-Match: "v1"`` with a 304 once "v2" is what the store holds.
"""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from typing import Any

from tests.helpers.origin import Origin, answering, header_value, response, serve
from tests.helpers.procs import free_port, run_ferryman
from tests.helpers.rawhttp import Response, exchange
from tests.helpers.wait import wait_for
from tests.integration.test_cache_store_redis import RedisServer

V1 = b"plain text, version one\n" * 40
V2_JSON = b'{"version": 2, "text": "' + b"j" * 900 + b'"}'
V2 = gzip.compress(V2_JSON, mtime=0)


class Switch:
    def __init__(self) -> None:
        self.version = 1

    async def answer(self, origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
        tag = f'"v{self.version}"'
        common = {"Cache-Control": "max-age=300", "ETag": tag}
        if header_value(head, "if-none-match") == tag:
            writer.write(response(304, b"", common, reason="Not Modified"))
        elif self.version == 1:
            writer.write(response(200, V1, {**common, "Content-Type": "text/plain"}))
        else:
            headers = {**common, "Content-Type": "application/json", "Content-Encoding": "gzip"}
            writer.write(response(200, V2, headers))
        await writer.drain()


def fetch(port: int, extra: str = "") -> Response:
    req = f"GET /switch HTTP/1.1\r\nHost: site.test\r\n{extra}Connection: close\r\n\r\n".encode()
    return exchange(port, req, timeout=10)


def consistent(r: Response) -> str:
    """Which version ``r`` is, after checking its body is the one its headers describe."""
    tag, enc, ctype = r.header("etag"), r.header("content-encoding"), r.header("content-type")
    assert r.status == 200, r.raw[:300]
    if tag == '"v1"':
        assert enc is None and ctype == "text/plain", r.raw[:300]
        assert r.body == V1, f"v1 head, other body: {r.raw[:400]!r}"
        return "v1"
    assert tag == '"v2"', r.raw[:300]
    assert enc == "gzip" and ctype == "application/json", r.raw[:300]
    assert r.body == V2 and gzip.decompress(r.body) == V2_JSON, f"v2 head, other body: {r.raw[:400]!r}"
    return "v2"


def check_after_switch(ports: list[int], rounds: int) -> None:
    """Every answer consistent; none a 304 for the old tag; the new version is served."""
    seen = set()
    for i in range(rounds):
        port = ports[i % len(ports)]
        seen.add(consistent(fetch(port)))
        old = fetch(port, 'If-None-Match: "v1"\r\n')
        assert old.status != 304, f"304 for the replaced tag: {old.raw[:300]!r}"
        seen.add(consistent(old))
    assert "v2" in seen


def config(port: int, origin: Origin, cache: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "listeners": [{"listen": f"127.0.0.1:{port}", "mode": "reverse"}],
        "routes": [{"name": "all", "upstream": "o", "cache": {"enabled": True}}],
        "upstreams": {"o": {"servers": [{"url": origin.url}]}},
        "cache": cache,
        "timeouts": {"shutdown_grace": "1s"},
        **extra,
    }


def test_two_workers_on_one_disk_store_never_mix_versions(tmp_path: Path) -> None:
    switch = Switch()
    cache_dir = tmp_path / "cache"
    port = free_port()
    with serve(answering(switch.answer)) as origin, run_ferryman(
        tmp_path, **config(port, origin, {"store": "disk", "path": str(cache_dir)}, workers=2)
    ) as fm:
        # Fresh connections spread over both workers: each indexes the v1 head.
        for _ in range(24):
            assert consistent(fetch(fm.port)) == "v1"
        switch.version = 2
        # One worker revalidates (the client asks it to) and stores v2 over the v1 file.
        assert consistent(fetch(fm.port, "Cache-Control: no-cache\r\n")) == "v2"
        wait_for(lambda: any(b'\\"v2\\"' in p.read_bytes() for p in cache_dir.rglob("*-*")
                               if p.is_file() and not p.name.startswith(".tmp-")) or None,
                   10, "the v2 entry on disk")
        check_after_switch([fm.port], 30)


def test_two_instances_on_one_redis_never_mix_versions(tmp_path: Path) -> None:
    switch = Switch()
    server = RedisServer(tmp_path).start()
    try:
        with serve(answering(switch.answer)) as origin:
            cfg = {"store": "redis"}
            shared = {"redis": server.url}
            (tmp_path / "a").mkdir()
            (tmp_path / "b").mkdir()
            pa, pb = free_port(), free_port()
            with run_ferryman(tmp_path / "a", **config(pa, origin, cfg, shared=shared)) as a, run_ferryman(
                tmp_path / "b", **config(pb, origin, cfg, shared=shared)
            ) as b:
                assert consistent(fetch(a.port)) == "v1"
                wait_for(lambda: fetch(b.port).header("cache-status") is not None
                           and "hit" in (fetch(b.port).header("cache-status") or "") or None,
                           10, "B serving v1 from Redis")
                switch.version = 2
                assert consistent(fetch(a.port, "Cache-Control: no-cache\r\n")) == "v2"
                wait_for(lambda: consistent(fetch(a.port)) == "v2" or None, 10, "A serving v2")
                # B still indexes the v1 head; Redis holds v2 now.
                check_after_switch([b.port, a.port], 10)
    finally:
        server.stop()
