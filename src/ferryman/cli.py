"""Command line: `run`, `check`, `forward`, `reverse`, `reload`.

`check` validates in-process; `run` and `forward` validate through the child
validator (`config/reload.py`) so the serving process never imports pydantic.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from ferryman.config.compile_forward_control import check_notes
from ferryman.config.reload import ConfigSource, build_plan_sync
from ferryman.errors import ConfigError
from ferryman.pipeline.plan import Plan


def _serve(source: ConfigSource, pid_file: str | None) -> int:
    # SIGHUP waits until the reload handler exists (lifecycle.serve unblocks it there, and a
    # worker's too): one sent while ferryman starts, e.g. as soon as the pid file or the port
    # shows up, reloads once it serves instead of killing it (SIGHUP's default action).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        plan: Plan = build_plan_sync(source)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    from ferryman.server.lifecycle import raise_nofile_limit, serve

    raise_nofile_limit()  # before any worker is forked: they inherit it
    if pid_file:
        with open(pid_file, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    try:
        if plan.workers > 1:
            from ferryman.server.supervisor import supervise

            def worker(respawned: bool) -> int:
                # A worker restarted after a crash serves the file as it is now (as its
                # siblings do after their reloads), not the one read at start.
                wplan = plan
                if respawned:
                    try:
                        wplan = build_plan_sync(source)
                    except ConfigError as exc:
                        print(f"ferryman: restarted worker keeps the start-up config:\n{exc.render()}",
                              file=sys.stderr)
                return int(runner(serve(source, wplan, reuse_port=True)))

            return supervise(plan.workers, worker, plan.timeouts.shutdown_grace)
        return int(runner(serve(source, plan)))
    finally:
        if pid_file:
            try:
                os.unlink(pid_file)
            except OSError:
                pass


def _check(path: str) -> int:
    try:
        plan = build_plan_sync(ConfigSource.file(path))  # the same validation `run` does
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    n = len(plan.listeners)
    print(f"{path}: OK ({n} listener{'s' if n != 1 else ''})")
    for note in check_notes(plan.forward.control):
        print(f"{path}: note: {note}")
    return 0


def _access_log(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "enabled": args.access_log != "off",
        "path": args.access_log if args.access_log != "off" else "-",
        "format": args.log_format,
    }


# A forward proxy shares one cache among its users: the built-in default and `ferryman forward`
# get a memory cache of this size unless told otherwise (--no-cache, --cache-size).
DEFAULT_FORWARD_CACHE: dict[str, Any] = {"store": "memory", "max_size": 64 * 1024 * 1024}


def _cache(args: argparse.Namespace, default: dict[str, Any] | None = None) -> dict[str, Any] | None:
    size = {"max_size": args.cache_size} if args.cache_size else {}
    if getattr(args, "no_cache", False):
        return None
    if args.cache_dir:
        return {"store": "disk", "path": os.path.abspath(args.cache_dir), **size}
    if args.cache or args.cache_size:
        return {"store": "memory", **size}
    return None if default is None else dict(default)


def _reverse_source(args: argparse.Namespace) -> ConfigSource:
    cache = _cache(args)
    route: dict[str, Any] = {"name": "default", "upstream": "default"}
    if cache is not None:
        route["cache"] = {"enabled": True}
    data: dict[str, Any] = {
        "listeners": [{"listen": args.listen, "mode": "reverse"}],
        "routes": [route],
        "upstreams": {"default": {"balance": args.balance, "servers": [{"url": u} for u in args.to]}},
        "access_log": _access_log(args),
    }
    if cache is not None:
        data["cache"] = cache
    return ConfigSource(inline=data, name="command line")


def _forward_source(args: argparse.Namespace) -> ConfigSource:
    fwd: dict[str, Any] = {}
    if args.parent:
        fwd["parent"] = args.parent
    if args.allow_client:
        fwd["clients"] = args.allow_client
    if args.connect_port:
        fwd["connect_ports"] = args.connect_port
    data: dict[str, Any] = {
        "listeners": [{"listen": args.listen, "mode": "forward"}],
        "forward": fwd,
        "access_log": _access_log(args),
    }
    cache = _cache(args, DEFAULT_FORWARD_CACHE)
    if cache is not None:
        data["cache"] = cache
    return ConfigSource(inline=data, name="command line")


def builtin_config() -> dict[str, Any]:
    """`ferryman run` without a file (`make run`): a loopback forward proxy, its shared cache and
    its admin page."""
    return {"admin": {"listen": "127.0.0.1:9900"}, "cache": dict(DEFAULT_FORWARD_CACHE)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ferryman", description="forward and reverse HTTP proxy")
    ap.add_argument("--log-level", default="warning", help="daemon log level (default: warning)")
    sub = ap.add_subparsers(dest="cmd")

    p_run = sub.add_parser("run", help="run from a YAML file (or the built-in default)")
    p_run.add_argument("-c", "--config", help="YAML config file (default: built-in forward proxy)")
    p_run.add_argument("--pid-file")

    p_check = sub.add_parser("check", help="validate a config file and print every error")
    p_check.add_argument("-c", "--config", required=True)

    p_fwd = sub.add_parser("forward", help="one-liner forward proxy")
    p_fwd.add_argument("--listen", default="127.0.0.1:3128")
    p_fwd.add_argument("--parent", help="chain through a parent proxy http://HOST:PORT")
    p_fwd.add_argument("--allow-client", action="append", default=None, metavar="CIDR",
                       help="client networks allowed (default: loopback only)")
    p_fwd.add_argument("--connect-port", action="append", type=int, default=None)
    p_fwd.add_argument("--access-log", default="-", help="path, '-' for stdout, or 'off'")
    p_fwd.add_argument("--log-format", choices=["combined", "json"], default="combined")
    p_fwd.add_argument("--pid-file")
    fwd_cache = p_fwd.add_mutually_exclusive_group()
    fwd_cache.add_argument("--cache", action="store_true",
                           help="cache responses in memory (the default: 64MiB, or --cache-size)")
    fwd_cache.add_argument("--cache-dir", help="cache responses on disk in this directory")
    fwd_cache.add_argument("--no-cache", action="store_true", help="no shared cache")
    p_fwd.add_argument("--cache-size", metavar="SIZE", help="cache max_size, e.g. 64MiB or 2GiB")

    p_rev = sub.add_parser("reverse", help="one-liner reverse proxy / load balancer")
    p_rev.add_argument("--listen", default="127.0.0.1:8080")
    p_rev.add_argument("--to", action="append", required=True, metavar="URL",
                       help="a backend server (repeat for several)")
    p_rev.add_argument("--balance", default="round_robin",
                       choices=["round_robin", "least_conn", "random_two", "ewma", "ip_hash"])
    p_rev.add_argument("--access-log", default="-", help="path, '-' for stdout, or 'off'")
    p_rev.add_argument("--log-format", choices=["combined", "json"], default="combined")
    p_rev.add_argument("--pid-file")
    p_rev.add_argument("--cache", action="store_true", help="cache responses in memory")
    p_rev.add_argument("--cache-dir", help="cache responses on disk in this directory")
    p_rev.add_argument("--cache-size", metavar="SIZE", help="cache max_size, e.g. 64MiB or 2GiB")

    p_rel = sub.add_parser("reload", help="ask a running ferryman to reload its config")
    p_rel.add_argument("--pid-file", required=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(message)s",
        stream=sys.stderr,
    )
    if args.cmd in (None, "run"):
        path = getattr(args, "config", None)
        source = ConfigSource.file(path) if path else ConfigSource(inline=builtin_config(), name="<built-in>")
        return _serve(source, getattr(args, "pid_file", None))
    if args.cmd == "check":
        return _check(args.config)
    if args.cmd == "forward":
        return _serve(_forward_source(args), args.pid_file)
    if args.cmd == "reverse":
        return _serve(_reverse_source(args), args.pid_file)
    if args.cmd == "reload":
        try:
            with open(args.pid_file) as fh:
                pid = int(fh.read().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            print(f"ferryman: cannot signal the running instance: {exc}", file=sys.stderr)
            return 1
        print(f"ferryman: reload requested (pid {pid})")
        return 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
