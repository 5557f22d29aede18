#!/usr/bin/env python3
"""Loopback benchmarks: wrk through ferryman, next to nginx (and haproxy) in the same run.

Layout of one run (2 cores):
  core 0 (--proxy-cpu): the proxy under test (ferryman, or haproxy as a reference)
  core 1 (--load-cpu):  the nginx origin and wrk

Every process is started in its own session and killed (by process group) at the end.
All traffic stays on 127.0.0.1. Stdlib only. See bench/README.md.
"""

import argparse
import csv
import datetime
import fnmatch
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

# Targets for ferryman (one core); the 1m target is in wrk's GB (GiB) per second.
TARGET_REQ_S = {"small-keepalive": 10_000.0, "small-newconn": 6_000.0}
TARGET_1M_GB_S = 1.0
TARGET_RSS_MIB = 30.0


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    path: str
    connections: int
    close: bool
    body_size: int


WORKLOADS = (
    Workload("small-keepalive", "/small", 50, False, SMALL_SIZE),
    Workload("small-newconn", "/small", 50, True, SMALL_SIZE),
    Workload("1m", "/1m", 10, False, ONE_MIB),
)


@dataclass(frozen=True, slots=True)
class Target:
    mode: str  # direct | forward | reverse
    server: str  # nginx | ferryman | haproxy
    optional: bool  # a server that fails to start is skipped, not failed


TARGETS = (
    Target("direct", "nginx", False),
    Target("forward", "ferryman", False),
    Target("reverse", "ferryman", True),
    Target("reverse", "haproxy", True),
)


@dataclass(slots=True)
class Result:
    scenario: str
    server: str
    workload: Workload
    status: str  # ok | warn | failed | skipped
    note: str = ""
    req_s: float | None = None
    mb_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    rss_idle: float | None = None
    rss_after: float | None = None


class StartError(Exception):
    pass


# ---------------------------------------------------------------- processes


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_ENV}
    env.update(extra)
    return env


