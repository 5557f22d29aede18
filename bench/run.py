#!/usr/bin/env python3
"""Loopback benchmarks: wrk through ferryman, next to nginx (and haproxy) in the same run.

Layout of one run (2 cores):
  core 0 (--proxy-cpu): the proxy under test (ferryman, or haproxy / a caching nginx as references)
  core 1 (--load-cpu):  the nginx origin and wrk
The `reverse-*-w2` scenario (ferryman with `workers: 2`) is not pinned and uses both cores.

Every process is started in its own session and killed (by process group) at the end.
All traffic stays on 127.0.0.1. Stdlib only. See bench/README.md.
"""

import argparse
import base64
import csv
import datetime
import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
FORWARD_LUA = BENCH / "forward.lua"
HOST = "127.0.0.1"
SMALL_SIZE = 100
ONE_MIB = 1 << 20
CSV_COLUMNS = (
    "date",
    "commit",
    "scenario",
    "server",
    "req_s",
    "mb_s",
    "p50_ms",
    "p99_ms",
    "rss_mib",
)
PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")

# The origin serves the same files under /cache/ with `expires 1h` (cacheable for an hour)
# and an access log of its own, used to count cache misses during the load.
CACHE_PREFIX = "/cache"
SCALE_WORKERS = 2  # workers: N of the reverse-*-w2 scenario

# Targets for ferryman (one core); the 1m target is in wrk's GB (GiB) per second.
TARGET_REQ_S = {"small-keepalive": 10_000.0, "small-newconn": 6_000.0}
TARGET_CACHE_SMALL_REQ_S = 20_000.0
TARGET_1M_GB_S = 1.0
TARGET_RSS_MIB = 30.0


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    short: str  # name inside cache scenario names (cache-small-memory)
    path: str
    connections: int
    close: bool
    body_size: int


WORKLOADS = (
    Workload("small-keepalive", "small", "/small", 50, False, SMALL_SIZE),
    Workload("small-newconn", "small-newconn", "/small", 50, True, SMALL_SIZE),
    Workload("1m", "1m", "/1m", 10, False, ONE_MIB),
)
ALL_WORKLOADS = tuple(w.name for w in WORKLOADS)


@dataclass(frozen=True, slots=True)
class Target:
    key: str  # group name for --scenarios, and the "<key>-idle" CSV row
    mode: str  # how requests are sent: direct | forward | reverse (origin-form)
    server: str  # nginx | ferryman | haproxy | nginx-proxy_cache
    optional: bool  # a server that fails to start is skipped, not failed
    workloads: tuple[str, ...] = ALL_WORKLOADS
    scenario: str = "{key}-{name}"  # format: key, name (workload), short (workload)
    cache: str = ""  # "" | ferryman | nginx: the hit check and miss counting apply
    cache_store: str = ""  # memory | disk (ferryman)
    workers: int = 1  # > 1: ferryman `run -c` with `workers: N`, not pinned
    ref: str = "direct"  # the key of the row the "vs nginx" column compares with
    control: str = ""  # "off" | "on": forward `run -c` without / with auth, rules, elite (issue 12)

    def scenario_name(self, wl: Workload) -> str:
        return self.scenario.format(key=self.key, name=wl.name, short=wl.short)

    @property
    def path_prefix(self) -> str:
        return CACHE_PREFIX if self.cache else ""


