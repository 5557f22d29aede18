"""Forward cache hits and the destination rules judged on the address (``networks`` in
``forward.rules``, the SSRF guard): a hit for a request whose rules wait for the address
resolves the host and runs the post-resolve phases first, as a miss does before it dials,
so an entry stored before a ``deny: {networks: ...}`` rule came in by reload (or whose
name now resolves into a denied network) is refused, not served (Squid judges dst ACLs on
hits too).  Requests whose rules do not wait for the address are served as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.origin import answering, count, serve
from tests.helpers.procs import base_config, run_ferryman
from tests.helpers.rawhttp import assert_error_and_closed, exchange, proxy_request, raw_client
from tests.helpers.wait import json_lines, wait_for, wait_text
from tests.integration.test_cache_forward import versioned

CACHE = {"store": "memory"}
# Not judged before DNS for a name: the rules wait for localhost's address (127.0.0.1).
ELSEWHERE = [{"name": "not-here", "deny": {"networks": ["10.0.0.0/8"]}}]
LOOPBACK = [{"name": "no-loopback", "deny": {"networks": ["127.0.0.0/8", "::1/128"]}}]


def cache_status(resp: Any) -> list[str]:
    return (resp.header("cache-status") or "").split("; ")


CLOSE = {"Connection": "close"}


@pytest.mark.parametrize("dns_ttl", ["30s", "1ms"], ids=["address-known", "looked-up"])
def test_hit_is_judged_on_the_address_after_a_reload_adds_a_networks_deny(
    tmp_path: Path, dns_ttl: str
) -> None:
    """With the name in the resolver's cache the hit is judged at once; with ``dns.ttl: 1ms``
    it is looked up first (asynchronously), then judged."""
    dns = {"ttl": dns_ttl}
    with serve(answering(versioned)) as origin, run_ferryman(
        tmp_path, cache=CACHE, dns=dns, forward={"rules": ELSEWHERE}
    ) as fm:
        url = f"http://localhost:{origin.port}/page"
        with raw_client(fm.port) as c:
            first = c.request(proxy_request(url))
            second = c.request(proxy_request(url))  # the address passes the rules: a hit
        assert first.status == second.status == 200 and second.body == first.body
        assert "hit" in cache_status(second) and count(origin, "/page") == 1

        fm.write_config(base_config(fm.port, fm.log_path, cache=CACHE, dns=dns, forward={"rules": LOOPBACK}))
        fm.reload()
        wait_text(fm.stderr, "configuration reloaded")
        hit = exchange(fm.port, proxy_request(url, headers=CLOSE))
        assert_error_and_closed(hit, 403)
        assert b"(rule: no-loopback)" in hit.body and "hit" not in cache_status(hit)
        assert count(origin, "/page") == 1  # neither served from the cache nor fetched
        # exactly as a miss to the same host is refused
        miss = exchange(fm.port, proxy_request(f"http://localhost:{origin.port}/other", headers=CLOSE))
        assert_error_and_closed(miss, 403)
        assert miss.body == hit.body and count(origin, "/other") == 0

        def refusals() -> list[dict[str, Any]] | None:
            lines = [e for e in json_lines(fm.access_log()) if e["status"] == 403]
            return lines if len(lines) == 2 else None

        logged = wait_for(refusals, what="two 403 log lines")
        assert logged[0]["error"] == logged[1]["error"] != ""
        assert "no-loopback" in logged[0]["error"]


def test_hits_without_rules_on_the_address_are_served_as_before(tmp_path: Path) -> None:
    """No rule waits for the address (laptop mode, no networks rules): a hit is served
    as before."""
    with serve(answering(versioned)) as origin, run_ferryman(tmp_path, cache=CACHE) as fm:
        url = f"http://localhost:{origin.port}/plain"
        with raw_client(fm.port) as c:
            assert c.request(proxy_request(url)).status == 200
            again = c.request(proxy_request(url))
        assert "hit" in cache_status(again) and count(origin, "/plain") == 1
