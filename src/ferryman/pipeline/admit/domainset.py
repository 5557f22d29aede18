"""A compact destination-domain set for million-entry blocklists (pure).

Entry syntax (Squid ``dstdomain``), one per line, ``#`` starts a comment anywhere:

  ``example.com``    that host only
  ``*.example.com``  any subdomain, not the domain itself
  ``.example.com``   the domain and every subdomain

Layout.  A Python ``set`` of a million strings costs over 100 MiB; this costs about
12 bytes per entry plus the names compressed:

- ``_keys``: one sorted ``array('Q')`` with one 64-bit word per entry,
  ``hash(name)`` top bits | 2 kind bits | the entry's index (24 bits).
- ``_index``: where each value of the keys' top 16 bits starts, so a bisect spans ~16 keys.
- ``_filter``: one bit per value of the keys' top F bits (about 16 bits per entry), set
  when some key has them: most names that are not in the set stop there, before any
  bisect (a one-hash Bloom filter).
- ``_blob``: the names in file order, ``_BLOCK`` per zlib-compressed block, for the
  exact confirmation of a hash hit (read only when a hash matches: on a hit, or on
  a rare 38-bit hash collision).

A lookup of ``a.b.example.com`` probes the host once for exact entries and each
parent (``b.example.com``, ``example.com``, ``com``) once for suffix entries: one
``hash`` and one ``bisect`` per label, O(labels) per request.

``hash`` is Python's keyed string hash (SipHash), so the set is only valid in the
process that built it (and its forks): it refuses to be pickled.
"""

from __future__ import annotations

import re
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator

from ferryman.errors import SourceLineError

# kind bits: which lookups an entry answers
_EXACT = 1  # "example.com" (and ".example.com"): the host itself
_SUFFIX = 2  # "*.example.com" (and ".example.com"): hosts under it
_IDX_BITS = 24
_KIND_BITS = 2
_LOW_BITS = _IDX_BITS + _KIND_BITS
_IDX_MASK = (1 << _IDX_BITS) - 1
_LOW_MASK = (1 << _LOW_BITS) - 1
_M64 = (1 << 64) - 1
MAX_ENTRIES = 1 << _IDX_BITS
_BLOCK = 64  # names per compressed block
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_ENTRY = rf"(?:\*\.|\.)?{_LABEL}(?:\.{_LABEL})*\.?"
_NAME = re.compile(_ENTRY)
# In a whole lower-cased ASCII text without comments: the first line that is neither
# blank nor one entry.
_BAD_LINE = re.compile(rf"^(?![ \t\r\f\v]*(?:{_ENTRY})?[ \t\r\f\v]*$).*$", re.M)
_COMMENT = re.compile(r"#[^\n]*")


class DomainSetError(SourceLineError):
    """An entry that is not a domain; names its source (file or field) and line."""


def normalise_entry(raw: str) -> str | None:
    """The entry of one line, lower-cased, without comment or space; None for
    a blank or comment-only line; raises ValueError when it is not a domain entry."""
    if "#" in raw:
        raw = raw[: raw.index("#")]
    e = raw.strip()
    if not e:
        return None
    e = e.lower()
    if not e.isascii():
        e = _to_ascii(e)
    if not _NAME.fullmatch(e):
        raise ValueError(f"not a domain entry: {raw.strip()!r}")
    return e


def _to_ascii(e: str) -> str:
    prefix = "*." if e.startswith("*.") else "." if e.startswith(".") else ""
    try:
        return prefix + e[len(prefix) :].encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"not a domain entry: {e!r}") from None


