"""htpasswd and Apache group files: parsing and password verification (pure).

htpasswd lines are ``user:hash``.  Accepted hash schemes:

  ``$2y$`` / ``$2b$`` / ``$2a$``   bcrypt (``htpasswd -B``), the one to use
  ``$apr1$``                       Apache MD5 (``htpasswd -m``): weak, accepted for compatibility
  ``{SHA}``                        unsalted SHA-1 (``htpasswd -s``): weak, accepted for compatibility

Anything else (plain text, DES ``crypt``, ``$1$``, ``$5$``, ``$6$``) is an error,
as is a line that is not ``user:hash``: every error names the file and line.
Blank lines and lines starting with ``#`` are skipped.

Group files use Apache's ``group: user user ...`` format; a group may be listed on
several lines (members add up).

Verification (`verify_password`) is CPU work (bcrypt costs milliseconds): callers run
it off the event loop.  It uses maintained libraries only: ``bcrypt``, ``passlib``
(installed from ``libpass``, its maintained fork) for apr1, and ``hashlib`` for SHA-1.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import bcrypt

from ferryman.errors import SourceLineError

Scheme = Literal["bcrypt", "apr1", "sha1"]
WEAK_SCHEMES: frozenset[str] = frozenset({"apr1", "sha1"})

# bcrypt uses the first 72 bytes of a password (as Apache's htpasswd does); the
# bcrypt package refuses longer input instead of truncating, so we truncate.
BCRYPT_MAX_PASSWORD = 72

_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_APR1 = re.compile(r"\$apr1\$[./0-9A-Za-z]{1,8}\$[./0-9A-Za-z]{22}")
_SHA_B64_LEN = 28  # base64 of a 20-byte SHA-1 digest
_GROUP_NAME = re.compile(r"[^\s:]+")


class AuthFileError(SourceLineError):
    """A line of an htpasswd or group file that cannot be used."""

    @property
    def path(self) -> str:
        return self.source


@dataclass(frozen=True, slots=True)
class PasswordEntry:
    user: str
    hash: str
    scheme: Scheme
    line: int = 0  # where it was defined, for `ferryman check`

    @property
    def weak(self) -> bool:
        return self.scheme in WEAK_SCHEMES


def _scheme_of(h: str) -> Scheme | None:
    if h.startswith("$2"):
        return "bcrypt" if _BCRYPT.fullmatch(h) else None
    if h.startswith("$apr1$"):
        return "apr1" if _APR1.fullmatch(h) else None
    if h.startswith("{SHA}"):
        b64 = h[5:]
        if len(b64) != _SHA_B64_LEN:
            return None
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            return None
        return "sha1" if len(raw) == 20 else None
    return None


def _unsupported(h: str) -> str:
    if h.startswith(("$2", "$apr1$", "{SHA}")):
        return "malformed password hash"
    if h.startswith(("$1$", "$5$", "$6$", "$y$")) or (len(h) == 13 and re.fullmatch(r"[./0-9A-Za-z]+", h)):
        return "unsupported hash scheme (crypt); use bcrypt: htpasswd -B"
    return "unsupported hash scheme (plain text?); use bcrypt: htpasswd -B"


def parse_htpasswd(text: str, path: str) -> dict[str, PasswordEntry]:
    """``user -> PasswordEntry``; raises `AuthFileError` on the first unusable line."""
    users: dict[str, PasswordEntry] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, h = line.partition(":")
        if not sep:
            raise AuthFileError(path, lineno, "expected user:hash")
        user = user.strip()
        h = h.strip()
        if not user:
            raise AuthFileError(path, lineno, "empty user name")
        if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in user):
            raise AuthFileError(path, lineno, f"user name {user!r} holds white space or control characters")
        if not h:
            raise AuthFileError(path, lineno, f"no password hash for user {user!r}")
        scheme = _scheme_of(h)
        if scheme is None:
            raise AuthFileError(path, lineno, f"user {user!r}: {_unsupported(h)}")
        if user in users:
            raise AuthFileError(path, lineno, f"user {user!r} already defined on line {users[user].line}")
        users[user] = PasswordEntry(user, h, scheme, lineno)
    return users


def parse_groups(text: str, path: str) -> dict[str, frozenset[str]]:
    """``group -> members`` from Apache's ``group: user user`` format."""
    acc: dict[str, set[str]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        name = name.strip()
        if not sep:
            raise AuthFileError(path, lineno, "expected group: user user ...")
        if not _GROUP_NAME.fullmatch(name):
            raise AuthFileError(path, lineno, f"invalid group name {name!r}")
        members = rest.split()
        for m in members:
            if ":" in m:
                raise AuthFileError(path, lineno, f"invalid user name {m!r}")
        acc.setdefault(name, set()).update(members)
    return {g: frozenset(m) for g, m in acc.items()}


def read_text(path: str) -> str:
    """The file's text; an unreadable or undecodable file is an `AuthFileError` (line 0)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise AuthFileError(path, 0, f"cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AuthFileError(path, line, "not valid UTF-8") from None


# (path, st_mtime_ns, st_size) of a file when it was read
FileStamp = tuple[str, int, int]


def file_stamps(paths: Sequence[str]) -> tuple[FileStamp, ...]:
    """(path, mtime_ns, size) of each file; a missing file stamps as (path, -1, -1)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((p, -1, -1))
    return tuple(out)


def _invert(groups: Mapping[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    by_user: dict[str, set[str]] = {}
    for g, members in groups.items():
        for u in members:
            by_user.setdefault(u, set()).add(g)
    return {u: frozenset(gs) for u, gs in by_user.items()}


_NO_GROUPS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class UserDb:
    """Users and their groups, built once per Plan (or per reload of the files)."""

    users: Mapping[str, PasswordEntry]
    groups: Mapping[str, frozenset[str]]  # group -> members
    source: str = ""
    _by_user: Mapping[str, frozenset[str]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        users: Mapping[str, PasswordEntry],
        groups: Mapping[str, frozenset[str]] | None = None,
        source: str = "",
    ) -> UserDb:
        g = dict(groups or {})
        return cls(MappingProxyType(dict(users)), MappingProxyType(g), source, MappingProxyType(_invert(g)))

    @classmethod
    def from_files(
        cls,
        htpasswd: str,
        group_file: str | None = None,
        config_groups: Mapping[str, list[str] | tuple[str, ...] | frozenset[str]] | None = None,
    ) -> UserDb:
        """Read and parse the files (compile time, not per request); groups from the
        group file and from the config add up.  Raises `AuthFileError`."""
        users = parse_htpasswd(read_text(htpasswd), htpasswd)
        groups: dict[str, set[str]] = {}
        if group_file is not None:
            for g, m in parse_groups(read_text(group_file), group_file).items():
                groups.setdefault(g, set()).update(m)
        for g, names in (config_groups or {}).items():
            groups.setdefault(g, set()).update(names)
        return cls.build(users, {g: frozenset(m) for g, m in groups.items()}, htpasswd)

    def get(self, user: str) -> PasswordEntry | None:
        return self.users.get(user)

    def groups_of(self, user: str) -> frozenset[str]:
        return self._by_user.get(user, _NO_GROUPS)

    def weak_entries(self) -> tuple[PasswordEntry, ...]:
        """Users whose hash is apr1-MD5 or SHA-1, for `ferryman check` to warn about by name."""
        return tuple(e for e in self.users.values() if e.weak)

    def unknown_group_members(self) -> tuple[tuple[str, str], ...]:
        """(group, user) pairs naming a user that is not in the htpasswd file."""
        return tuple(
            (g, u)
            for g, members in sorted(self.groups.items())
            for u in sorted(members)
            if u not in self.users
        )


def verify_password(entry: PasswordEntry, password: bytes) -> bool:
    """True when ``password`` matches ``entry``.  Blocking CPU work; never raises."""
    try:
        if entry.scheme == "bcrypt":
            return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], entry.hash.encode("ascii"))
        if entry.scheme == "apr1":
            from passlib.hash import apr_md5_crypt

            return bool(apr_md5_crypt.verify(password, entry.hash))
        if entry.scheme == "sha1":
            digest = base64.b64encode(hashlib.sha1(password).digest()).decode("ascii")
            return hmac.compare_digest(digest, entry.hash[5:])
    except (ValueError, TypeError):
        return False
    return False
