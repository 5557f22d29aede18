"""The disk cache tier through a real ferryman: entries survive a restart (YAML and the
``--cache-dir`` one-liner), damaged files are never served as if whole, and a cache
directory that cannot be created leaves the proxy working, uncached.

Requests carry ``Host: site.test`` so the cache key does not depend on the listener's
port, which changes from one ferryman to the next.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.helpers.cache_integ import admin_cache, is_hit, is_stored, reverse_cache_config
from tests.helpers.origin import Origin, answering, count, header_value, path_of, response, serve
from tests.helpers.procs import free_port, launch, run_ferryman
from tests.helpers.wait import wait_for, wait_port

HOST = {"Host": "site.test"}
HEAD = 24  # the entry file's head: magic | version | block shift | meta length | body length
BIG = 2 * 1024 * 1024 + 123  # above the 1 MiB a disk read checks whole: checked while streaming
BIG_BODY = hashlib.shake_256(b"ferryman").digest(BIG)
MID = 1536 * 1024  # a large body too, truncated


async def answer(origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
    """``/big`` is BIG_BODY, ``/mid`` MID bytes, ``/vary`` varies on Accept-Encoding; any other
    path ``<path> #n``; all fresh a minute."""
    path = path_of(head)
    headers = {"Cache-Control": "max-age=60"}
    if path == "/big":
        body = BIG_BODY
    elif path == "/mid":
        body = BIG_BODY[:MID]
    elif path == "/vary":
        body = f"variant {header_value(head, 'accept-encoding')} #{count(origin, path)}".encode()
        headers["Vary"] = "Accept-Encoding"
    else:
        body = f"{path} #{count(origin, path)}".encode()
    writer.write(response(200, body, headers))
    await writer.drain()


def disk_config(port: int, admin: int, origin: Origin, cache_dir: Path) -> dict[str, object]:
    return reverse_cache_config(port, admin, origin.url, cache={"store": "disk", "path": str(cache_dir)})