class DomainSet:
    """Immutable after building; share one per Plan between all requests."""

    __slots__ = (
        "_keys", "_index", "_shift", "_filter", "_fshift", "_blob", "_offsets", "_count",
        "_has_exact", "_has_suffix",
    )

    def __init__(self) -> None:
        self._keys = array("Q")
        self._index = array("I", (0, 0))  # top bits of a key -> first position in _keys
        self._shift = 64
        self._filter = bytearray(1)
        self._fshift = 64
        self._blob = b""  # zlib blocks of names, back to back
        self._offsets = array("I", (0,))  # block i is _blob[_offsets[i]:_offsets[i + 1]]
        self._count = 0
        self._has_exact = False
        self._has_suffix = False

    # -- building ------------------------------------------------------------------

    @classmethod
    def build(cls, lines: Iterable[str], source: str = "<domains>", first_line: int = 1) -> DomainSet:
        """From lines (a config list, say); raises `DomainSetError` naming the line."""
        b = _Builder(source)
        b.add_lines(lines, first_line)
        return b.finish(cls())

    @classmethod
    def from_file(cls, path: str, chunk: int = 1 << 20) -> DomainSet:
        """Read a domains file (compile time, not per request); raises `DomainSetError`.

        The file is read and validated ``chunk`` bytes at a time, so the transient
        strings of a big file never pile up (they would leave the heap fragmented)."""
        b = _Builder(path)
        try:
            with open(path, "rb") as fh:
                carry = b""
                while data := fh.read(chunk):
                    cut = data.rfind(b"\n") + 1
                    if cut == 0:
                        carry += data
                        continue
                    b.add_bytes(carry + data[:cut])
                    carry = data[cut:]
                if carry:
                    b.add_bytes(carry)
        except OSError as exc:
            raise DomainSetError(path, 0, f"cannot read: {exc.strerror or exc}") from None
        return b.finish(cls())

    @classmethod
    def from_text(cls, text: str, source: str = "<domains>") -> DomainSet:
        """From a whole file's text; raises `DomainSetError` naming the line."""
        b = _Builder(source)
        b.add_text(text)
        return b.finish(cls())

    # -- matching ------------------------------------------------------------------

    def matches(self, host: str) -> bool:
        """Whether ``host`` (a name as sent by the client) is in the set."""
        if not self._count:
            return False
        if not host.islower():
            host = host.lower()
        if host.endswith("."):
            host = host[:-1]
        if self._has_exact and self._probe(host, _EXACT):
            return True
        if self._has_suffix:
            i = host.find(".")
            while i != -1:
                if self._probe(host[i + 1 :], _SUFFIX):
                    return True
                i = host.find(".", i + 1)
        return False

    __contains__ = matches

    def matches_parts(self, host: str, parents: tuple[str, ...]) -> bool:
        """`matches` for a normalised host whose parents (``b.c``, ``c`` of ``a.b.c``)
        the caller computed once for all the sets it asks."""
        if not self._count:
            return False
        if self._has_exact and self._probe(host, _EXACT):
            return True
        if self._has_suffix:
            for p in parents:
                if self._probe(p, _SUFFIX):
                    return True
        return False

    def _probe(self, name: str, want: int) -> bool:
        keys = self._keys
        lo = (hash(name) & _M64) >> _LOW_BITS << _LOW_BITS
        b = lo >> self._fshift
        if not self._filter[b >> 3] & (1 << (b & 7)):
            return False
        p = lo >> self._shift
        end = self._index[p + 1]
        i = bisect_left(keys, lo, self._index[p], end)
        while i < end:
            k = keys[i]
            if k - lo > _LOW_MASK:
                return False
            if (k >> _IDX_BITS) & want and self._name_at(k & _IDX_MASK) == name:
                return True
            i += 1
        return False

    def _name_at(self, idx: int) -> str:
        block, pos = divmod(idx, _BLOCK)
        blk = self._blob[self._offsets[block] : self._offsets[block + 1]]
        return zlib.decompress(blk).decode("ascii").split("\n")[pos]

    # -- introspection -------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        """The entries (normalised) in source order; for `ferryman check` and tests."""
        kinds = [0] * self._count
        for k in self._keys:
            kinds[k & _IDX_MASK] = (k >> _IDX_BITS) & 3
        idx = 0
        for b in range(len(self._offsets) - 1):
            blk = self._blob[self._offsets[b] : self._offsets[b + 1]]
            for name in zlib.decompress(blk).decode("ascii").split("\n"):
                kind = kinds[idx]
                yield ("." + name) if kind == _EXACT | _SUFFIX else ("*." + name) if kind == _SUFFIX else name
                idx += 1

    def memory_bytes(self) -> int:
        """Bytes held by the compact structures (for the bench and `ferryman check`)."""
        arrays = (self._keys, self._index, self._offsets)
        return sum(a.itemsize * len(a) for a in arrays) + len(self._blob) + len(self._filter)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a DomainSet is keyed by this process's string hash: rebuild it, don't pickle it")




