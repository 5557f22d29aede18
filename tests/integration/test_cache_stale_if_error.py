"""stale-if-error (RFC 5861) answers an origin failure, never one of ferryman's refusals.

A forward proxy with a memory cache stores entries that must be validated on every use
(``max-age=0`` and an ``ETag``) and may be served stale on error for ten minutes; then
the origin goes away.  Each revalidation then:

- cannot connect (502): the stale entry answers, and the access log says why;
- after a reload that makes the origin's port ferryman's own (its admin API), would loop
  back into ferryman: refused with 508 once the name is resolved, as a miss would be;
- after a reload that adds a rule denying loopback networks: refused with 403 once the
  name is resolved, as a miss would be.

A refusal is answered as the refusal, never hidden by the stale entry: stale-if-error
covers an origin that is down or failing (`FerrymanError.origin_failure`), not a request
ferryman will not send.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.helpers.origin import Origin, answering, count, path_of, response, serve
from tests.helpers.procs import Ferryman, base_config, run_ferryman
from tests.helpers.rawhttp import Response, assert_error_and_closed, exchange, proxy_request
from tests.helpers.wait import json_lines, wait_for

CACHE = {"store": "memory"}
CLOSE = {"Connection": "close"}
# No rule decides on the name: the rules wait for localhost's address (127.0.0.1).
ELSEWHERE = [{"name": "not-here", "deny": {"networks": ["10.0.0.0/8"]}}]
LOOPBACK = [{"name": "no-loopback", "deny": {"networks": ["127.0.0.0/8", "::1/128"]}}]


async def must_validate(origin: Origin, head: bytes, writer: asyncio.StreamWriter) -> None:
    """Stale at once, validated on every use, servable stale on error for ten minutes."""
    path = path_of(head)
    headers = {"Cache-Control": "max-age=0, stale-if-error=600", "ETag": '"v1"'}
    writer.write(response(200, f"{path} #{count(origin, path)}".encode(), headers))
    await writer.drain()


def get(fm: Ferryman, url: str) -> Response:
    return exchange(fm.port, proxy_request(url, headers=CLOSE))


def logged(fm: Ferryman, url: str) -> dict[str, Any]:
    """The access-log line of the last request for ``url`` (the store's is the first)."""

    def second() -> dict[str, Any] | None:
        lines = [e for e in json_lines(fm.access_log()) if e["target"] == url]
        return lines[1] if len(lines) > 1 else None

    return wait_for(second, what=f"a second access-log line for {url}")


def reload(fm: Ferryman, times: int, **overrides: Any) -> None:
    fm.write_config(base_config(fm.port, fm.log_path, cache=CACHE, **overrides))
    fm.reload()
    wait_for(lambda: fm.stderr().count("configuration reloaded") >= times or None,
             what=f"reload #{times}")


def test_stale_if_error_answers_a_down_origin_but_never_a_refusal(tmp_path: Path) -> None:
    with run_ferryman(tmp_path, cache=CACHE, forward={"rules": ELSEWHERE}) as fm:
        with serve(answering(must_validate)) as origin:
            port = origin.port
            urls = {name: f"http://localhost:{port}/{name}" for name in ("down", "loop", "denied")}
            for name, url in urls.items():
                first = get(fm, url)
                assert first.status == 200 and first.body == f"/{name} #1".encode()
                assert "stored" in (first.header("cache-status") or ""), first.raw[:300]
        # The origin is gone: the revalidation cannot connect, and the stale entry answers.
        stale = get(fm, urls["down"])
        assert stale.status == 200 and stale.body == b"/down #1", stale.raw[:300]
        line = logged(fm, urls["down"])
        assert line["cache"] == "stale-if-error" and "Connection refused" in line["error"]

        # The origin's port is now ferryman's own admin API: the revalidation would loop.
        reload(fm, 1, forward={"rules": ELSEWHERE}, admin={"listen": f"127.0.0.1:{port}"})
        loop = get(fm, urls["loop"])
        assert_error_and_closed(loop, 508)
        assert b"aimed at ferryman itself" in loop.body
        line = logged(fm, urls["loop"])
        assert line["status"] == 508 and line["cache"] != "stale-if-error"

        # A rule now denies the origin's network: the revalidation is refused after DNS.
        reload(fm, 2, forward={"rules": LOOPBACK})
        denied = get(fm, urls["denied"])
        assert_error_and_closed(denied, 403)
        assert b"(rule: no-loopback)" in denied.body
        line = logged(fm, urls["denied"])
        assert line["status"] == 403 and line["cache"] != "stale-if-error"
        # The refusal dropped nothing: once the rules allow the origin again, its stale entry answers.
        reload(fm, 3, forward={"rules": ELSEWHERE})
        again = get(fm, urls["denied"])
        assert again.status == 200 and again.body == b"/denied #1", again.raw[:300]
