"""Name resolution with a small TTL cache, and connecting to the next hop.

`loop.getaddrinfo` runs the system resolver in the default executor, so a
slow DNS server never blocks the event loop; concurrent lookups of one name
share a single future.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from ferryman.errors import DnsError, UpstreamConnectError, UpstreamTimeout

Addr = tuple[int, tuple[Any, ...]]  # (family, sockaddr)

log = logging.getLogger("ferryman")

# Out of descriptors (EMFILE / ENFILE) while dialling: the engine's relief closes idle
# pooled connections (least recently used first) and says how many; the dial is then
# tried once more.  Set by the process's Engine.
_relief: Callable[[], int] | None = None
_EXHAUSTED = (errno.EMFILE, errno.ENFILE)
_last_exhausted_log = -1e9


def set_exhaustion_relief(relief: Callable[[], int] | None) -> None:
    global _relief
    _relief = relief


def _log_exhausted(loop: asyncio.AbstractEventLoop, exc: OSError) -> None:
    """At most one line per 10 s: a process out of descriptors would otherwise flood its log."""
    global _last_exhausted_log
    now = loop.time()
    if now - _last_exhausted_log >= 10.0:
        _last_exhausted_log = now
        log.error("ferryman: out of file descriptors dialling upstream (%s) with no idle "
                  "connection left to close; raise the limit (ulimit -n)", exc.strerror or exc)


class Resolver:
    def __init__(self, ttl: float, negative_ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._cache: dict[tuple[str, int], tuple[float, list[Addr] | None]] = {}
        self._inflight: dict[tuple[str, int], asyncio.Future[list[Addr]]] = {}

    async def resolve(self, host: str, port: int) -> list[Addr]:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            return [(fam, (host, port))]
        loop = asyncio.get_running_loop()
        key = (host, port)
        now = loop.time()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            if hit[1] is None:
                raise DnsError(f"cannot resolve {host}")
            return hit[1]
        fut = self._inflight.get(key)
        if fut is None:
            fut = loop.create_future()
            self._inflight[key] = fut
            loop.create_task(self._lookup(key, fut))
        return await asyncio.shield(fut)

    def known(self, host: str, port: int, now: float) -> list[Addr] | None:
        """The addresses ``resolve`` would return at ``now`` (the loop's time) from its
        cache, without a lookup; None when it would have to ask (or answer an IP literal)."""
        hit = self._cache.get((host, port))
        if hit is None or hit[0] <= now:
            return None
        return hit[1]

    async def _lookup(self, key: tuple[str, int], fut: asyncio.Future[list[Addr]]) -> None:
        loop = asyncio.get_running_loop()
        host, port = key
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addrs: list[Addr] = []
            for fam, _, _, _, sa in infos:
                if (fam, sa) not in addrs:
                    addrs.append((fam, sa))
            self._remember(key, loop.time() + self.ttl, addrs)
            fut.set_result(addrs)
        except OSError as exc:
            self._remember(key, loop.time() + self.negative_ttl, None)  # bounded like the rest
            fut.set_exception(DnsError(f"cannot resolve {host}: {exc.strerror or exc}"))
            fut.exception()  # mark retrieved: no waiter may be left
        finally:
            self._inflight.pop(key, None)

    def _remember(self, key: tuple[str, int], expires: float, addrs: list[Addr] | None) -> None:
        if len(self._cache) >= self.max_entries and key not in self._cache:
            self._cache.clear()  # a flood of distinct names: start over rather than grow
        self._cache[key] = (expires, addrs)

    def prune(self, now: float) -> None:
        for key in [k for k, (exp, _) in self._cache.items() if exp <= now]:
            del self._cache[key]


async def open_connection(
    addrs: list[Addr],
    factory: Callable[[], asyncio.Protocol],
    timeout: float,
    ssl_ctx: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """Try each address in turn within one overall deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Exception | None = None
    relieved = False
    i = 0
    while i < len(addrs):
        fam, sa = addrs[i]
        i += 1
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            async with asyncio.timeout(remaining):
                tr, proto = await loop.create_connection(
                    factory, sa[0], sa[1], family=fam,
                    ssl=ssl_ctx, server_hostname=server_hostname if ssl_ctx else None,
                )
            return tr, proto
        except TimeoutError:
            last = UpstreamTimeout(f"connect to {sa[0]} port {sa[1]} timed out")
        except ssl.SSLError as exc:
            last = UpstreamConnectError(f"TLS handshake with {sa[0]} failed: {exc.reason}")
        except OSError as exc:
            if exc.errno not in _EXHAUSTED:
                last = _connect_error(exc, sa)
                continue
            if not relieved and _relief is not None and _relief():
                relieved = True
                await asyncio.sleep(0)  # the closed sockets' descriptors are released
                i -= 1  # the same address once more
                continue
            _log_exhausted(loop, exc)
            last = _connect_error(exc, sa)
    if last is None:
        last = UpstreamTimeout("connect timed out")
    raise last


def _connect_error(exc: OSError, sa: tuple[Any, ...]) -> UpstreamConnectError:
    return UpstreamConnectError(f"connect to {sa[0]} port {sa[1]} failed: {exc.strerror or exc}")
