"""The Redis cache tier's layout and record format (pure).

Layout (``P`` = ``prefix``, ``H`` = blake2b-128(key) hex, ``V`` = blake2b-64(variant) hex)
------------------------------------------------------------------------------------

    P e:H:V     a hash, one per entry: field ``m`` = head + meta (+ the body when it is
                at most 1 MiB, "inline"); field ``b`` = the body when it is larger
    P v:KEY     a sorted set per primary key (KEY raw, so SCAN MATCH can filter on its
                prefix): the ``V`` of every variant stored under it, scored by when it
                was last stored, refreshed or read (reads bump it at most once a minute)

``m`` (integers big-endian)::

    head  32 B  magic b"FRYREDIS" | u16 version=2 | u16 flags (1: body inline) | u32 meta_len
                | u64 body_len | u32 CRC32(meta) | u32 CRC32(body)
    meta        compact JSON {"k","v","s","h","q","t0","t1","n"} (``store.encode_meta``),
                byte strings as latin-1 text
    body        body_len bytes, only when inline

An entry whose head names another magic or version is corrupt: a miss, and ``get`` deletes it.
``redis_conn.py`` spells the names, ``redis_store.py`` (reads) and ``redis_writer.py``
(fills) use them; how they are written and read (atomicity, expiry) is in ``redis_store.py``.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from ferryman.pipeline.cache.store import BadMeta, EntryMeta, encode_meta
from ferryman.pipeline.cache.store import decode_meta as decode_meta_shared

__all__ = ["Corrupt", "Parsed", "check_body", "encode_entry", "glob_escape", "key_hash", "parse_entry",
           "variant_hash"]

_MAGIC: Final = b"FRYREDIS"
_VERSION: Final = 2
_FLAG_INLINE: Final = 1
_HEAD: Final = struct.Struct(">8sHHIQII")


class Corrupt(Exception):
    """Not a complete, well-formed entry."""



def key_hash(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=16).hexdigest().encode("ascii")


def variant_hash(variant: bytes) -> bytes:
    return hashlib.blake2b(variant, digest_size=8).hexdigest().encode("ascii")


def glob_escape(raw: bytes) -> bytes:
    """``raw`` as a literal in a Redis glob pattern (SCAN MATCH)."""
    out = bytearray()
    for c in raw:
        if c in b"\\*?[]^":
            out += b"\\"
        out.append(c)
    return bytes(out)


def _decode_meta(data: bytes, body_len: int) -> EntryMeta:
    try:
        return decode_meta_shared(data, body_len)
    except BadMeta as exc:
        raise Corrupt(str(exc)) from None


def encode_entry(meta: EntryMeta, body_len: int, body_crc: int, inline: bytes | None) -> bytes:
    """The ``m`` field: head + meta, and the body itself when ``inline`` is given."""
    meta_bytes = encode_meta(meta)
    flags = _FLAG_INLINE if inline is not None else 0
    head = _HEAD.pack(_MAGIC, _VERSION, flags, len(meta_bytes), body_len, zlib.crc32(meta_bytes), body_crc)
    return head + meta_bytes + (inline or b"")


@dataclass(frozen=True, slots=True)
class Parsed:
    meta: EntryMeta
    body_crc: int
    body: bytes | None  # inline and checked; None: in the ``b`` field


def parse_entry(raw: object) -> Parsed:
    """Check and decode an ``m`` field (an inline body against its CRC too)."""
    if not isinstance(raw, bytes) or len(raw) < _HEAD.size:
        raise Corrupt("short head")
    magic, version, flags, meta_len, body_len, meta_crc, body_crc = _HEAD.unpack_from(raw)
    if magic != _MAGIC or version != _VERSION or flags & ~_FLAG_INLINE:
        raise Corrupt("bad head")
    inline = bool(flags & _FLAG_INLINE)
    if len(raw) != _HEAD.size + meta_len + (body_len if inline else 0):
        raise Corrupt("length does not match the head")
    meta_bytes = raw[_HEAD.size : _HEAD.size + meta_len]
    if zlib.crc32(meta_bytes) != meta_crc:
        raise Corrupt("meta checksum mismatch")
    meta = _decode_meta(meta_bytes, body_len)
    body = None
    if inline:
        body = raw[_HEAD.size + meta_len :]
        check_body(body, body_len, body_crc)
    return Parsed(meta, body_crc, body)


def check_body(body: object, body_len: int, body_crc: int) -> bytes:
    if not isinstance(body, bytes) or len(body) != body_len or zlib.crc32(body) != body_crc:
        raise Corrupt("body does not match its meta (length or checksum)")
    return body


