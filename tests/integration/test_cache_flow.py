"""The cache's fills through a real ferryman and a real nginx origin, counting what reaches
the origin from nginx's access log: a fill completes whatever the client's speed; one
object gets one whole-object fill; purges and invalidations stick across fills in flight;
revalidations are coalesced like misses.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.integ_http import curl, poll_until
from tests.helpers.procs import Ferryman, Nginx, run_ferryman, run_nginx

MiB = 1 << 20
LINE = re.compile(rb'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.[01]" (?P<status>\d{3}) (?P<bytes>\d+)')


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    status: int
    size: int


def origin_log(ng: Nginx) -> list[Hit]:
    out = []
    for line in ng.access_log().encode().splitlines():
        m = LINE.search(line)
        if m:
            out.append(Hit(m["method"].decode(), m["path"].decode(), int(m["status"]), int(m["bytes"])))
    return out


def make_file(ng: Nginx, name: str, size: int) -> bytes:
    """A file nginx serves with Last-Modified a month ago: heuristically fresh for a while."""
    data = os.urandom(size)
    path = ng.root / name
    path.write_bytes(data)
    old = time.time() - 30 * 86400
    os.utime(path, (old, old))
    return data


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Nginx]:
    with run_nginx(tmp_path / "nginx") as ng:
        yield ng


def disk_proxy(tmp_path: Path, **cache: object) -> Iterator[Ferryman]:
    return run_ferryman(tmp_path, cache={"store": "disk", "path": str(tmp_path / "cache"), **cache})


def entry_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))


def fetch(fm: Ferryman, url: str, *headers: str) -> tuple[dict[str, str], int]:
    """GET through the proxy with curl (a fast reader); (response headers, body bytes)."""
    args = ["-x", fm.proxy, "-o", "/dev/null", "-D", "-", "-w", "\n%{size_download}"]
    for h in headers:
        args += ["-H", h]
    out = curl(*args, url).stdout.decode("latin-1")
    head, _, size = out.rpartition("\n")
    fields = {}
    for line in head.splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return fields, int(size)


# -- issue 8.7: "stored" means stored, whatever the client's speed --------------------------
def test_fast_client_fills_of_a_big_object_are_all_published(tmp_path: Path, origin: Nginx) -> None:
    make_file(origin, "big64", 64 * MiB)
    fills = 6
    with disk_proxy(tmp_path, max_size="1GiB") as fm:
        for i in range(fills):
            fields, size = fetch(fm, f"{origin.url}/big64?n={i}")
            assert size == 64 * MiB
            assert "stored" in fields["cache-status"], fields
        files = poll_until(lambda: (f := entry_files(tmp_path / "cache")) and len(f) >= fills and f, 20,
                           f"{fills} published entries")
        assert len(files) == fills
        for i in range(fills):
            fields, size = fetch(fm, f"{origin.url}/big64?n={i}")
            assert size == 64 * MiB and "hit" in fields["cache-status"], fields
    assert sum(1 for h in origin_log(origin) if h.path.startswith("/big64")) == fills
