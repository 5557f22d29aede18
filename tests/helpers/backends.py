"""A ferryman started as a reverse proxy (`run_reverse`), its config blocks, and
``ferryman check``.  (The backends themselves are `tests.helpers.origin.Backend`.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.helpers.procs import REPO, Ferryman, free_port
from tests.helpers.wait import wait_port

T = TypeVar("T")


# ------------------------------------------------------------------ ferryman


def child_env() -> dict[str, str]:
    """The environment for ferryman children: this checkout's ``src`` first on the path
    (a relative PYTHONPATH would not survive the children's ``cwd``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    return env


def ferryman_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ferryman", *args]


def upstream(*urls: str, **extra: Any) -> dict[str, Any]:
    """An upstream block: ``upstream(a.url, b.url, balance="least_conn")``."""
    return {"servers": [{"url": u} for u in urls], **extra}


def reverse_config(port: int, log_path: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listeners": [{"listen": f"127.0.0.1:{port}", "mode": "reverse"}],
        "access_log": {"path": str(log_path), "format": "json"},
        "timeouts": {"shutdown_grace": "1s"},
    }
    if "tls" in overrides:
        cfg["listeners"][0]["tls"] = overrides.pop("tls")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@contextmanager
def run_reverse(tmp: Path, **overrides: Any) -> Iterator[Ferryman]:
    """`ferryman run -c FILE` with one reverse listener (``tls=`` sets its TLS block).

    Give ``routes=`` and ``upstreams=``; other keys override the file's top level.
    ``Ferryman.write_config(reverse_config(fm.port, fm.log_path, ...))`` plus
    ``fm.reload()`` changes it later.
    """
    port = free_port()
    log_path = tmp / "access.log"
    cfg_path = tmp / "ferryman.yaml"
    cfg_path.write_text(yaml.safe_dump(reverse_config(port, log_path, **overrides)))
    stderr_path = tmp / "ferryman.stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            ferryman_cmd("run", "-c", str(cfg_path)),
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=tmp,
            env=child_env(),
        )
    fm = Ferryman(proc, port, cfg_path, log_path, stderr_path)
    try:
        try:
            wait_port(port, proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; stderr:\n{fm.stderr()}") from None
        yield fm
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ferryman_check(tmp: Path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``ferryman check -c FILE`` on ``cfg``; the completed process (text mode)."""
    path = tmp / "check.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        ferryman_cmd("check", "-c", str(path)),
        capture_output=True, text=True, timeout=30, cwd=tmp, check=False, env=child_env(),
    )
