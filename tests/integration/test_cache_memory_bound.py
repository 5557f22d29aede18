"""``cache.max_size`` bounds the memory a memory cache really uses (issue 9.1).

100,000 distinct small objects (one 17-byte file from nginx under distinct query
strings, each stored) through a reverse route with ``cache: {store: memory, max_size:
8MiB}``: ferryman's peak RSS, read from /proc while the load runs, stays within
max_size plus a constant (32 MiB, documented in the README) of its idle RSS.  Before,
headers, keys and the per-process index were not counted and never evicted: RSS grew
by about 3 KiB per object (over 250 MiB here).

The load is wrk over 32 keep-alive connections, with a script giving every request a
distinct URL and stopping once 100,000 answers are in.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.cache_integ import admin_cache, reverse_cache_config
from tests.helpers.procs import RssSampler, free_port, run_ferryman, run_nginx
from tests.helpers.wait import wait_for

OBJECTS = 100_000
THREADS = 2
MAX_SIZE_MIB = 8
SLACK_MIB = 32  # the constant the README promises on top of max_size

DISTINCT_LUA = """
local counter, n, done = 0, 0, 0
setup = function(thread) thread:set("tid", n); n = n + 1 end
init = function(args) target = tonumber(args[1]) end
request = function()
  counter = counter + 1
  return wrk.format("GET", "/small?t=" .. tid .. "&i=" .. counter, {Host = "site.test"})
end
response = function(status, headers, body)
  done = done + 1
  if done >= target then wrk.thread:stop() end
end
"""


@pytest.mark.timeout(330)  # about 30 s alone; the margin is for a machine busy with other tests
def test_memory_cache_rss_stays_within_max_size_after_100k_distinct_objects(tmp_path: Path) -> None:
    with run_nginx(tmp_path / "nginx") as nginx:
        month_ago = time.time() - 30 * 86400
        os.utime(nginx.root / "small", (month_ago, month_ago))  # heuristic freshness: stored
        (tmp_path / "fm").mkdir()
        admin = free_port()
        cfg = reverse_cache_config(
            free_port(), admin, nginx.url, cache={"store": "memory", "max_size": f"{MAX_SIZE_MIB}MiB"}
        )
        cfg["access_log"] = {"enabled": False}
        with run_ferryman(tmp_path / "fm", **cfg) as fm:
            first = httpx.get(f"{fm.proxy}/small?warm", headers={"Host": "site.test"}, timeout=10,
                              trust_env=False)
            assert first.status_code == 200 and "stored" in first.headers["cache-status"]
            script = tmp_path / "distinct.lua"
            script.write_text(DISTINCT_LUA)
            with RssSampler(fm, interval=0.05) as rss:
                wrk = subprocess.Popen(
                    ["wrk", f"-t{THREADS}", "-c32", "-d300s", "--timeout", "60s", "-s", str(script),
                     fm.proxy, "--", str(OBJECTS // THREADS)],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                )
                try:
                    # Each wrk thread stops at its share, but wrk waits out -d: interrupt it
                    # (it prints its summary) once the cache has seen every request.
                    wait_for(lambda: admin_cache(admin)["misses"] >= OBJECTS, 290,
                             "every request at the cache", interval=0.2)
                    wrk.send_signal(signal.SIGINT)
                    out, _ = wrk.communicate(timeout=20)
                finally:
                    if wrk.poll() is None:
                        wrk.kill()
                        wrk.wait()
            done = re.search(r"(\d+) requests in", out)
            assert done is not None and int(done.group(1)) >= OBJECTS, out
            assert "Non-2xx" not in out and "Socket errors" not in out, out
            stats = admin_cache(admin)
            assert stats["misses"] >= OBJECTS  # every object was fetched, and offered to the store
            # still caching: a new object is stored and then hit (the oldest ones made room)
            fresh = f"{fm.proxy}/small?after"
            first = httpx.get(fresh, headers={"Host": "site.test"}, timeout=10, trust_env=False)
            again = httpx.get(fresh, headers={"Host": "site.test"}, timeout=10, trust_env=False)
            assert "stored" in first.headers["cache-status"] and "hit" in again.headers["cache-status"]
            growth = rss.growth_mib
            assert growth <= MAX_SIZE_MIB + SLACK_MIB, (
                f"RSS grew {growth:.1f} MiB over idle {rss.baseline / 1024:.1f} MiB "
                f"({stats['keys']} keys); bound {MAX_SIZE_MIB} + {SLACK_MIB} MiB"
            )
