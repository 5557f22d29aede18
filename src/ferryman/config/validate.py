"""Validate a config in a child process: ``python -m ferryman.config.validate``.

The serving process runs this to (re)load its config, reads the normalised
JSON from stdout (or the error lines from stderr, exit status 2), and so never
imports pydantic itself.  Input: ``--file PATH``, or ``--stdin`` for a raw
config mapping as JSON (the one-liners build theirs that way).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ferryman.config.load import load_file, normalise, validate
from ferryman.config.tls_check import check_listener_tls
from ferryman.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ferryman-validate")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--file")
    g.add_argument("--stdin", metavar="SOURCE", help="read a JSON mapping; SOURCE names it in errors")
    args = ap.parse_args(argv)
    try:
        if args.file:
            cfg = load_file(args.file)
        else:
            cfg = validate(json.load(sys.stdin), args.stdin)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    data = normalise(cfg)
    source = args.file or args.stdin
    base_dir = os.path.dirname(os.path.abspath(args.file)) if args.file else os.getcwd()
    errors = check_listener_tls(data, base_dir)
    if errors:
        print(ConfigError(source, errors).render(), file=sys.stderr)
        return 2
    json.dump(data, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