def entry_files(root: Path) -> list[Path]:
    """Published entry files (temp files of fills in progress left out)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))


def wait_entries(root: Path, n: int = 1, admin: int | None = None) -> list[Path]:
    """The entry files once ``n`` are published (and, given the ``admin`` port, once no fill
    is in flight any more: until then a request follows the fill, not the file)."""

    def found() -> list[Path] | None:
        files = entry_files(root)
        if len(files) < n or (admin is not None and admin_cache(admin)["fills"] != 0):
            return None
        return files

    return wait_for(found, 10, f"{n} entry file(s)")


def fetch_raw(url: str) -> tuple[int, int | None, bytes, bool]:
    """GET with httpx, streaming: (status, Content-Length, bytes received, complete?)."""
    got = bytearray()
    with httpx.Client(timeout=15, trust_env=False) as client, client.stream("GET", url, headers=HOST) as r:
        length = int(r.headers["content-length"]) if "content-length" in r.headers else None
        try:
            for chunk in r.iter_raw():
                got += chunk
        except httpx.RemoteProtocolError:
            return r.status_code, length, bytes(got), False
        return r.status_code, length, bytes(got), True


def test_disk_entry_survives_a_restart(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    with serve(answering(answer)) as origin:
        (tmp_path / "a").mkdir()
        with run_ferryman(tmp_path / "a", **disk_config(free_port(), free_port(), origin, cache_dir)) as fm:
            first = httpx.get(f"{fm.proxy}/persist", headers=HOST, timeout=10, trust_env=False)
            assert first.status_code == 200 and is_stored(first) and first.content == b"/persist #1"
            wait_entries(cache_dir)
        # SIGTERM'd and gone; a new process, another port, the same directory.
        (tmp_path / "b").mkdir()
        with run_ferryman(tmp_path / "b", **disk_config(free_port(), free_port(), origin, cache_dir)) as fm:
            again = httpx.get(f"{fm.proxy}/persist", headers=HOST, timeout=10, trust_env=False)
            assert again.status_code == 200 and is_hit(again) and again.content == b"/persist #1"
        assert count(origin, "/persist") == 1

        # The one-liner's --cache-dir reads the same directory.
        port = free_port()
        with launch(tmp_path, "reverse", "--listen", f"127.0.0.1:{port}", "--to", origin.url,
                    "--cache-dir", str(cache_dir), "--access-log", "off", port=port,
                    stderr_path=tmp_path / "one-liner.stderr"):
            third = httpx.get(f"http://127.0.0.1:{port}/persist", headers=HOST, timeout=10, trust_env=False)
            assert third.status_code == 200 and is_hit(third) and third.content == b"/persist #1"
        assert count(origin, "/persist") == 1


def test_vary_variants_on_disk_survive_a_restart(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    variants = {"gzip": b"variant gzip #1", "identity": b"variant identity #2"}
    with serve(answering(answer)) as origin:
        (tmp_path / "a").mkdir()
        with run_ferryman(tmp_path / "a", **disk_config(free_port(), free_port(), origin, cache_dir)) as fm:
            for ae, body in variants.items():
                r = httpx.get(f"{fm.proxy}/vary", headers={**HOST, "Accept-Encoding": ae}, timeout=10,
                              trust_env=False)
                assert is_stored(r) and r.content == body
            wait_entries(cache_dir, 2)
        (tmp_path / "b").mkdir()
        with run_ferryman(tmp_path / "b", **disk_config(free_port(), free_port(), origin, cache_dir)) as fm:
            for ae, body in variants.items():
                r = httpx.get(f"{fm.proxy}/vary", headers={**HOST, "Accept-Encoding": ae}, timeout=10,
                              trust_env=False)
                assert r.status_code == 200 and r.content == body and is_hit(r), ae
        assert count(origin, "/vary") == 2


@pytest.mark.parametrize("path", ["/small", "/mid"])
def test_truncated_cache_file_is_never_served(tmp_path: Path, path: str) -> None:
    cache_dir = tmp_path / "cache"
    admin = free_port()
    with serve(answering(answer)) as origin, run_ferryman(
        tmp_path, **disk_config(free_port(), admin, origin, cache_dir)
    ) as fm:
        url = f"{fm.proxy}{path}"
        first = httpx.get(url, headers=HOST, timeout=10, trust_env=False)
        assert is_stored(first)
        expected = first.content
        (entry,) = wait_entries(cache_dir, admin=admin)
        size = entry.stat().st_size
        os.truncate(entry, size - 7)  # cut into the trailer: the head still claims the full size

        status, length, got, complete = fetch_raw(url)
        assert status == 200 and complete and length == len(got)
        assert count(origin, path) == 2  # a miss: the origin was asked again
        if path == "/small":
            assert got == b"/small #2"
        else:
            assert got == expected == BIG_BODY[:MID]
        later = httpx.get(url, headers=HOST, timeout=10, trust_env=False)
        assert later.status_code == 200 and len(later.content) == len(expected)


@pytest.mark.parametrize("verified_first", [False, True], ids=["cold", "after-a-checked-hit"])
def test_corrupt_byte_in_a_large_entry_never_reaches_a_client_as_a_whole_body(
    tmp_path: Path, verified_first: bool
) -> None:
    cache_dir = tmp_path / "cache"
    admin = free_port()
    with serve(answering(answer)) as origin, run_ferryman(
        tmp_path, **disk_config(free_port(), admin, origin, cache_dir)
    ) as fm:
        url = f"{fm.proxy}/big"
        first = httpx.get(url, headers=HOST, timeout=15, trust_env=False)
        assert is_stored(first) and first.content == BIG_BODY
        (entry,) = wait_entries(cache_dir, admin=admin)
        if verified_first:
            hit = httpx.get(url, headers=HOST, timeout=15, trust_env=False)
            assert is_hit(hit) and hit.content == BIG_BODY  # streamed and checked: now "verified"
        with open(entry, "rb") as fh:
            start = HEAD + int.from_bytes(fh.read(HEAD)[12:16], "big")  # where the body begins
        at = BIG - BIG // 3  # inside the body
        offset = start + at
        with open(entry, "r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0xFF]))
        corrupted = bytearray(BIG_BODY)
        corrupted[at] ^= 0xFF
        assert bytes(corrupted) != BIG_BODY

        status, length, got, complete = fetch_raw(url)
        assert status == 200 and length == BIG
        assert got != bytes(corrupted), "the corrupted body was served whole"
        # Either a miss with the right body, or a connection cut before the full length.
        assert (complete and got == BIG_BODY) or (not complete and len(got) < BIG)
        if not complete:
            assert BIG_BODY.startswith(got)  # every byte sent is right

        after = httpx.get(url, headers=HOST, timeout=15, trust_env=False)
        assert after.status_code == 200 and after.content == BIG_BODY
        assert count(origin, "/big") >= 2


@pytest.mark.parametrize("when", ["at-start", "while-running"])
def test_unusable_cache_directory_means_uncached_pass_through(tmp_path: Path, when: str) -> None:
    if when == "at-start":
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("a regular file where the cache directory's parent should be\n")
        cache_dir = blocker / "cache"  # mkdir fails with ENOTDIR, even for root
    else:
        cache_dir = blocker = tmp_path / "cache"  # fine at start, replaced by a file below
    admin = free_port()
    with serve(answering(answer)) as origin, run_ferryman(
        tmp_path, **disk_config(free_port(), admin, origin, cache_dir)
    ) as fm:
        wait_port(admin, fm.proc)
        if when == "while-running":
            shutil.rmtree(cache_dir)
            blocker.write_text("the cache directory is a regular file now\n")
        with httpx.Client(timeout=10, trust_env=False, headers=HOST) as client:
            responses = [client.get(f"{fm.proxy}/pass") for _ in range(3)]
            assert [r.status_code for r in responses] == [200, 200, 200]
            assert [r.content for r in responses] == [f"/pass #{n}".encode() for n in (1, 2, 3)]
            assert not any(is_hit(r) for r in responses)
            if when == "at-start":
                assert not any(is_stored(r) for r in responses)
            assert count(origin, "/pass") == 3
            purge = httpx.post(
                f"http://127.0.0.1:{admin}/purge", json={"prefix": "http://site.test/"},
                timeout=5, trust_env=False,
            )
            assert purge.status_code == 200
            assert client.request("PURGE", f"{fm.proxy}/pass").status_code in (200, 404)
        assert fm.proc.poll() is None
        assert "Traceback" not in fm.stderr()
    assert blocker.is_file()
