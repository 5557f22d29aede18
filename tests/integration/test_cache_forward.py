"""The cache on the command-line one-liners and in forward mode: ``ferryman forward``
caching by default (a modest memory cache, shown in the start-up line; ``--no-cache`` turns
it off), ``--cache`` keyed by target URL (curl -x), ``cache.forward: false`` turning it off
for forward traffic, and ``ferryman reverse --to URL --cache``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.helpers.cache_integ import is_hit, is_stored
from tests.helpers.origin import Origin, answering, count, path_of, response, serve
from tests.helpers.procs import free_port, launch, run_ferryman
from tests.helpers.rawhttp import Head, curl, parse_head
from tests.helpers.wait import wait_text


async def versioned(origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
    """``<port> <path> #n``, fresh for a minute."""
    path = path_of(head)
    body = f"{origin.port} {path} #{count(origin, path)}".encode()
    writer.write(response(200, body, {"Cache-Control": "max-age=60", "Content-Type": "text/plain"}))
    await writer.drain()


@contextmanager
def one_liner(tmp: Path, *args: str) -> Iterator[int]:
    """``ferryman <args> --listen 127.0.0.1:PORT --access-log off``; yields PORT once it listens."""
    port = free_port()
    with launch(tmp, *args, "--listen", f"127.0.0.1:{port}", "--access-log", "off", port=port,
                stderr_path=tmp / "one-liner.stderr"):
        yield port


def curl_get(*args: str) -> tuple[Head, bytes]:
    out = curl("-i", *args)
    raw_head, _, body = out.stdout.partition(b"\r\n\r\n")
    return parse_head(raw_head), body


def test_forward_one_liner_with_cache_hits_on_the_second_request(tmp_path: Path) -> None:
    with serve(answering(versioned)) as a, serve(answering(versioned)) as b, one_liner(
        tmp_path, "forward", "--cache"
    ) as port:
        proxy = f"http://127.0.0.1:{port}"
        head1, body1 = curl_get("-x", proxy, f"{a.url}/page?q=1")
        assert head1.status == 200 and "stored" in (head1.get("cache-status") or "")
        head2, body2 = curl_get("-x", proxy, f"{a.url}/page?q=1")
        assert head2.status == 200 and body2 == body1 == f"{a.port} /page #1".encode()
        assert "hit" in (head2.get("cache-status") or "").split("; ")
        assert head2.get("age") is not None
        assert count(a, "/page") == 1
        # The key is the whole target URL: another origin, or another query, is another entry.
        _, other = curl_get("-x", proxy, f"{b.url}/page?q=1")
        assert other == f"{b.port} /page #1".encode() and count(b, "/page") == 1
        head3, query = curl_get("-x", proxy, f"{a.url}/page?q=2")
        assert query == f"{a.port} /page #2".encode() and "hit" not in (head3.get("cache-status") or "")


def test_forward_one_liner_shares_a_memory_cache_by_default(tmp_path: Path) -> None:
    stderr = tmp_path / "one-liner.stderr"
    with serve(answering(versioned)) as origin, one_liner(tmp_path, "forward") as port:
        wait_text(stderr.read_text, "cache: memory 64MiB")
        proxy = f"http://127.0.0.1:{port}"
        head1, body1 = curl_get("-x", proxy, f"{origin.url}/default")
        head2, body2 = curl_get("-x", proxy, f"{origin.url}/default")
        assert "stored" in (head1.get("cache-status") or "")
        assert "hit" in (head2.get("cache-status") or "").split("; ") and body2 == body1
        assert count(origin, "/default") == 1


def test_forward_one_liner_with_no_cache_asks_the_origin_every_time(tmp_path: Path) -> None:
    stderr = tmp_path / "one-liner.stderr"
    with serve(answering(versioned)) as origin, one_liner(tmp_path, "forward", "--no-cache") as port:
        wait_text(stderr.read_text, "cache: off")
        proxy = f"http://127.0.0.1:{port}"
        heads = [curl_get("-x", proxy, f"{origin.url}/nocache")[0] for _ in range(2)]
        assert all(h.status == 200 and h.get("cache-status") is None for h in heads)
        assert count(origin, "/nocache") == 2


def test_forward_traffic_is_not_cached_when_cache_forward_is_off(tmp_path: Path) -> None:
    with serve(answering(versioned)) as origin, run_ferryman(
        tmp_path, cache={"store": "memory", "forward": False}
    ) as fm, httpx.Client(proxy=fm.proxy, trust_env=False, timeout=10) as client:
        responses = [client.get(f"{origin.url}/fwd-off") for _ in range(2)]
        assert [r.content for r in responses] == [
            f"{origin.port} /fwd-off #{n}".encode() for n in (1, 2)
        ]
        assert all("cache-status" not in r.headers for r in responses)
        assert count(origin, "/fwd-off") == 2


def test_forward_cache_with_httpx_as_the_client(tmp_path: Path) -> None:
    with serve(answering(versioned)) as origin, run_ferryman(
        tmp_path, cache={"store": "memory"}
    ) as fm, httpx.Client(proxy=fm.proxy, trust_env=False, timeout=10) as client:
        first = client.get(f"{origin.url}/fwd-on")
        second = client.get(f"{origin.url}/fwd-on")
        assert is_stored(first) and is_hit(second) and second.content == first.content
        assert count(origin, "/fwd-on") == 1


def test_reverse_one_liner_with_cache(tmp_path: Path) -> None:
    with serve(answering(versioned)) as origin, one_liner(
        tmp_path, "reverse", "--to", origin.url, "--cache"
    ) as port:
        url = f"http://127.0.0.1:{port}/one-liner"
        head1, body1 = curl_get(url)
        assert head1.status == 200 and "stored" in (head1.get("cache-status") or "")
        head2, body2 = curl_get(url)
        assert "hit" in (head2.get("cache-status") or "").split("; ") and body2 == body1
        assert count(origin, "/one-liner") == 1
