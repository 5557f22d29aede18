"""Header lists for the pure cores' tests, written as the lines of a message head."""

from __future__ import annotations

from ferryman.http1.events import Headers


def h(*lines: str) -> Headers:
    """``h("Cache-Control: max-age=60", "Vary: Accept")`` -> ``[(b"Cache-Control", b"max-age=60"), ...]``."""
    out: Headers = []
    for line in lines:
        name, _, value = line.partition(":")
        out.append((name.encode(), value.strip().encode()))
    return out
