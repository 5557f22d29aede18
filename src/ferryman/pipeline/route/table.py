"""The reverse proxy's route table (pure): (Host, method, path, headers) -> Route.

Rules this module owns, in the order lookup applies them:

1. **Host class.**  Routes are grouped by how specifically they name the host:
   an exact host (``api.example.com``) beats a wildcard (``*.example.com``), a
   longer wildcard suffix beats a shorter one (``*.eu.example.com`` before
   ``*.example.com``), and every host route beats a host-less route (empty
   ``hosts``, which matches any Host, including none).
2. **Path condition**, within one host class, nginx's ``location`` order:
   ``path_exact`` first, then ``path_prefix`` longest first, then ``path_regex``
   in config order, then routes with no path condition.
3. **Config order** breaks any remaining tie.

Method and header conditions are filters, not ranks: a candidate that fails
them is skipped and the next one by the order above is tried, **across host
classes too** (a flat list, as Traefik and Caddy behave, not nginx/Envoy
virtual hosts): ``api.example.com`` with only a ``/v1`` route still reaches a
host-less catch-all for ``/v2``.  Give a host its own catch-all to fence it in.
No candidate left -> ``None`` (the engine answers 404).

Matching semantics, chosen here and tested:

* Hosts compare case-insensitively, without the ``:port`` of the Host value and
  without one trailing dot.  ``*.example.com`` matches one **or more** labels in
  front (``a.example.com``, ``a.b.example.com``) but not ``example.com`` itself,
  the same as the forward ACL's ``DomainSet`` and as nginx.
* ``path_prefix`` is **segment-aware**: ``/api`` matches ``/api`` and ``/api/x``
  but not ``/apix`` (nginx's plain prefix would).  A prefix that ends in ``/``
  (``/api/``) matches what starts with it, so not ``/api`` itself.
* Paths are matched in normal form.  The reverse router hands over the path
  `paths.normalize` made (the one it forwards) with ``normal=True``; other
  callers get RFC 3986 6.2.2 normal form (``normalize_path``): escapes of
  unreserved characters decoded (``%61`` -> ``a``), other escapes upper-cased,
  dot-segments removed.  The query never takes part.  Regexes see the same
  normal form, decoded as latin-1, and use ``re.match`` (anchored at the start
  only; add ``$`` to anchor the end).
* Two per-route options change what that route compares, not what is
  forwarded: ``case_sensitive=False`` compares paths lower-cased (a regex gets
  ``re.IGNORECASE``), ``ignore_matrix_params=True`` compares them with every
  segment's ``;params`` cut off (``/admin;jsessionid=1`` is ``/admin``), as
  servlet containers route.  Precedence (rule 2) is unchanged across them.
* Methods compare case-sensitively (RFC 9110 9.1).  A header condition
  ``(name, value)`` holds when any field of that name has exactly that value
  (after trimming whitespace); ``(name, None)`` holds when the field is present.

Everything is compiled at construction: hosts go into dicts (exact host ->
group, wildcard suffix -> group), paths into dicts (exact path, prefix), regexes
are compiled once.  A lookup costs one dict probe for the host, one per label
for wildcards, one per path segment for prefixes, and regex work only for the
regex routes of the host classes it reaches.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ferryman.pipeline.route.paths import remove_dot_segments, strip_matrix

A = TypeVar("A")

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """Conditions of one route; all given conditions must hold.

    At most one path condition per route: its rank (rule 2) would otherwise be
    ambiguous.  Invalid input raises ``ValueError`` so the config compiler can
    attach the field path.
    """

    hosts: tuple[str, ...] = ()
    path_prefix: str | None = None
    path_exact: str | None = None
    path_regex: str | None = None
    methods: frozenset[str] = frozenset()
    headers: tuple[tuple[str, str | None], ...] = ()
    case_sensitive: bool = True
    ignore_matrix_params: bool = False
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        paths = [p for p in (self.path_prefix, self.path_exact, self.path_regex) if p is not None]
        if len(paths) > 1:
            raise ValueError("a route takes one of path_prefix, path_exact, path_regex")
        if self.path_prefix is not None and not self.path_prefix.startswith("/"):
            raise ValueError(f"path_prefix must start with '/': {self.path_prefix!r}")
        for h in self.hosts:
            _host_key(h)  # validates
        if self.path_regex is not None:
            try:
                flags = 0 if self.case_sensitive else re.IGNORECASE
                object.__setattr__(self, "_regex", re.compile(self.path_regex, flags))
            except re.error as e:
                raise ValueError(f"invalid path_regex {self.path_regex!r}: {e}") from None
        object.__setattr__(self, "methods", frozenset(self.methods))
        object.__setattr__(
            self,
            "headers",
            tuple((n.strip().lower(), None if v is None else v.strip()) for n, v in self.headers),
        )


@dataclass(frozen=True, slots=True)
class Route(Generic[A]):
    """A named match plus an action the table never looks at (the engine's)."""

    name: str
    match: RouteMatch
    action: A


def normalize_path(path: bytes) -> bytes:
    """RFC 3986 6.2.2 normal form of an origin-form path (no query).

    Cheap when there is nothing to do (no ``%``, no ``/.``), which is the usual
    case.  A path that does not start with ``/`` (``*``) is returned unchanged.
    """
    if not path.startswith(b"/"):
        return path
    if b"%" in path:
        path = _ESCAPE.sub(_unescape, path)
    if b"/." not in path:
        return path
    return remove_dot_segments(path)


def _unescape(m: re.Match[bytes]) -> bytes:
    byte = int(m.group(1), 16)
    return bytes((byte,)) if byte in _UNRESERVED else b"%" + m.group(1).upper()


def _config_path(path: str) -> str:
    """A configured path in the form request paths are compared in."""
    return normalize_path(path.encode("utf-8")).decode("latin-1")


def _host_key(pattern: str) -> tuple[bool, str]:
    """Configured host -> (is_wildcard, key); a wildcard's key is its ``.suffix``."""
    h = pattern.strip().lower().removesuffix(".")
    if h.startswith("*."):
        suffix = h[1:]
        if len(suffix) < 2 or "*" in suffix or ".." in suffix:
            raise ValueError(f"invalid wildcard host {pattern!r}")
        return True, suffix
    if not h or "*" in h or ".." in h or h.startswith("."):
        raise ValueError(f"invalid host {pattern!r} (use an empty host list to match any host)")
    return False, h


_HOSTS: dict[bytes | str, str] = {}  # a bounded memo of the Host values seen last
_HOSTS_MAX = 4096


def request_host(host: bytes | str | None) -> str | None:
    """The Host value as routes compare it: lower-case, no port, no trailing dot.
    Remembered for the values seen last (a site is asked for under a few spellings)."""
    if host is None:
        return None
    got = _HOSTS.get(host)
    if got is None:
        got = _request_host(host)
        if got is None:
            return None
        if len(_HOSTS) >= _HOSTS_MAX:
            _HOSTS.clear()
        _HOSTS[host] = got
    return got


def _request_host(host: bytes | str) -> str | None:
    h = host.decode("latin-1") if isinstance(host, bytes) else host
    h = h.strip().lower()
    if h.startswith("["):  # IPv6 literal: the port comes after "]"
        end = h.find("]")
        h = h[: end + 1] if end != -1 else h
    else:
        h = h.partition(":")[0]
    return h.removesuffix(".") or None


_View = tuple[bool, bool]  # (case-insensitive, matrix params ignored)
_PLAIN: _View = (False, False)


def _view_of(m: RouteMatch) -> _View:
    return (not m.case_sensitive, m.ignore_matrix_params)


def _in_view(path: str, view: _View) -> str:
    """The path as routes of ``view`` compare it (a regex gets IGNORECASE instead of lower())."""
    if view[1]:
        path = strip_matrix(path)
    if view[0]:
        path = path.lower()
    return path


class _PathIndex(Generic[A]):
    """Routes of one host class, ordered by rule 2 and then config order.

    Routes whose options change the compared path (``_View``) are kept by view;
    when a view other than the plain one is present the candidates of all views
    are merged back into rule-2 order (the rare case: only then is anything
    sorted).  The plain case reads two dicts kept as attributes.
    """

    __slots__ = ("exact", "prefix", "regex", "anypath", "views", "seq", "_exact0", "_prefix0", "_simple")

    def __init__(self) -> None:
        self.exact: dict[_View, dict[str, list[Route[A]]]] = {}
        self.prefix: dict[_View, dict[str, list[Route[A]]]] = {}
        self.regex: list[Route[A]] = []
        self.anypath: list[Route[A]] = []
        self.views: set[_View] = set()
        self.seq: dict[int, int] = {}  # id(route) -> config order, for merging views
        self._exact0: dict[str, list[Route[A]]] = {}
        self._prefix0: dict[str, list[Route[A]]] = {}
        self._simple = True

    def add(self, route: Route[A]) -> None:
        m = route.match
        view = _view_of(m)
        self.seq[id(route)] = len(self.seq)
        if m.path_exact is not None:
            self.views.add(view)
            key = _in_view(_config_path(m.path_exact), view)
            self.exact.setdefault(view, {}).setdefault(key, []).append(route)
        elif m.path_prefix is not None:
            self.views.add(view)
            key = _in_view(_config_path(m.path_prefix), view)
            self.prefix.setdefault(view, {}).setdefault(key, []).append(route)
        elif m.path_regex is not None:
            self.regex.append(route)
        else:
            self.anypath.append(route)
        self._simple = self.views <= {_PLAIN}
        self._exact0 = self.exact.get(_PLAIN, {})
        self._prefix0 = self.prefix.get(_PLAIN, {})

    def candidates(self, path: str) -> Iterator[Route[A]]:
        if not self._simple:
            yield from self._merged(path)
            return
        routes = self._exact0.get(path)
        if routes:
            yield from routes
        prefix = self._prefix0
        if prefix:
            for p in _prefixes_longest_first(path):
                routes = prefix.get(p)
                if routes:
                    yield from routes
        for route in self.regex:
            m = route.match
            rx = m._regex
            if rx is not None and rx.match(path if m.ignore_matrix_params is False else strip_matrix(path)):
                yield route
        yield from self.anypath

    def _merged(self, path: str) -> Iterator[Route[A]]:
        found: list[tuple[int, int, int, Route[A]]] = []  # (rank, -prefix length, config order, route)
        seq = self.seq
        for view in self.views:
            p = _in_view(path, view)
            for r in self.exact.get(view, {}).get(p, ()):
                found.append((0, 0, seq[id(r)], r))
            prefix = self.prefix.get(view)
            if prefix:
                for pre in _prefixes_longest_first(p):
                    for r in prefix.get(pre, ()):
                        found.append((1, -len(pre), seq[id(r)], r))
        found.sort(key=lambda t: t[:3])
        for *_, r in found:
            yield r
        for route in self.regex:
            m = route.match
            rx = m._regex
            if rx is not None and rx.match(path if m.ignore_matrix_params is False else strip_matrix(path)):
                yield route
        yield from self.anypath


def _prefixes_longest_first(path: str) -> Iterator[str]:
    """Every segment-aware prefix that matches ``path``, longest first.

    For ``/a/b``: ``/a/b``, ``/a/``, ``/a``, ``/``.  A prefix without a trailing
    slash must end at a ``/`` of the path or at its end; one with a trailing
    slash is any leading part that ends just after a ``/``.
    """
    if not path.startswith("/"):
        return
    yield path
    end = len(path)  # length of the last prefix yielded; "//" would repeat one
    i = path.rfind("/", 0, end)
    while i >= 0:
        if i + 1 < end:
            yield path[: i + 1]
        if i > 0:
            yield path[:i]
        end = i
        i = path.rfind("/", 0, i)


class RouteTable(Generic[A]):
    """Immutable once built; share one per Plan across all connections."""

    __slots__ = ("_routes", "_exact", "_wild", "_any")

    def __init__(self, routes: Sequence[Route[A]]) -> None:
        dupes = sorted(n for n, k in Counter(r.name for r in routes).items() if k > 1)
        if dupes:
            raise ValueError(f"duplicate route names: {', '.join(dupes)}")
        self._routes: tuple[Route[A], ...] = tuple(routes)
        self._exact: dict[str, _PathIndex[A]] = {}
        self._wild: dict[str, _PathIndex[A]] = {}
        self._any: _PathIndex[A] = _PathIndex()
        for route in self._routes:
            if not route.match.hosts:
                self._any.add(route)
                continue
            seen: set[tuple[bool, str]] = set()
            for pattern in route.match.hosts:
                key = _host_key(pattern)
                if key in seen:
                    continue
                seen.add(key)
                index = self._wild if key[0] else self._exact
                index.setdefault(key[1], _PathIndex()).add(route)

    @property
    def routes(self) -> tuple[Route[A], ...]:
        return self._routes

    def candidates(self, host: bytes | str | None, path: bytes, normal: bool = False) -> Iterator[Route[A]]:
        """Routes whose host and path conditions hold, in precedence order.

        Method and headers are not checked here; ``lookup`` filters on them.
        Useful on its own to explain a routing decision (admin, tests).  With
        ``normal`` the path is already in normal form and has no query.
        """
        h = request_host(host)
        p = (path if normal else normalize_path(path.partition(b"?")[0])).decode("latin-1")
        if h is not None:
            group = self._exact.get(h)
            if group is not None:
                yield from group.candidates(p)
            if self._wild:
                i = h.find(".")
                while i != -1:  # left to right: the longest suffix first
                    group = self._wild.get(h[i:])
                    if group is not None:
                        yield from group.candidates(p)
                    i = h.find(".", i + 1)
        yield from self._any.candidates(p)

    def lookup(
        self,
        host: bytes | str | None,
        method: str,
        path: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        normal: bool = False,
    ) -> Route[A] | None:
        """The first candidate whose method and header conditions hold, or None."""
        fields: dict[str, list[str]] | None = None
        for route in self.candidates(host, path, normal):
            m = route.match
            if m.methods and method not in m.methods:
                continue
            if m.headers:
                if fields is None:
                    fields = _header_fields(headers)
                if not _headers_hold(m.headers, fields):
                    continue
            return route
        return None


def _header_fields(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for name, value in headers:
        fields.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1").strip())
    return fields


def _headers_hold(conditions: tuple[tuple[str, str | None], ...], fields: dict[str, list[str]]) -> bool:
    for name, want in conditions:
        values = fields.get(name)
        if values is None or (want is not None and want not in values):
            return False
    return True


def rewrite_path(
    path: bytes,
    strip_prefix: str | None,
    replace_prefix: str | None,
    matched_prefix: str | None = None,
) -> bytes:
    """Per-route path rewrite for the upstream request; the query is kept verbatim.

    * neither given: ``path`` is returned untouched (raw bytes, as nginx's
      ``proxy_pass`` without a URI part forwards the client's own spelling);
    * ``strip_prefix``: remove it (``/api`` + ``/api/x`` -> ``/x``);
    * ``replace_prefix``: put it where the removed prefix was; the removed
      prefix is ``strip_prefix`` if given, else the route's ``matched_prefix``
      (nginx ``location /api/ { proxy_pass http://b/v2/; }``).

    Removal is segment-aware and works on the normal form the route matched
    (``normalize_path``), so what was matched is what is stripped.  A path
    that does not start with the prefix is forwarded normalized but otherwise
    unchanged.  The result always starts with ``/`` and never gains ``//`` at
    the join.
    """
    if strip_prefix is None and replace_prefix is None:
        return path
    remove = strip_prefix if strip_prefix is not None else matched_prefix
    if remove is None:
        raise ValueError("replace_prefix needs strip_prefix or the route's matched path_prefix")
    raw, q, query = path.partition(b"?")
    p = normalize_path(raw)
    prefix = _config_path(remove).encode("latin-1")
    if not _prefix_matches(p, prefix):
        return p + q + query
    rest = p[len(prefix) :]
    repl = (replace_prefix or "").encode("utf-8")
    if repl.endswith(b"/") and rest.startswith(b"/"):
        rest = rest[1:]
    elif rest and repl and not repl.endswith(b"/") and not rest.startswith(b"/"):
        rest = b"/" + rest
    out = repl + rest
    if not out.startswith(b"/"):
        out = b"/" + out
    return out + q + query


def _prefix_matches(path: bytes, prefix: bytes) -> bool:
    if not path.startswith(prefix):
        return False
    return prefix.endswith(b"/") or len(path) == len(prefix) or path[len(prefix)] == 0x2F
