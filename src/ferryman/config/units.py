"""Durations and sizes as the YAML file writes them ("10s", "32KiB"); networks; upgrade protocols."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
}


def _duration(v: object) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a duration such as 10s, 500ms or 2m")
    if isinstance(v, int | float):
        secs = float(v)
    elif isinstance(v, str) and (m := _DUR.match(v)):
        unit = m.group(2) or "s"
        secs = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    else:
        raise ValueError(f"expected a duration such as 10s, 500ms or 2m, got {v!r}")
    if not math.isfinite(secs) or secs <= 0:
        raise ValueError("a duration must be a positive, finite number")
    return secs


def _size(v: object) -> int:
    if isinstance(v, bool):
        raise ValueError("expected a size such as 64KiB or 10MB")
    if isinstance(v, int):
        n = v
    elif isinstance(v, str) and (m := _SIZE.match(v)):
        unit = m.group(2).lower() if m.group(2) else None
        n = int(m.group(1)) * _SIZE_UNITS[unit]
    else:
        raise ValueError(f"expected a size such as 64KiB or 10MB, got {v!r}")
    if n < 0:
        raise ValueError("a size cannot be negative")
    return n


Duration = Annotated[float, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size)]


def _networks(v: list[str]) -> list[str]:
    for n in v:
        try:
            ipaddress.ip_network(n, strict=False)
        except ValueError:
            raise ValueError(f"{n!r} is not an IP network such as 10.0.0.0/8 or ::1/128") from None
    return v


Networks = Annotated[list[str], AfterValidator(_networks)]


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _upgrades(v: list[str]) -> list[str]:
    out = []
    for p in v:
        name = p.strip().lower()
        if not _TOKEN.match(name):
            raise ValueError(f"{p!r} is not a protocol name such as websocket")
        if name == "h2c":
            raise ValueError("h2c is never forwarded (h2c smuggling): remove it from the list")
        out.append(name)
    return out


# Protocols a client's Upgrade may ask the next hop for (lower-cased names).
UpgradeProtocols = Annotated[list[str], AfterValidator(_upgrades)]
