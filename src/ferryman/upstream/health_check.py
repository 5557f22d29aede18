"""Active health checks: one task per checked upstream group (I/O outside the pure core).

Each round sends ``GET path`` to every server concurrently with a timeout and
feeds the verdict to the group's `ActiveHealth` counters (rise/fall).  The
probe is plain HTTP/1.1 with ``Connection: close``; any status in
``expect_status`` (default 2xx/3xx) counts as success.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic

from ferryman.upstream.group import UpstreamGroup, UpstreamServer

log = logging.getLogger("ferryman")


async def _probe(group: UpstreamGroup, server: UpstreamServer) -> bool:
    h = group.plan.health
    assert h is not None
    p = server.plan
    try:
        async with asyncio.timeout(h.timeout):
            reader, writer = await asyncio.open_connection(
                p.host, p.port, ssl=server.ssl, server_hostname=server.tls_name if server.ssl else None
            )
            try:
                writer.write(
                    b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ferryman-health\r\nConnection: close\r\n\r\n"
                    % (h.path.encode(), p.authority)
                )
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError):
        return False
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return False
    status = int(parts[1])
    return status in h.expect_status if h.expect_status else 200 <= status < 400


async def run_checks(group: UpstreamGroup) -> None:
    h = group.plan.health
    assert h is not None
    while True:
        results = await asyncio.gather(*(_probe(group, s) for s in group.servers))
        now = monotonic()
        for server, ok in zip(group.servers, results, strict=True):
            was = server.state.healthy
            group.observe_check(server, ok, now)
            if was != server.state.healthy:
                log.warning(
                    "ferryman: upstream %s server %s is %s",
                    group.plan.name, server.plan.address, "up" if server.state.healthy else "down",
                )
        await asyncio.sleep(h.interval)
