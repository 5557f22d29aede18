"""Real processes for tests: the one ferryman launcher (`launch`, and `run_ferryman` /
`run_reverse` / `run_config` over it; `ferryman_cli` for a run to its end), an nginx
origin, and measures of a process (descriptors, RSS).  Each is ready-checked by its port
and stopped on leaving."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.wait import wait_for, wait_port

REPO = Path(__file__).resolve().parents[2]


def fd_count(pid: int) -> int:
    """How many descriptors process ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


_PICK = random.SystemRandom()  # not the `random` a test may seed: concurrent suites would pick alike


def _below_ephemeral() -> range | None:
    """Ports below the kernel's ephemeral range: never handed out by a ``bind`` to port 0 (the
    test origins) nor to an outgoing connection, so nothing takes one between `free_port`
    choosing it and the process it is for binding it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(10_000, low) if low > 12_000 else None


def free_port() -> int:
    """A port free on 127.0.0.1 for a process the test starts (ferryman, nginx, redis...)."""
    ports = _below_ephemeral() or ()
    for _ in range(100 if ports else 0):
        port = _PICK.choice(ports)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Ferryman:
    proc: subprocess.Popen[bytes]
    port: int
    config_path: Path
    log_path: Path
    stderr_path: Path
    extra_ports: list[int] = field(default_factory=list)

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def write_config(self, cfg: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(cfg))

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


# -- the one launcher -----------------------------------------------------------------------
def child_env() -> dict[str, str]:
    """The environment for ferryman children: this checkout's ``src`` first on the path
    (a relative PYTHONPATH would not survive the children's ``cwd``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    return env


def ferryman_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ferryman", *args]


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def launch(tmp: Path, *args: str, port: int, log_path: Path | None = None, stderr_path: Path | None = None,
           preexec_fn: Callable[[], None] | None = None) -> Iterator[Ferryman]:
    """``python -m ferryman ARGS`` in ``tmp`` (stderr to a file), ready once its log says it
    listens on ``port`` and ``port`` accepts (`PortTaken` if it could not bind it); stopped
    with SIGTERM (then SIGKILL) on leaving.  `run_ferryman` and `run_reverse` write a config
    file and launch ``run -c`` on it; a one-liner launches its own arguments."""
    stderr_path = stderr_path or tmp / "ferryman.stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            ferryman_cmd(*args), stdout=subprocess.DEVNULL, stderr=err, cwd=tmp, env=child_env(),
            preexec_fn=preexec_fn,
        )
    fm = Ferryman(proc, port, tmp / "ferryman.yaml", log_path or tmp / "access.log", stderr_path)
    try:
        try:
            wait_for(lambda: _says_listening(fm), 30, f"ferryman listening on {port}")
            wait_port(port, proc)
        except (RuntimeError, TimeoutError) as exc:
            err = fm.stderr()
            kind = PortTaken if proc.poll() is not None and "in use" in err else RuntimeError
            raise kind(f"{exc}; stderr:\n{err}") from None
        yield fm
    finally:
        stop_process(proc)


class PortTaken(RuntimeError):
    """ferryman could not bind its port: something else took it after `free_port` chose it."""


def _says_listening(fm: Ferryman) -> bool:
    """Whether ferryman's own log says it listens on ``fm.port`` (something else accepting on
    that port, having taken it first, must not pass for a ready ferryman)."""
    if fm.proc.poll() is not None:
        raise RuntimeError(f"process exited with {fm.proc.returncode} before listening on {fm.port}")
    needle = f":{fm.port} ("
    return any("listening on" in line and needle in line for line in fm.stderr().splitlines())


@contextmanager
def run_config(tmp: Path, cfg: dict[str, Any], port: int, **launch_kw: Any) -> Iterator[Ferryman]:
    """`launch` ``run -c tmp/ferryman.yaml`` with ``cfg`` written there; ``port`` is the
    listener that tells it is ready."""
    path = tmp / "ferryman.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with launch(tmp, "run", "-c", str(path), port=port, **launch_kw) as fm:
        yield fm


