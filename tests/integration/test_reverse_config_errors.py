"""`ferryman check` on reverse-proxy configs: each error names its field path, exit non-zero."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.procs import ferryman_check, free_port, reverse_config, upstream

WEB = "http://127.0.0.1:9"


def _cfg(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return reverse_config(free_port(), tmp_path / "access.log", **overrides)


def test_unknown_upstream_in_a_route(tmp_path: Path) -> None:
    out = ferryman_check(tmp_path, _cfg(tmp_path, routes=[{"upstream": "nope"}],
                                        upstreams={"web": upstream(WEB)}))
    assert out.returncode != 0
    assert "routes[0].upstream: unknown upstream 'nope' (known: web)" in out.stderr
    assert "OK" not in out.stdout


def test_weight_zero_names_the_server(tmp_path: Path) -> None:
    ups = {"web": {"servers": [{"url": WEB, "weight": 0}]}}
    out = ferryman_check(tmp_path, _cfg(tmp_path, routes=[{"upstream": "web"}], upstreams=ups))
    assert out.returncode != 0
    assert "upstreams.web.servers[0].weight:" in out.stderr


@pytest.mark.parametrize(
    ("routes", "upstreams", "expected"),
    [
        ([{"upstream": "web", "respond": {"body": "x"}}], {"web": upstream(WEB)}, "routes[0]: a route needs"),
        ([{"match": {"path_regex": "(unclosed"}, "respond": {}}], {}, "routes[0].match.path_regex:"),
        ([{"match": {"path_prefix": "api"}, "respond": {}}], {}, "routes[0].match.path_prefix:"),
        ([{"upstream": "web"}], {"web": {"servers": [{"url": "ftp://127.0.0.1:21"}]}},
         "upstreams.web.servers[0].url:"),
        ([{"upstream": "web"}], {"web": upstream(WEB, balance="hash")}, "upstreams.web: balance 'hash'"),
        ([], {}, "routes: a reverse listener needs at least one route"),
    ],
)
def test_other_errors_are_named(
    tmp_path: Path, routes: list[Any], upstreams: dict[str, Any], expected: str
) -> None:
    out = ferryman_check(tmp_path, _cfg(tmp_path, routes=routes, upstreams=upstreams))
    assert out.returncode != 0
    assert expected in out.stderr, out.stderr


def test_valid_reverse_config_passes(tmp_path: Path) -> None:
    ups = {"web": {"servers": [{"url": WEB, "weight": 3}, {"url": "http://127.0.0.1:10", "backup": True}],
                   "balance": "hash", "hash_key": {"header": "X-User"},
                   "health": {"path": "/health", "interval": "200ms", "rise": 2, "fall": 2}}}
    out = ferryman_check(tmp_path, _cfg(tmp_path, routes=[{"upstream": "web"}], upstreams=ups))
    assert out.returncode == 0, out.stderr
    assert "OK (1 listener)" in out.stdout
