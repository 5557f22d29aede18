"""The conditions of an ACL rule (pure): each tests one fact of a request.

Every condition is compiled once per Plan and has two methods: ``test(ev)`` against
one request's `Facts`, and ``covers(other)`` (this condition holds for every request
that ``other``, a condition of the same kind, holds for), which `rules.shadowed` uses
to find rules that can never match.  ``covers`` may answer False when unsure.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from ferryman.http1.events import Headers
from ferryman.pipeline.admit.acl import IPNetwork
from ferryman.pipeline.admit.domainset import DomainSet, normalise_entry

_V6 = 1 << 128  # IPv6 keys carry this bit, so that they never equal an IPv4 key


def addr_key(text: str | None) -> int | None:
    """An IP address as one integer (IPv4 as itself, IPv4-mapped IPv6 unwrapped to it,
    other IPv6 with bit 128 set), or None when ``text`` is not an IP literal.  Strict
    forms only (``inet_pton``): a name like ``127.1`` is for the resolver to turn
    into the address that is then matched."""
    if not text:
        return None
    if text[0] == "[":
        text = text[1:-1]
    try:
        if ":" not in text:
            return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        n = int.from_bytes(socket.inet_pton(socket.AF_INET6, text.partition("%")[0]), "big")
    except (OSError, ValueError):
        return None
    return n & 0xFFFFFFFF if n >> 32 == 0xFFFF else n | _V6


def network_ranges(networks: tuple[IPNetwork, ...]) -> tuple[tuple[int, int], ...]:
    """Each network as an inclusive range of `addr_key` values."""
    out = []
    for n in networks:
        lo, hi = int(n.network_address), int(n.broadcast_address)
        if n.version == 6:
            if n.prefixlen >= 96 and lo >> 32 == 0xFFFF:  # ::ffff:a.b.c.d/N: an IPv4 network
                out.append((lo & 0xFFFFFFFF, hi & 0xFFFFFFFF))
                continue
            lo, hi = lo | _V6, hi | _V6
        out.append((lo, hi))
    return tuple(out)


def in_ranges(key: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    for lo, hi in ranges:
        if lo <= key <= hi:
            return True
    return False


def networks_cover(outer: tuple[IPNetwork, ...], inner: tuple[IPNetwork, ...]) -> bool:
    return all(
        any(i.version == o.version and i.subnet_of(o) for o in outer)  # type: ignore[arg-type]
        for i in inner
    )


class Facts:
    """What the conditions read about one request; costly parts computed on first use."""

    __slots__ = (
        "client", "method", "host", "port", "path", "headers", "user", "groups", "address", "now",
        "_client_addr", "_dest_addr", "_header_map", "_times", "_parents",
    )

    def __init__(
        self,
        client: str,
        method: str,
        host: str,
        port: int,
        path: str | None,
        headers: Headers,
        user: str | None,
        groups: frozenset[str],
        address: str | None,
        now: float,
    ) -> None:
        self.client = client
        self.method = method
        if not host.islower():
            host = host.lower()
        self.host = host.removesuffix(".") if host.endswith(".") else host
        self.port = port
        self.path = path
        self.headers = headers
        self.user = user
        self.groups = groups
        self.address = address
        self.now = now
        self._client_addr: int | None = -1  # -1: not parsed yet
        self._dest_addr: int | None = -1
        self._header_map: dict[bytes, list[bytes]] | None = None
        self._times: dict[tzinfo | None, datetime] | None = None
        self._parents: tuple[str, ...] | None = None

    def parents(self) -> tuple[str, ...]:
        """``("b.example.com", "example.com", "com")`` for ``a.b.example.com``."""
        if self._parents is None:
            h = self.host
            out = []
            i = h.find(".")
            while i != -1:
                out.append(h[i + 1 :])
                i = h.find(".", i + 1)
            self._parents = tuple(out)
        return self._parents

    def client_addr(self) -> int | None:
        if self._client_addr == -1:
            self._client_addr = addr_key(self.client)
        return self._client_addr

    def dest_addr(self) -> int | None:
        """The dialled address: the resolved one, or the host when it is an IP literal."""
        if self._dest_addr == -1:
            key = addr_key(self.address)
            self._dest_addr = key if key is not None else addr_key(self.host)
        return self._dest_addr

    def header_values(self, name: bytes) -> list[bytes] | None:
        if self._header_map is None:
            m: dict[bytes, list[bytes]] = {}
            for n, v in self.headers:
                m.setdefault(n.lower(), []).append(v)
            self._header_map = m
        return self._header_map.get(name)

    def local_time(self, tz: tzinfo | None) -> datetime:
        if self._times is None:
            self._times = {}
        t = self._times.get(tz)
        if t is None:
            t = self._times[tz] = datetime.fromtimestamp(self.now, tz)
        return t


# -- who ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Clients:
    networks: tuple[IPNetwork, ...]
    ranges: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", network_ranges(self.networks))

    def test(self, ev: Facts) -> bool:
        addr = ev.client_addr()
        return addr is not None and in_ranges(addr, self.ranges)

    def covers(self, other: Clients) -> bool:
        return networks_cover(self.networks, other.networks)


@dataclass(frozen=True, slots=True)
class Users:
    names: frozenset[str]

    def test(self, ev: Facts) -> bool:
        return ev.user is not None and ev.user in self.names

    def covers(self, other: Users) -> bool:
        return other.names <= self.names


@dataclass(frozen=True, slots=True)
class Groups:
    names: frozenset[str]

    def test(self, ev: Facts) -> bool:
        return ev.user is not None and not self.names.isdisjoint(ev.groups)

    def covers(self, other: Groups) -> bool:
        return other.names <= self.names


@dataclass(frozen=True, slots=True)
class Authenticated:
    value: bool

    def test(self, ev: Facts) -> bool:
        return (ev.user is not None) == self.value

    def covers(self, other: Authenticated) -> bool:
        return other.value == self.value


# -- where -------------------------------------------------------------------------


def split_entries(entries: list[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(exact, suffixes) sets from config entries; raises ValueError naming the index."""
    exact: set[str] = set()
    suffixes: set[str] = set()
    for j, raw in enumerate(entries):
        try:
            e = normalise_entry(raw)
        except ValueError as exc:
            raise IndexedError(j, str(exc)) from None
        if e is None:
            raise IndexedError(j, f"not a domain entry: {raw!r}")
        e = e.removesuffix(".")
        if e.startswith("*."):
            suffixes.add(e[2:])
        elif e.startswith("."):
            suffixes.add(e[1:])
            exact.add(e[1:])
        else:
            exact.add(e)
    return frozenset(exact), frozenset(suffixes)


