"""The ACL language on a real forward proxy (issue 12 item 2): path, header, time, port
range, default and message conditions, judged on what reached a recording origin; and
what `ferryman check` says about the rules."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers.origin import Origin, canned, serve
from tests.helpers.procs import Ferryman, base_config, run_ferryman
from tests.helpers.rawhttp import assert_error_and_closed, exchange

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
TODAY = time.strftime("%a", time.gmtime()).lower()
OTHER_DAY = {"mon": "tue"}.get(TODAY, "mon")


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with serve(canned(OK)) as o:
        yield o


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[Ferryman]:
    rules = [
        {"name": "no-admin", "deny": {"path_prefix": ["/admin"]}, "message": "Admin pages are off limits"},
        {"name": "no-php", "deny": {"path_regex": [r"\.php$"]}},
        {"name": "no-bot", "deny": {"headers": {"User-Agent": "(?i)badbot"}}},
        {"name": "no-debug", "deny": {"headers": {"X-Debug": True}}},
        {"name": "not-today", "deny": {"time": {"days": [TODAY], "tz": "UTC"}, "methods": ["DELETE"]}},
        {"name": "other-day", "deny": {"time": {"days": [OTHER_DAY], "tz": "UTC"}, "methods": ["PUT"]}},
        {"name": "high-ports", "deny": {"ports": ["40000-40010"]}},
        {"name": "lo", "allow": {"domains": ["localhost", "127.0.0.1"]}},
    ]
    fwd = {"rules": rules, "default": "deny", "connect_ports": [443, origin.port]}
    with run_ferryman(tmp_path_factory.mktemp("rules"), forward=fwd) as fm:
        yield fm


def _get(
    origin: Origin, path: str, method: str = "GET", extra: str = "", host: str = "127.0.0.1"
) -> bytes:
    url = f"http://{host}:{origin.port}{path}"
    return f"{method} {url} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()


def _refused(proxy: Ferryman, origin: Origin, req: bytes, rule: str) -> bytes:
    before = len(origin.requests)
    resp = exchange(proxy.port, req)
    assert_error_and_closed(resp, 403)
    assert f"(rule: {rule})".encode() in resp.body, resp.body
    assert len(origin.requests) == before, "the request reached the origin"
    return resp.body


def _passed(proxy: Ferryman, origin: Origin, req: bytes) -> bytes:
    before = len(origin.requests)
    resp = exchange(proxy.port, req)
    assert (resp.status, resp.body) == (200, b"ok")
    assert len(origin.requests) == before + 1
    return origin.requests[-1]


@pytest.mark.parametrize(
    "path",
    ["/admin", "/admin/users", "//admin", "/x/../admin", "/./admin", "/%61dmin", "/admin;jsessionid=1",
     "/a%2F..%2Fadmin", "/admin?x=1", "/ADMIN/../admin"],
)
def test_a_path_rule_sees_the_normalised_path(proxy: Ferryman, origin: Origin, path: str) -> None:
    body = _refused(proxy, origin, _get(origin, path), "no-admin")
    assert b"Admin pages are off limits" in body  # the rule's message


def test_paths_outside_the_rule_pass_as_sent(proxy: Ferryman, origin: Origin) -> None:
    seen = _passed(proxy, origin, _get(origin, "/public/./page?admin=1"))
    assert seen.startswith(b"GET /public/./page?admin=1 HTTP/1.1\r\n")  # forwarded as the client wrote it
    _refused(proxy, origin, _get(origin, "/index.php"), "no-php")
    _passed(proxy, origin, _get(origin, "/page.html?next=index.php"))  # the query is not the path


def test_an_invalid_escape_is_a_400_when_a_rule_tests_the_path(proxy: Ferryman, origin: Origin) -> None:
    before = len(origin.requests)
    assert_error_and_closed(exchange(proxy.port, _get(origin, "/%zz")), 400)
    assert len(origin.requests) == before


def test_header_conditions(proxy: Ferryman, origin: Origin) -> None:
    _refused(proxy, origin, _get(origin, "/", extra="User-Agent: x BadBot/1.0\r\n"), "no-bot")
    _refused(proxy, origin, _get(origin, "/", extra="X-Debug: 0\r\n"), "no-debug")
    _passed(proxy, origin, _get(origin, "/", extra="User-Agent: curl/8\r\n"))


def test_time_and_day_conditions(proxy: Ferryman, origin: Origin) -> None:
    _refused(proxy, origin, _get(origin, "/t", method="DELETE"), "not-today")
    _passed(proxy, origin, _get(origin, "/t", method="PUT"))  # that rule holds on another day


def test_port_range_and_default_deny(proxy: Ferryman, origin: Origin) -> None:
    req = b"GET http://127.0.0.1:40005/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    _refused(proxy, origin, req, "high-ports")
    # no rule allows this name: the default (deny) decides, before DNS
    _refused(proxy, origin, _get(origin, "/", host="unknown.test"), "forward.default")


def test_connect_has_no_path(proxy: Ferryman, origin: Origin) -> None:
    # a path rule never matches a CONNECT; the allow rule for the host does
    with exchange_connect(proxy, origin) as head:
        assert head.startswith(b"HTTP/1.1 200")


class exchange_connect:  # noqa: N801 - a context manager read as a verb
    def __init__(self, proxy: Ferryman, origin: Origin) -> None:
        from tests.helpers.rawhttp import connect, read_head

        self.sock = connect(proxy.port)
        target = f"127.0.0.1:{origin.port}".encode()
        self.sock.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
        self.head, _ = read_head(self.sock)

    def __enter__(self) -> bytes:
        return self.head

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# -- ferryman check ---------------------------------------------------------------------------------


def _check(tmp_path: Path, forward: dict[str, object]) -> subprocess.CompletedProcess[str]:
    cfg = base_config(3128, tmp_path / "access.log", forward=forward)
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "ferryman", "check", "-c", str(path)],
        capture_output=True, text=True, timeout=30,
    )


def test_check_reports_shadowed_rules_and_the_laptop_note(tmp_path: Path) -> None:
    rules = [
        {"name": "ads", "deny": {"domains": [".ads.example"]}},
        {"name": "tracker", "deny": {"domains": ["x.ads.example"], "ports": [80]}},
        {"allow": {}},
        {"name": "never", "deny": {"methods": ["POST"]}},
    ]
    out = _check(tmp_path, {"rules": rules, "clients": ["10.0.0.0/8"]})
    assert out.returncode == 0, out.stderr
    assert "forward.rules[1] (tracker) can never match: forward.rules[0] (ads)" in out.stdout
    assert "forward.rules[3] (never) can never match: forward.rules[2]" in out.stdout
    assert "forward.clients holds non-loopback networks" in out.stdout
    quiet = _check(tmp_path, {"rules": rules[:1]})
    assert quiet.returncode == 0 and "note:" not in quiet.stdout, quiet.stdout


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"deny": {"path_regex": ["(unclosed"]}}, "forward.rules[0].deny.path_regex[0]: invalid regular"),
        ({"deny": {"domain_regex": ["*x"]}}, "forward.rules[0].deny.domain_regex[0]: invalid regular"),
        ({"deny": {"time": {"from": "25:00"}}}, "forward.rules[0].deny.time.from: expected a time of day"),
        ({"deny": {"time": {"tz": "Mars/Olympus"}}}, "forward.rules[0].deny.time.tz: unknown time zone"),
        ({"deny": {"domains_file": "missing.txt"}}, "forward.rules[0].deny.domains_file: cannot read "),
        ({"deny": {"headers": {"X-A": "("}}}, "forward.rules[0].deny.headers.X-A: invalid regular"),
        ({"deny": {"ports": ["9-2"]}}, "forward.rules[0].deny.ports[0]: expected a port"),
        ({"deny": {"users": ["bob"]}}, "forward.rules: a rule asks for or names users, but forward.auth"),
    ],
)
def test_check_names_the_field_of_a_bad_rule(tmp_path: Path, rule: dict[str, object], field: str) -> None:
    out = _check(tmp_path, {"rules": [rule]})
    assert out.returncode == 2, out.stdout
    assert field in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