CACHE_WORKLOADS = ("small-keepalive", "1m")
TARGETS = (
    Target("direct", "direct", "nginx", False),
    Target("forward", "forward", "ferryman", False),
    Target("reverse", "reverse", "ferryman", True),
    Target(
        f"reverse-w{SCALE_WORKERS}",
        "reverse",
        "ferryman",
        True,
        workloads=("small-keepalive",),
        scenario=f"reverse-{{name}}-w{SCALE_WORKERS}",
        workers=SCALE_WORKERS,
    ),
    Target("reverse", "reverse", "haproxy", True),
    Target("forward", "forward", "pyceiling", True),
    Target("reverse", "reverse", "pyceiling", True),
    Target(
        "cache-memory",
        "reverse",
        "ferryman",
        True,
        workloads=CACHE_WORKLOADS,
        scenario="cache-{short}-memory",
        cache="ferryman",
        cache_store="memory",
        ref="nginx-cache",
    ),
    Target(
        "cache-disk",
        "reverse",
        "ferryman",
        True,
        workloads=("1m",),
        scenario="cache-{short}-disk",
        cache="ferryman",
        cache_store="disk",
        ref="nginx-cache",
    ),
    # Issue 12's benchmark: Basic auth (credential cache), 20 rules with a 100,000-entry
    # domains file and `anonymity: elite`, next to the same config without them.
    Target(
        "forward-control-off",
        "forward",
        "ferryman",
        True,
        workloads=("small-keepalive",),
        scenario="forward-control-off-{name}",
        control="off",
    ),
    Target(
        "forward-control",
        "forward",
        "ferryman",
        True,
        workloads=("small-keepalive",),
        scenario="forward-control-{name}",
        control="on",
        ref="forward-control-off",
    ),
    Target(
        "nginx-cache",
        "reverse",
        "nginx-proxy_cache",
        True,
        workloads=CACHE_WORKLOADS,
        scenario="nginx-cache-{short}",
        cache="nginx",
    ),
)
SERVERS = ("nginx", "ferryman", "pyceiling", "haproxy", "nginx-proxy_cache")
# The yardstick: a featureless uvloop + httptools proxy, kept beside the repository in shared/.
_CEILING_REL = Path("shared", "bench", "pyceiling.py")
PYCEILING = next(
    (d / _CEILING_REL for d in ROOT.parents if (d / _CEILING_REL).is_file()), ROOT.parent / _CEILING_REL
)
PYCEILING_FACTOR = 1.3  # ferryman, every feature on, is to beat pyceiling by this factor
CONTROL_FACTOR = 0.9  # forward-control (auth, rules, elite) within 10% of forward-control-off
CONTROL_DOMAINS = 100_000  # entries of the forward-control domains file
BENCH_USER, BENCH_PASSWORD = "bench", "bench-password"
BENCH_AUTH = "Basic " + base64.b64encode(f"{BENCH_USER}:{BENCH_PASSWORD}".encode()).decode()


@dataclass(slots=True)
class Result:
    target: Target
    workload: Workload
    status: str  # ok | warn | failed | skipped
    note: str = ""
    req_s: float | None = None
    mb_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    rss_idle: float | None = None
    rss_after: float | None = None

    @property
    def scenario(self) -> str:
        return self.target.scenario_name(self.workload)

    @property
    def server(self) -> str:
        return self.target.server


class StartError(Exception):
    pass


# ---------------------------------------------------------------- processes


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_ENV}
    env.update(extra)
    return env


class Proc:
    """A process started in its own session; stopped by signalling its process group."""

    def __init__(self, name: str, cmd: list[str], logdir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.cmd = cmd
        self.log = logdir / f"{name}.out"
        self.stopped = False
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=child_env(**(env or {})),
                cwd=logdir,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 6) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def wait_port(self, port: int, timeout: float, sockets: int = 1) -> None:
        """Poll until the port accepts a connection and has `sockets` listening sockets
        (SO_REUSEPORT workers each bind their own); on failure stop the process and raise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                self.stop()
                output = self.tail() or "(no output)"
                raise StartError(f"{self.name} exited with {self.popen.returncode}: {output}")
            try:
                with socket.create_connection((HOST, port), timeout=0.2):
                    pass
                if sockets <= 1 or listening_sockets(port) >= sockets:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise StartError(
            f"{self.name} not listening on {HOST}:{port} ({sockets} socket(s)) after {timeout:.0f}s"
        )

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.popen.poll() is None:
            signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # Leftover children (workers) of the group, then the leader if still there.
        signal_group(self.pid, signal.SIGKILL)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            print(f"warning: {self.name} (pid {self.pid}) did not exit", file=sys.stderr)


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def descendants(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                pass
    return pids


def rss_mib(pid: int) -> float | None:
    """VmRSS of pid and its descendants, in MiB (None if unreadable)."""
    total_kib, seen = 0, False
    for p in descendants(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        if m:
            total_kib += int(m.group(1))
            seen = True
    return total_kib / 1024 if seen else None


def cpu_busy(interval: float = 0.5) -> float:
    """Fraction of all CPU time spent busy over a short interval (0.0 if unreadable)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = total1 - total0
    return 0.0 if total <= 0 else 1.0 - (idle1 - idle0) / total


def listening_sockets(port: int) -> int:
    """How many IPv4 TCP sockets are in LISTEN on the port (from /proc/net/tcp)."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return 0
    count = 0
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and fields[1].endswith(f":{port:04X}"):
            count += 1
    return count


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pin(cpu: int | None, cmd: list[str]) -> list[str]:
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


# ---------------------------------------------------------------- servers


def nginx_conf(prefix: Path, http: str) -> str:
    """A complete nginx.conf for one worker, everything (pid, logs, temp paths) under prefix."""
    temps = "\n".join(
        f"    {kind}_temp_path {prefix}/nginx-temp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (prefix / "nginx-temp").mkdir()
    return f"""\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
