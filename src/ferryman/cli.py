"""Command line: `run`, `check`, `forward`, `reload`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from ferryman.config.compile import Plan, build_plan, compile_config
from ferryman.config.load import validate
from ferryman.errors import ConfigError


def _run(config_path: str | None, plan: Plan, pid_file: str | None) -> int:
    from ferryman.server.lifecycle import serve

    if pid_file:
        with open(pid_file, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    try:
        return int(runner(serve(config_path, plan)))
    finally:
        if pid_file:
            try:
                os.unlink(pid_file)
            except OSError:
                pass


def _load(path: str | None) -> Plan:
    try:
        return build_plan(path)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
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

    p_rel = sub.add_parser("reload", help="ask a running ferryman to reload its config")
    p_rel.add_argument("--pid-file", required=True)

    args = ap.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(message)s",
        stream=sys.stderr,
    )
    if args.cmd in (None, "run"):
        path = getattr(args, "config", None)
        return _run(path, _load(path), getattr(args, "pid_file", None))
    if args.cmd == "check":
        plan = _load(args.config)
        n = len(plan.listeners)
        print(f"{args.config}: OK ({n} listener{'s' if n != 1 else ''})")
        return 0
    if args.cmd == "forward":
        data: dict[str, Any] = {
            "listeners": [{"listen": args.listen, "mode": "forward"}],
            "forward": {},
            "access_log": {
                "enabled": args.access_log != "off",
                "path": args.access_log if args.access_log != "off" else "-",
                "format": args.log_format,
            },
        }
        if args.parent:
            data["forward"]["parent"] = args.parent
        if args.allow_client:
            data["forward"]["clients"] = args.allow_client
        if args.connect_port:
            data["forward"]["connect_ports"] = args.connect_port
        try:
            plan = compile_config(validate(data, "command line"), "command line")
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            return 2
        return _run(None, plan, args.pid_file)
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