class Proc:
    """A process started in its own session; stopped by signalling its process group."""

    def __init__(self, name: str, cmd: list[str], logdir: Path) -> None:
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
                env=child_env(),
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

    def wait_port(self, port: int, timeout: float) -> None:
        """Poll until the port accepts a connection; on failure stop the process and raise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                self.stop()
                output = self.tail() or "(no output)"
                raise StartError(f"{self.name} exited with {self.popen.returncode}: {output}")
            try:
                with socket.create_connection((HOST, port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise StartError(f"{self.name} not listening on {HOST}:{port} after {timeout:.0f}s")

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pin(cpu: int | None, cmd: list[str]) -> list[str]:
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


# ---------------------------------------------------------------- servers


def start_nginx(tmp: Path, port: int, cpu: int | None, timeout: float) -> Proc:
    www = tmp / "www"
    www.mkdir()
    (www / "small").write_bytes((b"ferryman bench small body " * 4)[: SMALL_SIZE - 1] + b"\n")
    (www / "1m").write_bytes(os.urandom(ONE_MIB))
    temps = "\n".join(
        f"    {kind}_temp_path {tmp}/nginx-temp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp / "nginx.conf"
    conf.write_text(f"""\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
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
    open_file_cache max=16 inactive=60s;
    open_file_cache_valid 60s;
{temps}
    server {{
        listen {HOST}:{port} backlog=4096;
        root {www};
        location / {{ }}
    }}
}}
""")
    (tmp / "nginx-temp").mkdir()
    cmd = ["nginx", "-p", f"{tmp}/", "-c", str(conf), "-e", f"{tmp}/nginx-error.log"]
    proc = Proc("nginx", pin(cpu, cmd), tmp)
    proc.wait_port(port, timeout)
    return proc


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


def start_ferryman(args: argparse.Namespace, tmp: Path, mode: str, port: int, origin: int) -> Proc:
    cmd = [str(args.ferryman), mode, "--listen", f"{HOST}:{port}"]
    if mode == "reverse":
        cmd += ["--to", f"http://{HOST}:{origin}"]
    cmd += ["--access-log", str(tmp / f"ferryman-{mode}-access.log")]
    cmd += ["--log-format", args.log_format]
    proc = Proc(f"ferryman-{mode}", pin(args.proxy_cpu, cmd), tmp)
    proc.wait_port(port, args.ready_timeout)
    return proc


# ---------------------------------------------------------------- load


def check_once(mode: str, port: int, origin: int, wl: Workload) -> str | None:
    """One curl request like the load will send; returns an error text or None."""
    cmd = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        "--max-time",
        "5",
    ]
    if wl.close:
        cmd += ["-H", "Connection: close"]
    if mode == "forward":
        cmd += ["-x", f"http://{HOST}:{port}", f"http://{HOST}:{origin}{wl.path}"]
    else:
        cmd += ["--noproxy", "*", f"http://{HOST}:{port}{wl.path}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=15, env=child_env())
    except subprocess.TimeoutExpired:
        return "check request timed out"
    got = out.stdout.strip()
    if out.returncode != 0 or got != f"200 {wl.body_size}":
        err = out.stderr.strip().splitlines()[-1:] or [""]
        return f"check request got '{got}' (curl rc={out.returncode}) {err[0]}".strip()
    return None


def wrk_cmd(
    args: argparse.Namespace, mode: str, port: int, origin: int, wl: Workload, duration: float
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
    if mode == "forward":
        cmd += ["-s", str(FORWARD_LUA), f"http://{HOST}:{port}/"]
        env["FERRYMAN_BENCH_TARGET"] = f"http://{HOST}:{origin}{wl.path}"
    else:
        cmd += [f"http://{HOST}:{port}{wl.path}"]
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
) -> Result:
    res = Result(f"{target.mode}-{wl.name}", target.server, wl, "failed", rss_idle=rss_idle)
    if not proc.alive():
        res.note = f"{proc.name} is not running: {proc.tail()}"
        return res
    if err := check_once(target.mode, port, origin, wl):
        res.note = err
        return res
    if args.warmup > 0:
        cmd, env = wrk_cmd(args, target.mode, port, origin, wl, args.warmup)
        run_bounded(cmd, env, args.warmup + 30)
    cmd, env = wrk_cmd(args, target.mode, port, origin, wl, args.duration)
    rc, out = run_bounded(cmd, env, args.duration + 30)
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
    """Rows for results that ran; an "<mode>-idle" row (RSS only) before a server's first."""
    rows: list[dict[str, str]] = []
    for r in results:
        if r.status not in ("ok", "warn"):
            continue
        mode = r.scenario.split("-", 1)[0]
        if r.rss_idle is not None and (mode, r.server) not in idle_done:
            idle_done.add((mode, r.server))
            rows.append(
                {
                    "date": date,
                    "commit": commit,
                    "scenario": f"{mode}-idle",
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


def target_check(r: Result) -> str:
    if r.server != "ferryman" or r.req_s is None:
        return ""
    if r.workload.name in TARGET_REQ_S:
        ok = r.req_s >= TARGET_REQ_S[r.workload.name]
    else:
        ok = (r.mb_s or 0.0) / 1024 >= TARGET_1M_GB_S
    ok_rss = r.rss_after is not None and r.rss_after <= TARGET_RSS_MIB
    return ("PASS" if ok else "MISS") + ("" if ok_rss else " rss:MISS")


def print_table(results: list[Result]) -> None:
    direct = {r.workload.name: r.req_s for r in results if r.scenario.startswith("direct-")}
    header = (
        "scenario",
        "server",
        "req/s",
        "transfer",
        "p50 ms",
        "p99 ms",
        "RSS MiB idle>after",
        "vs nginx",
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
        base = direct.get(r.workload.name)
        ratio = f"{r.req_s / base:.0%}" if r.req_s and base and r.server != "nginx" else ""
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
                target_check(r),
                note,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [
            c.rjust(w) if i in (2, 3, 4, 5, 7) else c.ljust(w)
            for i, (c, w) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        print("  ".join([*cells, row[-1]]))
    for i, text in enumerate(notes, 1):
        print(f"[{i}] {text}")


# ---------------------------------------------------------------- main


def selected(args: argparse.Namespace, target: Target) -> list[Workload]:
    if target.server not in args.servers:
        return []
    out = []
    for wl in WORKLOADS:
        names = (f"{target.mode}-{wl.name}", target.mode, wl.name)
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
        help="scenario names or globs, e.g. direct forward-1m 'reverse-*' small-newconn",
    )
    p.add_argument(
        "--servers",
        default="nginx,ferryman,haproxy",
        help="comma-separated servers to run (nginx = direct reference)",
    )
    p.add_argument("--ferryman", type=Path, default=ROOT / ".venv" / "bin" / "ferryman")
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
            label = f"{target.server}-{target.mode}"
            if target.server == "nginx":
                proc, port = nginx, origin
            else:
                port = free_port()
                try:
                    if target.server == "haproxy":
                        if not shutil.which("haproxy"):
                            raise StartError("haproxy not found on PATH")
                        proc = start_haproxy(tmp, port, origin, args.proxy_cpu, args.ready_timeout)
                    else:
                        proc = start_ferryman(args, tmp, target.mode, port, origin)
                except StartError as e:
                    status = "skipped" if target.optional else "failed"
                    print(f"note: {label} {status}: {e}", file=sys.stderr)
                    results += [
                        Result(
                            f"{target.mode}-{w.name}",
                            target.server,
                            w,
                            status,
                            note=f"did not start: {e}",
                        )
                        for w in wls
                    ]
                    continue
                procs.append(proc)
            rss_idle = rss_mib(proc.pid)
            try:
                for wl in wls:
                    print(
                        f"running {target.mode}-{wl.name} on {target.server} "
                        f"({args.duration:.0f}s, -c{wl.connections})...",
                        file=sys.stderr,
                    )
                    r = run_load(args, target, port, origin, wl, proc, rss_idle)
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
