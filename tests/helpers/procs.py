"""Real processes for tests: ferryman itself and an nginx origin, ready-checked by port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.helpers.wait import wait_port

REPO = Path(__file__).resolve().parents[2]


def fd_count(pid: int) -> int:
    """How many descriptors process ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def free_port() -> int:
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

    def write_config(self, cfg: dict[str, object]) -> None:
        self.config_path.write_text(yaml.safe_dump(cfg))

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def base_config(port: int, log_path: Path, **overrides: object) -> dict[str, object]:
    cfg: dict[str, object] = {
        "listeners": [{"listen": f"127.0.0.1:{port}", "mode": "forward"}],
        "access_log": {"path": str(log_path), "format": "json"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            merged = dict(cfg[key])  # type: ignore[arg-type]
            merged.update(value)
            cfg[key] = merged
        else:
            cfg[key] = value
    return cfg


@contextmanager
def run_ferryman(tmp: Path, port: int | None = None, **overrides: object) -> Iterator[Ferryman]:
    """Start `ferryman run -c FILE` with a JSON access log; stop it afterwards.

    ``port`` is the listener's (free by default); give it when the config must name it
    (a loop test puts the proxy's own port in ``forward.connect_ports`` or ``forward.parent``).
    """
    port = free_port() if port is None else port
    log_path = tmp / "access.log"
    cfg_path = tmp / "ferryman.yaml"
    cfg = base_config(port, log_path, **overrides)
    listeners = cfg.get("listeners")
    if isinstance(listeners, list) and listeners:
        # Overridden listeners: readiness is the first one's port.
        port = int(str(listeners[0]["listen"]).rsplit(":", 1)[1])
    cfg_path.write_text(yaml.safe_dump(cfg))
    stderr_path = tmp / "ferryman.stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ferryman", "run", "-c", str(cfg_path)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=tmp,
        )
    fm = Ferryman(proc, port, cfg_path, log_path, stderr_path)
    try:
        wait_port(port, proc)
        yield fm
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
