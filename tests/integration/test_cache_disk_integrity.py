"""A damaged disk-cache entry never sends a damaged byte (issue 8.6).

A 64 MiB entry is damaged at one place at a time: its meta (the head), its first 64 KiB
block, a block in the middle, its last block.  The next client gets either a clean miss
(the whole, right body from the origin) or a response cut short whose every byte is
right, with the connection closed before the announced length; the entry is deleted,
so the fetch after that is a miss.  Damage to the head or the first block is found
before the response starts: a clean miss.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from pathlib import Path

import pytest

from tests.helpers.cache_integ import reverse_cache_config
from tests.helpers.origin import Origin, answering, count, path_of, response, serve
from tests.helpers.procs import free_port, run_ferryman
from tests.helpers.rawhttp import exchange
from tests.helpers.wait import wait_for

SIZE = 64 * 1024 * 1024 + 12345
BODY = hashlib.shake_256(b"integrity").digest(SIZE)
BLOCK = 65536
RESPONSE = response(200, BODY, {"Cache-Control": "max-age=600", "Content-Type": "application/octet-stream"})


async def answer(origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
    assert path_of(head) == "/big"
    writer.write(RESPONSE)
    await writer.drain()


def fetch(port: int) -> tuple[bytes, bytes, bool]:
    """(head, body bytes received, complete?) of GET /big on a fresh connection."""
    resp = exchange(port, b"GET /big HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n", timeout=30)
    assert resp.header("content-length") == str(SIZE) and resp.rest == b"", resp.head.raw
    return resp.head.raw, resp.body, resp.complete


def cache_status(head: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"cache-status":
            return value.strip()
    return b""


def entry_file(root: Path) -> Path | None:
    files = [p for p in root.rglob("*-*") if p.is_file() and not p.name.startswith(".tmp-")]
    return files[0] if len(files) == 1 and files[0].stat().st_size > SIZE else None


def body_start(path: Path) -> int:
    with open(path, "rb") as fh:
        meta_len, body_len = struct.unpack(">IQ", fh.read(24)[12:])
    assert body_len == SIZE
    return 24 + meta_len


@pytest.mark.parametrize("where", ["meta", "first-block", "middle-block", "last-block"])
def test_no_damaged_byte_of_a_large_entry_reaches_a_client(tmp_path: Path, where: str) -> None:
    cache_dir = tmp_path / "cache"
    cache = {"store": "disk", "path": str(cache_dir), "max_object_size": "128MiB", "max_size": "1GiB"}
    with serve(answering(answer)) as origin, run_ferryman(
        tmp_path, **reverse_cache_config(free_port(), free_port(), origin.url, cache=cache)
    ) as fm:
        head, body, complete = fetch(fm.port)
        assert complete and body == BODY and b"stored" in cache_status(head)
        path = wait_for(lambda: entry_file(cache_dir), 20, "the entry on disk")
        start = body_start(path)
        offset = {
            "meta": path.read_bytes()[:start].index(b"octet-stream") + 2,  # a stored header's value
            "first-block": start + 1000,
            "middle-block": start + SIZE // 2 + 777,
            "last-block": start + SIZE - 3,
        }[where]
        with open(path, "r+b") as fh:  # flip a few bits in place
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0x24]))
        asked = count(origin, "/big")

        head, body, complete = fetch(fm.port)
        assert body == BODY[: len(body)], "a damaged byte reached the client"
        if where in ("meta", "first-block"):
            assert complete and count(origin, "/big") == asked + 1, "not a clean miss"
            assert b"hit" not in cache_status(head), head
        elif complete:
            assert count(origin, "/big") == asked + 1  # a miss: served whole from the origin
        else:
            assert b"hit" in cache_status(head)  # cut short (connection closed) before the damaged block
            wait_for(lambda: not path.exists(), 10, "the damaged entry deleted")
            head, body, complete = fetch(fm.port)
            assert complete and body == BODY and count(origin, "/big") == asked + 1
            assert b"hit" not in cache_status(head), head
