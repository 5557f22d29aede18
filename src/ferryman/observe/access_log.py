"""The access log: one line per request or tunnel, buffered and written in batches.

Lines are formatted only when logging is on and collected in a list that is
written with one call every `FLUSH_DELAY` seconds (or at once when the batch
is large), as nginx's `access_log ... buffer= flush=` does: one write syscall
for many requests instead of one each, at most 50 ms behind.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import IO

FLUSH_DELAY = 0.05
_BATCH = 512


@dataclass(frozen=True, slots=True)
class AccessLogPlan:
    enabled: bool
    path: str
    format: str


class AccessLog:
    __slots__ = ("enabled", "_json", "_buf", "_scheduled", "_out", "_own", "_ts_sec", "_ts_str")

    def __init__(self, cfg: AccessLogPlan) -> None:
        self.enabled = cfg.enabled and cfg.path not in ("off", "")
        self._json = cfg.format == "json"
        self._buf: list[str] = []
        self._scheduled = False
        self._own = False
        self._out: IO[str] | None = None
        if self.enabled:
            if cfg.path == "-":
                self._out = sys.stdout
            else:
                # Opened at start-up (lifecycle), never on the request path.
                self._out = open(cfg.path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
                self._own = True
        self._ts_sec = -1
        self._ts_str = ""

    def _timestamp(self, now: float) -> str:
        sec = int(now)
        if sec != self._ts_sec:
            self._ts_sec = sec
            if self._json:
                self._ts_str = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec))
            else:
                self._ts_str = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(sec))
        return self._ts_str

    def log(
        self,
        client: str,
        user: str,
        method: str,
        target: str,
        version: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        duration: float,
        connect: float | None,
        first_byte: float | None,
        cache: str,
        upstream: str,
        error: str,
    ) -> None:
        ts = self._timestamp(time.time())
        if self._json:
            line = json.dumps(
                {
                    "time": ts, "client": client, "user": user, "method": method,
                    "target": target, "version": version, "status": status,
                    "bytes_in": bytes_in, "bytes_out": bytes_out,
                    "duration_ms": round(duration * 1000, 3),
                    "connect_ms": None if connect is None else round(connect * 1000, 3),
                    "first_byte_ms": None if first_byte is None else round(first_byte * 1000, 3),
                    "cache": cache, "upstream": upstream, "error": error,
                },
                separators=(",", ":"),
            )
        else:
            c = "-" if connect is None else f"{connect * 1000:.1f}"
            fb = "-" if first_byte is None else f"{first_byte * 1000:.1f}"
            line = (
                f'{client} - {user or "-"} [{ts}] "{method} {target} HTTP/{version}" '
                f"{status} {bytes_out} {bytes_in} {duration * 1000:.1f}ms "
                f'connect={c} first_byte={fb} cache={cache or "-"} upstream={upstream or "-"}'
                + (f' error="{error}"' if error else "")
            )
        buf = self._buf
        buf.append(line)
        if len(buf) >= _BATCH:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._buf or self._out is None:
            return
        data = "\n".join(self._buf) + "\n"
        self._buf.clear()
        try:
            self._out.write(data)
            self._out.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.flush()
        if self._own and self._out is not None:
            self._out.close()
            self._out = None