class IndexedError(ValueError):
    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index

NO_MATCH, BY_NAME, BY_NETWORK, NEEDS_ADDRESS = 0, 1, 2, 3
HOST_MEMO = 4096  # hosts (paths) whose match a Destination, a RunIndex (a Path) remembers
MEMO_PATH_SIZE = 512  # longer paths are searched each time (the memo stays small)


@dataclass(frozen=True, slots=True)
class Destination:
    """Destination by name (entries, regexes, files) or by address (networks): the forms
    are alternatives, as in the existing ``domains`` + ``networks`` rules."""

    exact: frozenset[str] = frozenset()  # from the config's entries: "a.com", ".a.com"
    suffixes: frozenset[str] = frozenset()  # "*.a.com" and ".a.com" (stored as "a.com")
    regexes: tuple[re.Pattern[str], ...] = ()
    files: tuple[tuple[str, DomainSet], ...] = ()  # (absolute path, set)
    networks: tuple[IPNetwork, ...] = ()
    ranges: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    # host -> whether the name part matches (hosts repeat: the files and regexes are
    # searched once per host, not per request); bounded, emptied when full
    _by_host: dict[str, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", network_ranges(self.networks))
        object.__setattr__(self, "_by_host", {})

    def match(self, ev: Facts) -> int:
        """NO_MATCH, BY_NAME, BY_NETWORK, or NEEDS_ADDRESS when only the dialled
        address can tell and it is not known yet."""
        if self.matches_name(ev):
            return BY_NAME
        if self.networks:
            addr = ev.dest_addr()
            if addr is None:
                return NEEDS_ADDRESS
            if in_ranges(addr, self.ranges):
                return BY_NETWORK
        return NO_MATCH

    def matches_name(self, ev: Facts) -> bool:
        """Whether the host matches by name (entries, files, regexes); remembered per host."""
        host = ev.host
        named = self._by_host.get(host)
        if named is None:
            named = self._by_name(host, ev)
            memo = self._by_host
            if len(memo) >= HOST_MEMO:
                memo.clear()
            memo[host] = named
        return named

    def _by_name(self, host: str, ev: Facts) -> bool:
        if host in self.exact:
            return True
        if self.suffixes or self.files:
            parents = ev._parents
            if parents is None:
                parents = ev.parents()
            if self.suffixes and not self.suffixes.isdisjoint(parents):
                return True
            for _, ds in self.files:
                if ds.matches_parts(host, parents):
                    return True
        for rx in self.regexes:
            if rx.search(host):
                return True
        return False

    def covers(self, other: Destination) -> bool:
        if other.files and not {p for p, _ in other.files} <= {p for p, _ in self.files}:
            return False
        if other.regexes and not {r.pattern for r in other.regexes} <= {r.pattern for r in self.regexes}:
            return False
        if other.networks and not networks_cover(self.networks, other.networks):
            return False
        return all(self._has_exact(e) for e in other.exact) and all(
            self._has_subdomains(s) for s in other.suffixes
        )

    def _has_exact(self, name: str) -> bool:
        return name in self.exact or self._has_subdomains(name.partition(".")[2])

    def _has_subdomains(self, name: str) -> bool:
        while name:
            if name in self.suffixes:
                return True
            name = name.partition(".")[2]
        return False


@dataclass(frozen=True, slots=True)
class PortRange:
    ranges: tuple[tuple[int, int], ...]  # inclusive

    def test(self, ev: Facts) -> bool:
        p = ev.port
        return any(lo <= p <= hi for lo, hi in self.ranges)

    def as_ranges(self) -> tuple[tuple[int, int], ...]:
        return self.ranges

    def covers(self, other: PortRange | Ports) -> bool:
        return all(any(lo <= olo and ohi <= hi for lo, hi in self.ranges) for olo, ohi in other.as_ranges())


@dataclass(frozen=True, slots=True)
class Ports:
    """A set of single ports (the common case: one set lookup)."""

    ports: frozenset[int]

    def test(self, ev: Facts) -> bool:
        return ev.port in self.ports

    def as_ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple((p, p) for p in sorted(self.ports))

    def covers(self, other: PortRange | Ports) -> bool:
        if isinstance(other, Ports):
            return other.ports <= self.ports
        return all(p in self.ports for lo, hi in other.ranges for p in range(lo, hi + 1))


@dataclass(frozen=True, slots=True)
class Methods:
    methods: frozenset[str]

    def test(self, ev: Facts) -> bool:
        return ev.method in self.methods

    def covers(self, other: Methods) -> bool:
        return other.methods <= self.methods


@dataclass(frozen=True, slots=True)
class Path:
    """URL path by prefix or regex (alternatives); a CONNECT has no path and never matches."""

    prefixes: tuple[str, ...] = ()
    regexes: tuple[re.Pattern[str], ...] = ()
    # path -> whether a regex matches it (paths repeat); bounded, emptied when full
    _by_path: dict[str, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_path", {})

    def test(self, ev: Facts) -> bool:
        path = ev.path
        if path is None:
            return False
        if self.prefixes and path.startswith(self.prefixes):
            return True
        if not self.regexes:
            return False
        memo = self._by_path
        found = memo.get(path)
        if found is None:
            found = False
            for rx in self.regexes:
                if rx.search(path):
                    found = True
                    break
            if len(path) <= MEMO_PATH_SIZE:
                if len(memo) >= HOST_MEMO:
                    memo.clear()
                memo[path] = found
        return found

    def covers(self, other: Path) -> bool:
        if not {r.pattern for r in other.regexes} <= {r.pattern for r in self.regexes}:
            return False
        if not self.prefixes:
            return not other.prefixes
        return all(p.startswith(self.prefixes) for p in other.prefixes)


# -- when --------------------------------------------------------------------------

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Minutes since local midnight, ``start <= t < end``; a window with ``start > end``
    runs past midnight (22:00-06:00).  ``days`` is checked on the local day of the
    request (so Friday 22:00-06:00 means Friday 22:00-24:00 and Friday 00:00-06:00)."""

    start: int
    end: int
    days: frozenset[int]  # 0 = Monday
    tz: tzinfo | None  # None: the system's local time
    spec: str = field(default="", compare=False)  # as written, for messages
    # [(minute since the epoch, the answer for it)]: time zone offsets are whole minutes,
    # so the answer changes at most once a minute and is worked out once per minute
    _last: list[tuple[float, bool]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_last", [(-1.0, False)])

    def test(self, ev: Facts) -> bool:
        minute = ev.now // 60
        last = self._last[0]
        if last[0] == minute:
            return last[1]
        answer = self._at(ev)
        self._last[0] = (minute, answer)
        return answer

    def _at(self, ev: Facts) -> bool:
        t = ev.local_time(self.tz)
        if t.weekday() not in self.days:
            return False
        m = t.hour * 60 + t.minute
        if self.start <= self.end:
            return self.start <= m < self.end
        return m >= self.start or m < self.end

    def covers(self, other: TimeWindow) -> bool:
        return (self.start, self.end, self.tz) == (other.start, other.end, other.tz) and (
            other.days <= self.days
        )


# -- what the client sent ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """``present`` True: the field is there (any value); False: it is absent;
    with ``regex``: some value of the field matches."""

    name: bytes  # lower-case
    present: bool = True
    regex: re.Pattern[str] | None = None

    def test(self, ev: Facts) -> bool:
        name = self.name
        size = len(name)
        rx = self.regex
        seen = False
        for n, v in ev.headers:  # one pass, lowering only the names of the right length
            if len(n) == size and n.lower() == name:
                if rx is None or rx.search(v.decode("latin-1")):
                    return self.present
                seen = True
        return not self.present and not seen

    def covers(self, other: Header) -> bool:
        if self.name != other.name:
            return False
        if not self.present:
            return not other.present
        if self.regex is None:
            return other.present
        return other.regex is not None and other.regex.pattern == self.regex.pattern


Condition = (
    Clients | Users | Groups | Authenticated | Ports | PortRange | Methods | Path | TimeWindow | Header
)