worker_rlimit_nofile 16384;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 100000;
{temps}
{http}
}}
"""


def run_nginx(name: str, prefix: Path, conf: str, port: int, cpu: int | None, timeout: float) -> Proc:
    path = prefix / "nginx.conf"
    path.write_text(conf)
    cmd = ["nginx", "-p", f"{prefix}/", "-c", str(path), "-e", f"{prefix}/nginx-error.log"]
    proc = Proc(name, pin(cpu, cmd), prefix)
    proc.wait_port(port, timeout)
    return proc


def origin_cache_log(tmp: Path) -> Path:
    return tmp / "origin-cache-access.log"


def start_nginx(tmp: Path, port: int, cpu: int | None, timeout: float) -> Proc:
    www = tmp / "www"
    www.mkdir()
    (www / "small").write_bytes((b"ferryman bench small body " * 4)[: SMALL_SIZE - 1] + b"\n")
    (www / "1m").write_bytes(os.urandom(ONE_MIB))
    # /cache/*: the same files, cacheable for an hour (Expires + Cache-Control: max-age=3600),
    # logged so that the harness can count how many requests reached the origin.
    http = f"""\
    open_file_cache max=16 inactive=60s;
    open_file_cache_valid 60s;
    server {{
        listen {HOST}:{port} backlog=4096;
        root {www};
        # Proxied rows must be proxied even with the cache on (forward mode caches by default):
        # no-store keeps every proxy's cache lookup in the path but never turns them into hits.
        location / {{ add_header Cache-Control no-store; }}
        location {CACHE_PREFIX}/ {{
            alias {www}/;
            expires 1h;
            access_log {origin_cache_log(tmp)};
        }}
    }}"""
    return run_nginx("nginx", tmp, nginx_conf(tmp, http), port, cpu, timeout)


def start_nginx_cache(tmp: Path, port: int, origin: int, cpu: int | None, timeout: float) -> Proc:
    """nginx as a caching reverse proxy (proxy_cache) in front of the origin, one worker."""
    prefix = tmp / "nginx-proxy_cache"
    prefix.mkdir()
    # Access log on (to a file), like ferryman's and haproxy's.
    http = f"""\
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=bench:10m max_size=1g inactive=1h
                     use_temp_path=off;
    upstream origin {{
        server {HOST}:{origin};
        keepalive 32;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        access_log {prefix}/access.log combined;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}"""
    return run_nginx("nginx-proxy_cache", prefix, nginx_conf(prefix, http), port, cpu, timeout)


def start_haproxy(tmp: Path, port: int, origin: int, cpu: int | None, timeout: float) -> Proc:
    conf = tmp / "haproxy.cfg"
    conf.write_text(f"""\
global
    nbthread 1
    maxconn 4000
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend bench
    bind {HOST}:{port}
    default_backend origin
backend origin
    server nginx {HOST}:{origin}
""")
    # Access log on (stdout -> file in the temp dir), like ferryman's.
    proc = Proc("haproxy-reverse", pin(cpu, ["haproxy", "-db", "-f", str(conf)]), tmp)
    proc.wait_port(port, timeout)
    return proc


def start_pyceiling(args: argparse.Namespace, tmp: Path, port: int, origin: int) -> Proc:
    """The featureless reference proxy, run by the same python as ferryman (it needs httptools)."""
    path = args.pyceiling
    if not path.is_file():
        raise StartError(f"{path} not found (use --pyceiling PATH)")
    cmd = [args.ferryman_python, str(path), "--listen", f"{HOST}:{port}", "--upstream", f"{HOST}:{origin}"]
    proc = Proc("pyceiling", pin(args.proxy_cpu, cmd), tmp)
    proc.wait_port(port, args.ready_timeout)
    return proc


def ferryman_base(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The command prefix that runs ferryman, and the extra environment it needs."""
    if args.ferryman is not None:
        return [str(args.ferryman)], {}
    pythonpath = str(ROOT / "src")
    if old := os.environ.get("PYTHONPATH"):
        pythonpath += os.pathsep + old
    return [args.ferryman_python, "-m", "ferryman"], {"PYTHONPATH": pythonpath}


def ferryman_origin(args: argparse.Namespace) -> str:
    """Where the ferryman package that will run is imported from (raises StartError)."""
    base, env = ferryman_base(args)
    if args.ferryman is not None:
        return str(args.ferryman)
    code = "import ferryman, sys; print(ferryman.__file__)"
    try:
        out = subprocess.run(
            [base[0], "-c", code], capture_output=True, text=True, timeout=30, env=child_env(**env)
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StartError(f"{base[0]}: {e}") from e
    if out.returncode != 0:
        raise StartError(f"{base[0]} cannot import ferryman: {out.stderr.strip()[-300:]}")
    return f"{base[0]} -m ferryman ({out.stdout.strip()})"


def control_forward(tmp: Path, on: bool) -> dict[str, object]:
    """The ``forward`` section of the forward-control scenarios: with ``on``, proxy auth
    (one bcrypt user among 1,000), 20 rules (one with a 100,000-entry domains file, none
    matching the origin before the last) and ``anonymity: elite``; without, the defaults."""
    if not on:
        return {}
    import bcrypt  # ferryman's own dependency, in the python that runs the bench

    users = tmp / "bench.htpasswd"
    salt = bcrypt.gensalt(5)
    filler = bcrypt.hashpw(b"filler", salt).decode()
    lines = [f"{BENCH_USER}:{bcrypt.hashpw(BENCH_PASSWORD.encode(), salt).decode()}"]
    lines += [f"user{i}:{filler}" for i in range(999)]
    users.write_text("\n".join(lines) + "\n")
    domains = tmp / "bench-domains.txt"
    with domains.open("w") as f:
        for i in range(CONTROL_DOMAINS):
            f.write(f"ads{i}.tracker{i % 997}.example\n")
    rules: list[dict[str, object]] = [
        {"name": "blocklist", "deny": {"domains_file": str(domains)}},
        {"name": "no-smtp", "deny": {"ports": [25, 465, 587]}},
        {"name": "no-trace", "deny": {"methods": ["TRACE", "TRACK"]}},
        {"name": "admin-paths", "deny": {"path_prefix": ["/admin/", "/wp-admin/"]}},
        {"name": "exe", "deny": {"path_regex": [r"\.(exe|msi|scr)$"]}},
        {"name": "social", "deny": {"domains": [".facebook.example", ".tiktok.example"]}},
        {"name": "shops", "deny": {"domain_regex": [r"^shop[0-9]+\."],
                                   "time": {"from": "00:00", "to": "00:01"}}},
        {"name": "tor", "deny": {"headers": {"X-Tor": True}}},
        {"name": "lab", "allow": {"groups": ["lab"], "domains": [".lab.example"]}},
        {"name": "guests", "deny": {"users": ["guest"]}},
    ]
    for i in range(9):
        rules.append({"name": f"site{i}", "deny": {"domains": [f".site{i}.example", f"cdn{i}.example"]}})
    rules.append({"name": "everyone", "allow": {}})
    assert len(rules) == 20
    return {
        "auth": {"htpasswd": str(users), "groups": {"lab": [BENCH_USER]}},
        "rules": rules,
        "anonymity": "elite",
    }


def start_ferryman(args: argparse.Namespace, tmp: Path, target: Target, port: int, origin: int) -> Proc:
    base, env = ferryman_base(args)
    name = f"ferryman-{target.key}"
    access_log = str(tmp / f"{name}-access.log")
    if target.control:
        # `run -c`, pinned like the one-liners: both rows of the pair start the same way.
        config = {
            "listeners": [{"name": "bench", "listen": f"{HOST}:{port}", "mode": "forward"}],
            "forward": control_forward(tmp, target.control == "on"),
            "access_log": {"enabled": True, "path": access_log, "format": args.log_format},
        }
        conf = tmp / f"{name}.yaml"
        conf.write_text(json.dumps(config, indent=2) + "\n")
        proc = Proc(name, pin(args.proxy_cpu, [*base, "run", "-c", str(conf)]), tmp, env)
        proc.wait_port(port, args.ready_timeout)
        return proc
    if target.workers > 1:
        # `run -c` with a config file (JSON is YAML); not pinned: the workers share both cores.
        config = {
            "workers": target.workers,
            "listeners": [{"name": "bench", "listen": f"{HOST}:{port}", "mode": target.mode}],
            "routes": [{"name": "default", "upstream": "default"}],
            "upstreams": {"default": {"servers": [{"url": f"http://{HOST}:{origin}"}]}},
            "access_log": {"enabled": True, "path": access_log, "format": args.log_format},
        }
        conf = tmp / f"{name}.yaml"
        conf.write_text(json.dumps(config, indent=2) + "\n")
        proc = Proc(name, [*base, "run", "-c", str(conf)], tmp, env)
        proc.wait_port(port, args.ready_timeout, sockets=target.workers)
        return proc
    cmd = [*base, target.mode, "--listen", f"{HOST}:{port}"]
    if target.mode == "reverse":
        cmd += ["--to", f"http://{HOST}:{origin}"]
    if target.cache_store == "memory":
        cmd += ["--cache"]
    elif target.cache_store == "disk":
        cache_dir = tmp / f"{name}-store"
        cache_dir.mkdir()
        cmd += ["--cache-dir", str(cache_dir)]
    cmd += ["--access-log", access_log]
    cmd += ["--log-format", args.log_format]
    proc = Proc(name, pin(args.proxy_cpu, cmd), tmp, env)
    proc.wait_port(port, args.ready_timeout)
    return proc


def start_target(args: argparse.Namespace, tmp: Path, target: Target, port: int, origin: int) -> Proc:
    if target.server == "haproxy":
        if not shutil.which("haproxy"):
            raise StartError("haproxy not found on PATH")
        return start_haproxy(tmp, port, origin, args.proxy_cpu, args.ready_timeout)
    if target.server == "pyceiling":
        return start_pyceiling(args, tmp, port, origin)
    if target.server == "nginx-proxy_cache":
        return start_nginx_cache(tmp, port, origin, args.proxy_cpu, args.ready_timeout)
    return start_ferryman(args, tmp, target, port, origin)


# ---------------------------------------------------------------- load


def curl_once(
    mode: str, port: int, origin: int, wl: Workload, path: str, headers: Sequence[str] = ()
) -> tuple[str | None, str]:
    """One curl request like the load will send: (error text or None, response head)."""
    cmd = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-w",
        "\n%{http_code} %{size_download}",
        "--max-time",
        "5",
    ]
    if wl.close:
        cmd += ["-H", "Connection: close"]
    for h in headers:
        cmd += ["-H", h]
    if mode == "forward":
        cmd += ["-x", f"http://{HOST}:{port}", f"http://{HOST}:{origin}{path}"]
    else:
        cmd += ["--noproxy", "*", f"http://{HOST}:{port}{path}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=15, env=child_env())
    except subprocess.TimeoutExpired:
        return "check request timed out", ""
    head, _, got = out.stdout.strip().rpartition("\n")
    if out.returncode != 0 or got != f"200 {wl.body_size}":
        err = out.stderr.strip().splitlines()[-1:] or [""]
        return f"check request got '{got}' (curl rc={out.returncode}) {err[0]}".strip(), head
    return None, head


# How a cache hit shows in the response head: ferryman's RFC 9211 Cache-Status, and the
# X-Cache-Status header that the proxy_cache config adds from $upstream_cache_status.
HIT_HEADER = {
    "ferryman": ("Cache-Status", re.compile(r"^cache-status:[ \t]*ferryman;[ \t]*hit\b.*$", re.I | re.M)),
    "nginx": ("X-Cache-Status", re.compile(r"^x-cache-status:[ \t]*HIT\b.*$", re.I | re.M)),
}


def check_hit(target: Target, port: int, origin: int, wl: Workload, tries: int = 20) -> str | None:
    """Warm the cache with one request, then expect a hit (a disk store may publish the
    entry a moment after the first response ends, so retry for up to ~2 s)."""
    path = target.path_prefix + wl.path
    if err := curl_once(target.mode, port, origin, wl, path)[0]:
        return f"warm-up {err}"
    name, hit = HIT_HEADER[target.cache]
    head = ""
    for _ in range(tries):
        err, head = curl_once(target.mode, port, origin, wl, path)
        if err:
            return f"hit check: {err}"
        if hit.search(head):
            return None
        time.sleep(0.1)
    seen = [ln.strip() for ln in head.splitlines() if ln.lower().startswith(name.lower() + ":")]
    return f"no cache hit after warming: {name} is {seen[-1] if seen else 'missing'!r}"


def count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def wrk_cmd(
    args: argparse.Namespace, mode: str, port: int, origin: int, wl: Workload, path: str, duration: float,
    headers: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{wl.connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    env = child_env()
    if wl.close:
        cmd += ["-H", "Connection: close"]
    for h in headers:
        cmd += ["-H", h]
    if mode == "forward":
        cmd += ["-s", str(FORWARD_LUA), f"http://{HOST}:{port}/"]
        env["FERRYMAN_BENCH_TARGET"] = f"http://{HOST}:{origin}{path}"
    else:
        cmd += [f"http://{HOST}:{port}{path}"]
    return pin(args.load_cpu, cmd), env


def run_bounded(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -1, out + "\n(killed: exceeded time bound)"
    finally:
        signal_group(proc.pid, signal.SIGKILL)
    return proc.returncode, out


TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
SIZE_UNITS = {"B": 1 / 1024**2, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0, "TB": 1024.0**2}


def parse_wrk(out: str) -> dict[str, float]:
    """Requests/sec, Transfer/sec (MiB/s; wrk's units are binary), p50/p99 (ms), errors."""
    res: dict[str, float] = {}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        res["req_s"] = float(m.group(1))
    if m := re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", out):
        res["mb_s"] = float(m.group(1)) * SIZE_UNITS[m.group(2)]
    for pct in ("50", "99"):
        if m := re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M):
            res[f"p{pct}_ms"] = float(m.group(1)) * TIME_UNITS[m.group(2)]
    if m := re.search(r"(\d+) requests in", out):
        res["requests"] = float(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        for name, value in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
            res[f"err_{name}"] = float(value)
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        res["non2xx"] = float(m.group(1))
    return res


def run_load(
    args: argparse.Namespace,
    target: Target,
    port: int,
    origin: int,
    wl: Workload,
    proc: Proc,
    rss_idle: float | None,
    tmp: Path,
) -> Result:
    res = Result(target, wl, "failed", rss_idle=rss_idle)
    if not proc.alive():
        res.note = f"{proc.name} is not running: {proc.tail()}"
        return res
    path = target.path_prefix + wl.path
    headers = [f"Proxy-Authorization: {BENCH_AUTH}"] if target.control == "on" else []
    err = (
        check_hit(target, port, origin, wl)
        if target.cache
        else curl_once(target.mode, port, origin, wl, path, headers)[0]
    )
    if err:
        res.note = err
        return res
    if args.warmup > 0:
        cmd, env = wrk_cmd(args, target.mode, port, origin, wl, path, args.warmup, headers)
        run_bounded(cmd, env, args.warmup + 30)
    origin_before = count_lines(origin_cache_log(tmp))
    cmd, env = wrk_cmd(args, target.mode, port, origin, wl, path, args.duration, headers)
    rc, out = run_bounded(cmd, env, args.duration + 30)
    misses = count_lines(origin_cache_log(tmp)) - origin_before
    res.rss_after = rss_mib(proc.pid)
    if args.verbose:
        print(out, file=sys.stderr)
    parsed = parse_wrk(out)
    requests = parsed.get("requests", 0.0)
    if rc != 0 or "req_s" not in parsed or requests == 0:
        res.note = f"wrk rc={rc}: " + " | ".join(out.strip().splitlines()[-3:])
        return res
    res.req_s, res.mb_s = parsed["req_s"], parsed.get("mb_s")
    res.p50_ms, res.p99_ms = parsed.get("p50_ms"), parsed.get("p99_ms")
    errors = {k[4:]: int(v) for k, v in parsed.items() if k.startswith("err_") and v}
    non2xx = int(parsed.get("non2xx", 0))
    notes = [f"{n} {k} errors" for k, n in errors.items()]
    if non2xx:
        notes.append(f"{non2xx} non-2xx")
    bad = non2xx + sum(errors.values())
    if target.cache and misses:
        # Requests that reached the origin during the load were not served from the cache.
        notes.append(f"{misses} of {int(requests)} requests reached the origin (cache misses)")
        bad += misses
    res.status = "ok" if bad == 0 else ("warn" if bad <= 0.01 * requests else "failed")
    if not proc.alive():
        res.status, notes = "failed", [*notes, f"{proc.name} died during load: {proc.tail()}"]
    res.note = "; ".join(notes)
    return res


# ---------------------------------------------------------------- reporting


def git_commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if rev.returncode != 0:
            return "none"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "pyproject.toml"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "none"


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def append_csv(path: Path, rows: list[dict[str, str]]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def csv_rows(
    results: list[Result], date: str, commit: str, idle_done: set[tuple[str, str]]
) -> list[dict[str, str]]:
    """Rows for results that ran; a "<key>-idle" row (RSS only) before a server's first."""
    rows: list[dict[str, str]] = []
    for r in results:
        if r.status not in ("ok", "warn"):
            continue
        key = r.target.key
        if r.rss_idle is not None and (key, r.server) not in idle_done:
            idle_done.add((key, r.server))
            rows.append(
                {
                    "date": date,
                    "commit": commit,
                    "scenario": f"{key}-idle",
                    "server": r.server,
                    "req_s": "",
                    "mb_s": "",
                    "p50_ms": "",
                    "p99_ms": "",
                    "rss_mib": fmt(r.rss_idle, ".1f"),
                }
            )
        rows.append(
            {
                "date": date,
                "commit": commit,
                "scenario": r.scenario,
                "server": r.server,
                "req_s": fmt(r.req_s),
                "mb_s": fmt(r.mb_s),
                "p50_ms": fmt(r.p50_ms, ".3f"),
                "p99_ms": fmt(r.p99_ms, ".3f"),
                "rss_mib": fmt(r.rss_after, ".1f"),
            }
        )
    return rows


def target_check(r: Result, single: dict[str, float | None], off: float | None = None) -> str:
    if r.server != "ferryman" or r.req_s is None:
        return ""
    if r.target.control == "on":
        # Issue 12: within 10% of the same run without auth, rules and elite.
        return "" if not off else ("PASS" if r.req_s >= CONTROL_FACTOR * off else "MISS") + " vs off"
    if r.target.workers > 1:
        # No target: shown as a factor of the single-worker row of the same run.
        base = single.get(r.workload.name)
        return f"{r.req_s / base:.2f}x w1" if base else ""
    if r.workload.body_size >= ONE_MIB:
        ok = (r.mb_s or 0.0) / 1024 >= TARGET_1M_GB_S
    elif r.target.cache:
        ok = r.req_s >= TARGET_CACHE_SMALL_REQ_S
    else:
        ok = r.req_s >= TARGET_REQ_S[r.workload.name]
    ok_rss = r.rss_after is not None and r.rss_after <= TARGET_RSS_MIB
    return ("PASS" if ok else "MISS") + ("" if ok_rss else " rss:MISS")


def print_table(results: list[Result]) -> None:
    by_key = {(r.target.key, r.server, r.workload.name): r.req_s for r in results}
    single = {
        r.workload.name: r.req_s for r in results if r.target.key == "reverse" and r.server == "ferryman"
    }
    header = (
        "scenario",
        "server",
        "req/s",
        "transfer",
        "p50 ms",
        "p99 ms",
        "RSS MiB idle>after",
        "vs nginx",
        "vs pyceiling",
        "target",
        "status",
    )
    table = [header]
    notes: list[str] = []
    order = {w.name: i for i, w in enumerate(WORKLOADS)}
    for r in sorted(results, key=lambda r: order[r.workload.name]):
        if r.mb_s is None:
            xfer = ""
        elif r.workload.body_size >= ONE_MIB:
            xfer = f"{r.mb_s / 1024:.2f} GB/s"
        else:
            xfer = f"{r.mb_s:.1f} MB/s"
        ref_server = "nginx-proxy_cache" if r.target.ref == "nginx-cache" else "nginx"
        if r.target.ref.startswith("forward-control"):
            ref_server = "ferryman"  # forward-control: against the same config without control
        base = by_key.get((r.target.ref, ref_server, r.workload.name))
        ratio = f"{r.req_s / base:.0%}" if r.req_s and base and r.target is not TARGETS[0] else ""
        ceiling = by_key.get((r.target.key, "pyceiling", r.workload.name))
        vs_ceiling = ""
        if r.server == "ferryman" and r.req_s and ceiling and r.target.workers == 1:
            mark = "ok" if r.req_s >= PYCEILING_FACTOR * ceiling else "under"
            vs_ceiling = f"{r.req_s / ceiling:.2f}x {mark}"
        rss = f"{fmt(r.rss_idle, '.1f') or '-'} > {fmt(r.rss_after, '.1f') or '-'}"
        note = r.status
        if r.note:
            if r.note not in notes:
                notes.append(r.note)
            note += f" [{notes.index(r.note) + 1}]"
        table.append(
            (
                r.scenario,
                r.server,
                fmt(r.req_s, ",.0f"),
                xfer,
                fmt(r.p50_ms, ".2f"),
                fmt(r.p99_ms, ".2f"),
                rss,
                ratio,
                vs_ceiling,
                target_check(r, single, by_key.get(("forward-control-off", "ferryman", r.workload.name))),
                note,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [
            c.rjust(w) if i in (2, 3, 4, 5, 7, 8) else c.ljust(w)
            for i, (c, w) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        print("  ".join([*cells, row[-1]]))
    for i, text in enumerate(notes, 1):
        print(f"[{i}] {text}")


# ---------------------------------------------------------------- main


def selected(args: argparse.Namespace, target: Target) -> list[Workload]:
    """Patterns match the scenario name or the target's key (direct, forward, reverse,
    reverse-w2, cache-memory, cache-disk, nginx-cache); `cache` selects every cache target;
    a workload name (small-keepalive, ...) selects only the plain direct/forward/reverse ones."""
    if target.server not in args.servers:
        return []
    out = []
    for wl in WORKLOADS:
        if wl.name not in target.workloads:
            continue
        names = [target.scenario_name(wl), target.key]
        if target.cache:
            names.append("cache")
        if target.key == target.mode:
            names.append(wl.name)
        if any(fnmatch.fnmatch(n, pat) for pat in args.scenarios for n in names):
            out.append(wl)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    p.add_argument("--warmup", type=float, default=2.0, help="unrecorded warm-up seconds (0=off)")
    p.add_argument(
        "--scenarios",
        nargs="+",
        default=["*"],
        metavar="PATTERN",
        help="scenario names or globs, e.g. direct forward-1m 'reverse-*' small-newconn cache "
        "'cache-*' nginx-cache reverse-small-keepalive-w2",
    )
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated servers to run (nginx = direct reference, "
        "nginx-proxy_cache = caching reference); default: all",
    )
    p.add_argument(
        "--ferryman-python",
        default=sys.executable,
        help="python that runs `-m ferryman` with PYTHONPATH=<repo>/src (default: this python)",
    )
    p.add_argument(
        "--ferryman", type=Path, default=None, help="run this ferryman executable instead (no PYTHONPATH)"
    )
    p.add_argument(
        "--pyceiling", type=Path, default=PYCEILING, help="the reference proxy script (default: %(default)s)"
    )
    p.add_argument("--log-format", choices=("combined", "json"), default="combined")
    p.add_argument("--proxy-cpu", type=int, default=0, help="core for the proxy under test")
    p.add_argument("--load-cpu", type=int, default=1, help="core for nginx origin and wrk")
    p.add_argument("--no-pin", action="store_true", help="do not use taskset")
    p.add_argument("--ready-timeout", type=float, default=15.0)
    p.add_argument("--results", type=Path, default=BENCH / "results.csv")
    p.add_argument("--no-csv", action="store_true", help="print only, append nothing")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("-v", "--verbose", action="store_true", help="print raw wrk output")
    args = p.parse_args(argv)
    args.servers = {s.strip() for s in args.servers.split(",") if s.strip()}
    if unknown := args.servers - set(SERVERS):
        p.error(f"unknown server(s) {', '.join(sorted(unknown))} (known: {', '.join(SERVERS)})")
    if args.no_pin or not shutil.which("taskset"):
        args.proxy_cpu = args.load_cpu = None
    else:
        allowed = os.sched_getaffinity(0)
        for cpu in (args.proxy_cpu, args.load_cpu):
            if cpu not in allowed:
                p.error(f"cpu {cpu} not available (allowed: {sorted(allowed)}); use --no-pin")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "nginx", "curl"):
        if not shutil.which(tool):
            print(f"error: {tool} not found on PATH", file=sys.stderr)
            return 2
    plan = [(t, wls) for t in TARGETS if (wls := selected(args, t))]
    if not plan:
        print("nothing selected", file=sys.stderr)
        return 2
    if any(t.server == "ferryman" for t, _ in plan):
        try:
            print(f"ferryman: {ferryman_origin(args)}", file=sys.stderr)
        except StartError as e:
            print(f"error: cannot run ferryman: {e}", file=sys.stderr)
            return 2
    if (busy := cpu_busy()) > 0.15:
        print(
            f"warning: the CPUs are {busy:.0%} busy before the bench starts; "
            "results will be noisy (other processes compete with the pinned ones)",
            file=sys.stderr,
        )
    # Turn SIGTERM/SIGINT into exceptions so the finally clauses below still clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = git_commit()
    tmp = Path(tempfile.mkdtemp(prefix="ferryman-bench-"))
    tmp.chmod(0o755)  # nginx workers (nobody when run as root) read the docroot
    results: list[Result] = []
    procs: list[Proc] = []
    idle_done: set[tuple[str, str]] = set()
    try:
        origin = free_port()
        try:
            nginx = start_nginx(tmp, origin, args.load_cpu, args.ready_timeout)
        except StartError as e:
            print(f"error: origin did not start: {e}", file=sys.stderr)
            return 2
        procs.append(nginx)
        print(f"origin: nginx on {HOST}:{origin} (pid {nginx.pid}), temp dir {tmp}", file=sys.stderr)
        for target, wls in plan:
            label = f"{target.server} ({target.key})"
            if target is TARGETS[0]:
                proc, port = nginx, origin
            else:
                port = free_port()
                try:
                    proc = start_target(args, tmp, target, port, origin)
                except StartError as e:
                    status = "skipped" if target.optional else "failed"
                    print(f"note: {label} {status}: {e}", file=sys.stderr)
                    results += [Result(target, w, status, note=f"did not start: {e}") for w in wls]
                    continue
                procs.append(proc)
            rss_idle = rss_mib(proc.pid)
            try:
                for wl in wls:
                    print(
                        f"running {target.scenario_name(wl)} on {target.server} "
                        f"({args.duration:.0f}s, -c{wl.connections})...",
                        file=sys.stderr,
                    )
                    r = run_load(args, target, port, origin, wl, proc, rss_idle, tmp)
                    results.append(r)
                    if not args.no_csv:
                        append_csv(args.results, csv_rows([r], date, commit, idle_done))
                    print(f"  {r.status} {fmt(r.req_s, ',.0f')} req/s {r.note}", file=sys.stderr)
            finally:
                if proc is not nginx:
                    proc.stop()
    finally:
        for proc in reversed(procs):
            proc.stop()
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\nferryman bench {date} commit {commit} "
        f"(proxy cpu {args.proxy_cpu}, load cpu {args.load_cpu}, {args.duration:.0f}s runs)"
    )
    print_table(results)
    if not args.no_csv:
        print(f"\nrows appended to {args.results}")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
