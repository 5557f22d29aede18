"""stale-while-revalidate (RFC 5861 3): stale now, refreshed once in the background."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.helpers.origin import Origin, read_head, serve
from tests.helpers.procs import free_port, run_ferryman
from tests.helpers.wait import wait_for


def test_stale_served_at_once_and_refreshed_behind(tmp_path: Path) -> None:
    served = {"n": 0}

    async def handler(_o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_head(reader)
                served["n"] += 1
                body = b"version %d" % served["n"]
                writer.write(
                    b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1, stale-while-revalidate=30\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    with serve(handler) as origin:
        port = free_port()
        with run_ferryman(
            tmp_path,
            listeners=[{"listen": f"127.0.0.1:{port}", "mode": "reverse"}],
            routes=[{"upstream": "o", "cache": {"enabled": True}}],
            upstreams={"o": {"servers": [{"url": origin.url}]}},
            cache={"store": "memory"},
        ):
            url = f"http://127.0.0.1:{port}/doc"
            with httpx.Client(trust_env=False, timeout=5) as c:
                assert c.get(url).text == "version 1"
                time.sleep(1.6)  # max-age=1 must run out: here time itself is what is tested
                stale = c.get(url)
                assert stale.text == "version 1" and "hit" in stale.headers["cache-status"]
                wait_for(lambda: c.get(url).text == "version 2", 5, "the background refresh to land")
            assert served["n"] == 2  # one refresh, not one per stale request
