"""Issue 7.9: path-based routes cannot be bypassed, and the backend gets the path that was matched.

A route ``path_prefix: /admin`` answers 403; everything else goes to a
recording backend.  Every spelling that some backend turns into ``/admin`` must
either hit the admin route or be refused with 400, and whatever does reach the
backend is the normal form ferryman routed on (raw-socket transcripts).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.origin import Backend, backends
from tests.helpers.procs import Ferryman, run_reverse, upstream
from tests.helpers.rawhttp import connect, parse_response, read_to_eof


@pytest.fixture(scope="module")
def app() -> Iterator[Backend]:
    with backends("app") as (b,):
        yield b


DENY = {"status": 403, "body": "admin denied"}


def _routes(options: bool = True) -> list[dict[str, object]]:
    """The routes; ``options=False`` leaves out the route options (the plain config, which
    older versions also accept: the bypass tests then fail on behaviour, not on config)."""
    extra: list[dict[str, object]] = [
        {"name": "java-admin", "match": {"host": "java.test", "path_prefix": "/admin",
                                         "ignore_matrix_params": True}, "respond": DENY},
        {"name": "ci-admin", "match": {"host": "ci.test", "path_prefix": "/admin", "case_sensitive": False},
         "respond": DENY},
    ]
    return [
        {"name": "admin", "match": {"host": "site.test", "path_prefix": "/admin"}, "respond": DENY},
        *(extra if options else []),
        {"name": "back", "match": {"path_prefix": "/back"}, "redirect": {"to": "https://new.test{uri}"}},
        {"name": "all", "upstream": "app"},
    ]


def _proxy(tmp_path_factory: pytest.TempPathFactory, app: Backend, options: bool = True,
           **reverse: object) -> Iterator[Ferryman]:
    with run_reverse(tmp_path_factory.mktemp("paths"), routes=_routes(options),
                     upstreams={"app": upstream(app.url)}, **({"reverse": reverse} if reverse else {})) as fm:
        yield fm


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory, app: Backend) -> Iterator[Ferryman]:
    yield from _proxy(tmp_path_factory, app, options=False)


@pytest.fixture(scope="module")
def options(tmp_path_factory: pytest.TempPathFactory, app: Backend) -> Iterator[Ferryman]:
    yield from _proxy(tmp_path_factory, app)


@pytest.fixture(scope="module")
def decoding(tmp_path_factory: pytest.TempPathFactory, app: Backend) -> Iterator[Ferryman]:
    yield from _proxy(tmp_path_factory, app, escaped_slashes="decode")


@pytest.fixture(scope="module")
def keeping(tmp_path_factory: pytest.TempPathFactory, app: Backend) -> Iterator[Ferryman]:
    yield from _proxy(tmp_path_factory, app, escaped_slashes="keep", merge_slashes=False)


def _get(fm: Ferryman, target: str, host: str = "site.test") -> tuple[int, bytes]:
    s = connect(fm.port)
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    raw, _ = read_to_eof(s)
    s.close()
    r = parse_response(raw)
    return r.status, r.body


BYPASSES = ["//admin", "///admin", "/x//../admin", "/%2Fadmin", "/admin%2f", "/x/..%2fadmin", "/admin%00",
            "/./admin", "/%61dmin/", "/x/%2e%2e/admin", "/x\\..\\admin", "/admin/.", "/x/../admin?q=1"]


@pytest.mark.parametrize("target", BYPASSES)
def test_no_spelling_of_admin_reaches_the_backend(default: Ferryman, app: Backend, target: str) -> None:
    before = app.count()
    status, body = _get(default, target)
    assert status in (403, 400), (status, body)
    assert app.count() == before
    if status == 403:
        assert body == b"admin denied"


@pytest.mark.parametrize(
    ("target", "status"),
    [("/%2Fadmin", 400), ("/admin%2f", 400), ("/x/..%2fadmin", 400), ("/admin%00", 400), ("/a%0d%0ab", 400),
     ("/a%zz", 400), ("//admin", 403), ("/x//../admin", 403)],
)
def test_status_by_default(default: Ferryman, target: str, status: int) -> None:
    assert _get(default, target)[0] == status


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/plain/path?x=1", "/plain/path?x=1"),
        ("//static//app.js", "/static/app.js"),
        ("/a/./b/../c?next=/x/../y%2F", "/a/c?next=/x/../y%2F"),  # the query is never touched
        ("/%7euser/%41", "/~user/A"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/x\\y", "/x/y"),
        ("/admin;x", "/admin;x"),  # a route without ignore_matrix_params: the backend gets it as is
        ("/ADMIN", "/ADMIN"),  # case-sensitive by default
    ],
)
def test_backend_gets_the_normal_form(default: Ferryman, app: Backend, target: str, forwarded: str) -> None:
    status, _ = _get(default, target)
    assert status == 200
    assert app.last().target == forwarded


def test_redirect_gets_the_normal_form(default: Ferryman) -> None:
    s = connect(default.port)
    s.sendall(b"GET /back//x/../y?q=1 HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
    raw, _ = read_to_eof(s)
    s.close()
    r = parse_response(raw)
    assert r.status == 301 and r.header("location") == "https://new.test/back/y?q=1"


@pytest.mark.parametrize("target", ["/admin;x", "/admin;jsessionid=1/users", "//admin;x"])
def test_matrix_params_route_option(options: Ferryman, app: Backend, target: str) -> None:
    before = app.count()
    assert _get(options, target, host="java.test")[0] == 403
    assert app.count() == before


@pytest.mark.parametrize("target", ["/ADMIN", "/Admin/users", "//aDmIn"])
def test_case_insensitive_route_option(options: Ferryman, app: Backend, target: str) -> None:
    before = app.count()
    assert _get(options, target, host="ci.test")[0] == 403
    assert app.count() == before


@pytest.mark.parametrize("target", ["/%2Fadmin", "/admin%2f", "/x/..%2fadmin", "/x/..%5cadmin"])
def test_escaped_slashes_decode(decoding: Ferryman, app: Backend, target: str) -> None:
    before = app.count()
    assert _get(decoding, target)[0] == 403
    assert app.count() == before


def test_escaped_slashes_decode_forwards_the_decoded_path(decoding: Ferryman, app: Backend) -> None:
    assert _get(decoding, "/files%2Fa%2fb")[0] == 200
    assert app.last().target == "/files/a/b"


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [("/files%2fa", "/files%2Fa"), ("/x/..%2fadmin", "/x/..%2Fadmin"), ("//x", "//x")],
)
def test_escaped_slashes_keep(keeping: Ferryman, app: Backend, target: str, forwarded: str) -> None:
    """keep: %2F is one opaque character, matched and forwarded as such; merge_slashes off."""
    assert _get(keeping, target)[0] == 200
    assert app.last().target == forwarded


def test_control_characters_refused_whatever_the_slash_policy(keeping: Ferryman, decoding: Ferryman) -> None:
    assert _get(keeping, "/admin%00")[0] == 400
    assert _get(decoding, "/a%0a")[0] == 400