class _Builder:
    """Accumulates entries chunk by chunk, then lays out a `DomainSet`."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.keys = array("Q")
        # One growing buffer, not a bytes object per block: long-lived small allocations
        # among the transient strings would pin freed heap pages in RSS.
        self.blob = bytearray()
        self.offsets = array("I", (0,))
        self.pending: list[str] = []
        self.kinds = 0
        self.lines_seen = 0  # lines of the source consumed so far

    def add_lines(self, lines: Iterable[str], first_line: int) -> None:
        entries = []
        for lineno, raw in enumerate(lines, first_line):
            try:
                e = normalise_entry(raw)
            except ValueError as exc:
                raise DomainSetError(self.source, lineno, str(exc)) from None
            if e is not None:
                entries.append(e)
        self.add_valid(entries)

    def add_bytes(self, data: bytes) -> None:
        """Whole lines (each ending with a newline, but for the file's last one)."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = self.lines_seen + data.count(b"\n", 0, exc.start) + 1
            raise DomainSetError(self.source, line, "not valid UTF-8") from None
        self.add_text(text)

    def add_text(self, text: str) -> None:
        """Whole lines: validated by C code (regex, lower) in a few passes over the text."""
        first = self.lines_seen + 1
        self.lines_seen += text.count("\n")
        if not text.isascii():  # internationalised names: the slow path, line by line
            self.add_lines(text.split("\n"), first)
            return
        if "#" in text:
            text = _COMMENT.sub("", text)
        text = text.lower()
        bad = _BAD_LINE.search(text)
        if bad is not None:
            lineno = first + text.count("\n", 0, bad.start())
            raise DomainSetError(self.source, lineno, f"not a domain entry: {bad.group().strip()!r}")
        self.add_valid(text.split("\n"))

    def add_valid(self, lines: list[str]) -> None:
        """Lower-cased lines that hold one valid entry each, or white space only."""
        keys, pending, kinds = self.keys, self.pending, self.kinds
        idx = len(keys)
        for raw in lines:
            e = raw.strip()
            if not e:
                continue
            if e[-1] == ".":
                e = e[:-1]
            c = e[0]
            if c == ".":
                name, kind = e[1:], _EXACT | _SUFFIX
            elif c == "*":
                name, kind = e[2:], _SUFFIX
            else:
                name, kind = e, _EXACT
            kinds |= kind
            keys.append(((hash(name) & _M64) >> _LOW_BITS << _LOW_BITS) | (kind << _IDX_BITS) | idx)
            pending.append(name)
            idx += 1
            if len(pending) == _BLOCK:
                self._flush()
        self.kinds = kinds
        if idx > MAX_ENTRIES:
            raise DomainSetError(self.source, 0, f"more than {MAX_ENTRIES} entries")

    def _flush(self) -> None:
        self.blob += zlib.compress("\n".join(self.pending).encode("ascii"), 1)
        self.offsets.append(len(self.blob))
        self.pending.clear()

    def finish(self, ds: DomainSet) -> DomainSet:
        if self.pending:
            self._flush()
        n = len(self.keys)
        keys = array("Q", sorted(self.keys))
        self.keys = array("Q")
        bits = min(16, max(0, n.bit_length() - 4))
        shift = 64 - bits
        ds._keys = keys
        ds._shift = shift
        ds._index = array("I", (bisect_left(keys, p << shift) for p in range((1 << bits) + 1)))
        fbits = min(32, max(3, (n * 16).bit_length()))
        filt = bytearray(1 << (fbits - 3))
        fshift = 64 - fbits
        for k in keys:
            b = k >> fshift
            filt[b >> 3] |= 1 << (b & 7)
        ds._filter = filt
        ds._fshift = fshift
        ds._blob = bytes(self.blob)
        self.blob = bytearray()
        ds._offsets = self.offsets
        ds._count = n
        ds._has_exact = bool(self.kinds & _EXACT)
        ds._has_suffix = bool(self.kinds & _SUFFIX)
        return ds
