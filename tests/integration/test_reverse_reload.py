"""Reload of a reverse proxy under traffic: a SIGHUP with an added route loses no request
and the route works afterwards; an invalid file keeps the old config serving."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.helpers.origin import backends
from tests.helpers.procs import reverse_config, run_reverse, upstream
from tests.helpers.wait import wait_for

OLD_ROUTES = [{"name": "main", "match": {"path_prefix": "/"}, "upstream": "web"}]
NEW_ROUTES = [{"name": "new", "match": {"path_prefix": "/new"}, "upstream": "beta"}, *OLD_ROUTES]


def test_sighup_under_keep_alive_traffic_loses_nothing(tmp_path: Path) -> None:
    with backends("web", "beta") as (web, beta):
        ups = {"web": upstream(web.url), "beta": upstream(beta.url)}
        with run_reverse(tmp_path, routes=OLD_ROUTES, upstreams=ups) as fm:
            failures: list[str] = []
            new_answers: list[str] = []
            reloaded_at = None
            deadline = time.monotonic() + 20
            i = 0
            with httpx.Client(base_url=fm.proxy, trust_env=False, timeout=10) as c:
                # At least 300 requests, and on until the new route answers: the reload
                # is sure to have happened while this connection was busy.
                while i < 300 or not new_answers or new_answers[-1] != "beta":
                    assert time.monotonic() < deadline, "reload never took effect"
                    if i == 50:
                        new = reverse_config(fm.port, fm.log_path, routes=NEW_ROUTES, upstreams=ups)
                        fm.write_config(new)
                        fm.reload()
                        reloaded_at = i
                    try:
                        r = c.get(f"/old/{i}")
                        if (r.status_code, r.text) != (200, "web"):
                            failures.append(f"{i}: {r.status_code} {r.text!r}")
                        if reloaded_at is not None and i % 5 == 0:
                            r = c.get("/new/thing")
                            assert r.status_code == 200
                            new_answers.append(r.text)
                    except httpx.HTTPError as exc:
                        failures.append(f"{i}: {exc!r}")
                    i += 1
            assert failures == []
            assert i >= 300
            # Once the new route answered, it kept answering (the old Plan never came back).
            first = new_answers.index("beta")
            assert set(new_answers[:first]) <= {"web"} and set(new_answers[first:]) == {"beta"}
            assert beta.last().target == "/new/thing"
            assert "configuration reloaded" in fm.stderr()


def test_invalid_config_on_reload_keeps_the_old_one(tmp_path: Path) -> None:
    with backends("web", "beta") as (web, beta):
        ups = {"web": upstream(web.url), "beta": upstream(beta.url)}
        with run_reverse(tmp_path, routes=NEW_ROUTES, upstreams=ups) as fm:
            with httpx.Client(base_url=fm.proxy, trust_env=False, timeout=10) as c:
                assert c.get("/new/x").text == "beta"
                bad = [{"name": "broken", "upstream": "nowhere"}]
                fm.write_config(reverse_config(fm.port, fm.log_path, routes=bad, upstreams=ups))
                fm.reload()
                wait_for(lambda: "reload refused" in fm.stderr(), what="reload refused in the log")
                assert "routes[0].upstream: unknown upstream 'nowhere'" in fm.stderr()
                # The old routes still serve, on the same connection and on new ones.
                assert [c.get("/new/x").text, c.get("/y").text] == ["beta", "web"]
                assert httpx.get(f"{fm.proxy}/new/z", trust_env=False, timeout=10).text == "beta"

                # A later valid file is taken again.
                fm.write_config(reverse_config(fm.port, fm.log_path, routes=OLD_ROUTES, upstreams=ups))
                fm.reload()
                wait_for(lambda: c.get("/new/x").text == "web", what="valid reload after a refused one")
            assert fm.proc.poll() is None