def _merge(cfg: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def base_config(port: int, log_path: Path, **overrides: Any) -> dict[str, Any]:
    """A forward listener on ``port`` with a JSON access log; ``overrides`` merged on top."""
    return _merge({
        "listeners": [{"listen": f"127.0.0.1:{port}", "mode": "forward"}],
        "access_log": {"path": str(log_path), "format": "json"},
    }, overrides)


def reverse_config(port: int, log_path: Path, **overrides: Any) -> dict[str, Any]:
    """A reverse listener on ``port`` (``tls=`` sets its TLS block), a JSON access log and a
    1 s shutdown grace; give ``routes=`` and ``upstreams=``; other keys override the top level."""
    cfg: dict[str, Any] = {
        "listeners": [{"listen": f"127.0.0.1:{port}", "mode": "reverse"}],
        "access_log": {"path": str(log_path), "format": "json"},
        "timeouts": {"shutdown_grace": "1s"},
    }
    if "tls" in overrides:
        cfg["listeners"][0]["tls"] = overrides.pop("tls")
    return _merge(cfg, overrides)


def upstream(*urls: str, **extra: Any) -> dict[str, Any]:
    """An upstream block: ``upstream(a.url, b.url, balance="least_conn")``."""
    return {"servers": [{"url": u} for u in urls], **extra}


def _ready_port(cfg: dict[str, Any], port: int) -> int:
    listeners = cfg.get("listeners")
    if isinstance(listeners, list) and listeners:
        # Overridden listeners: readiness is the first one's port.
        return int(str(listeners[0]["listen"]).rsplit(":", 1)[1])
    return port


@contextmanager
def _on_a_free_port(port: int | None, start: Callable[[int], AbstractContextManager[Ferryman]]
                    ) -> Iterator[Ferryman]:
    """``start(port)``; with no ``port`` given, on a free port, and on a fresh one (3 tries in
    all) if another process took the one chosen before ferryman bound it."""
    for attempt in range(3):
        with ExitStack() as stack:
            try:
                fm = stack.enter_context(start(free_port() if port is None else port))
            except PortTaken:
                if port is not None or attempt == 2:
                    raise
                continue
            yield fm
            return


@contextmanager
def run_ferryman(tmp: Path, port: int | None = None, **overrides: Any) -> Iterator[Ferryman]:
    """`ferryman run -c FILE` with a forward listener and a JSON access log (`base_config`).

    ``port`` is the listener's (free by default); give it when the config must name it
    (a loop test puts the proxy's own port in ``forward.connect_ports`` or ``forward.parent``).
    """

    def start(p: int) -> AbstractContextManager[Ferryman]:
        cfg = base_config(p, tmp / "access.log", **overrides)
        return run_config(tmp, cfg, _ready_port(cfg, 0))

    if port is None and "listeners" in overrides:
        port = free_port()  # the listeners given do not use it: no other port would help
    with _on_a_free_port(port, start) as fm:
        yield fm


@contextmanager
def run_reverse(tmp: Path, port: int | None = None, **overrides: Any) -> Iterator[Ferryman]:
    """`ferryman run -c FILE` with one reverse listener (`reverse_config`).
    ``fm.write_config(reverse_config(fm.port, fm.log_path, ...))`` plus ``fm.reload()``
    changes it later."""

    def start(p: int) -> AbstractContextManager[Ferryman]:
        return run_config(tmp, reverse_config(p, tmp / "access.log", **overrides), p)

    with _on_a_free_port(port, start) as fm:
        yield fm


def ferryman_cli(tmp: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python -m ferryman ARGS`` in ``tmp`` to its end (``check``, a start that must fail);
    the completed process, in text mode."""
    return subprocess.run(
        ferryman_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=tmp, check=False,
        env=child_env(),
    )


def ferryman_check(tmp: Path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``ferryman check -c FILE`` on ``cfg``; the completed process (text mode)."""
    path = tmp / "check.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return ferryman_cli(tmp, "check", "-c", str(path))


NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 512; }}
http {{
  access_log {tmp}/access.log;
  keepalive_requests 100000;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location = /echo {{ client_max_body_size 0; return 200 "$request_method $request_uri\\n"; }}
    location = /headers {{
      return 200
        "host=$http_host via=$http_via conn=$http_connection te=$http_te pc=$http_proxy_connection x=$http_x_secret\\n";
    }}
  }}
}}
"""


def nginx_bin() -> str:
    for cand in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if cand and os.path.exists(cand):
            return cand
    raise RuntimeError("nginx is not installed (.ci/run installs nginx-light)")


@dataclass
class Nginx:
    port: int
    root: Path
    tmp: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        p = self.tmp / "access.log"
        return p.read_text() if p.exists() else ""


@contextmanager
def run_nginx(tmp: Path) -> Iterator[Nginx]:
    root = tmp / "www"
    root.mkdir(parents=True, exist_ok=True)
    (root / "small").write_text("hello from nginx\n")
    (root / "1m").write_bytes(os.urandom(1 << 20))
    port = free_port()
    conf = tmp / "nginx.conf"
    # As root, nginx's workers would drop to 'nobody', who cannot read pytest's 0700 dirs.
    user = "user root root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root, user=user))
    proc = subprocess.Popen(
        [nginx_bin(), "-p", str(tmp), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc)
        yield Nginx(port, root, tmp)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- memory of the ferryman process ---------------------------------------------------
class RssSampler:
    """Samples a ferryman's VmRSS on a thread every ``interval`` seconds; keeps the peak."""

    def __init__(self, fm: Ferryman, interval: float = 0.02) -> None:
        self.fm = fm
        self.interval = interval
        self.baseline = fm.rss_kib()
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with suppress(OSError, RuntimeError):
                self.peak = max(self.peak, self.fm.rss_kib())
                self.samples += 1

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(5)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / 1024
