"""Where a running process gets its Plan: validate in a child, compile here.

`ConfigSource` remembers what the process was started from (a file, or the
one-liner's inline mapping) so that every reload re-reads the same thing.
Validation runs `python -m ferryman.config.validate` as a child process (see
that module for why); compiling (which may read large domain lists) runs in
the default executor so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from ferryman.config.compile import compile_config
from ferryman.errors import ConfigError
from ferryman.pipeline.plan import Plan

_VALIDATOR = [sys.executable, "-m", "ferryman.config.validate"]
_TIMEOUT = 60.0


@dataclass(frozen=True)
class ConfigSource:
    path: str | None = None
    inline: dict[str, Any] | None = field(default=None, hash=False)
    name: str = "<built-in>"

    @classmethod
    def file(cls, path: str) -> ConfigSource:
        return cls(path=path, name=path)

    def command(self) -> tuple[list[str], bytes | None]:
        if self.path is not None:
            return [*_VALIDATOR, "--file", self.path], None
        return [*_VALIDATOR, "--stdin", self.name], json.dumps(self.inline or {}).encode()

    async def build(self) -> Plan:
        """A new Plan from the same source (a reload): validated in a child, compiled off the loop."""
        return await build_plan_async(self)


def _result(src: ConfigSource, code: int, out: bytes, err: bytes) -> dict[str, Any]:
    if code == 0:
        data = json.loads(out)
        assert isinstance(data, dict)
        return data
    prefix = f"{src.name}: "
    lines = [ln.removeprefix(prefix) for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    raise ConfigError(src.name, lines or [f"validator exited with status {code}"])


def build_plan_sync(src: ConfigSource) -> Plan:
    argv, stdin = src.command()
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(src.name, ["validation timed out"]) from None
    data = _result(src, proc.returncode, proc.stdout, proc.stderr)
    return compile_config(data, src.name)


async def build_plan_async(src: ConfigSource) -> Plan:
    argv, stdin = src.command()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(_TIMEOUT):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ConfigError(src.name, ["validation timed out"]) from None
    data = _result(src, proc.returncode or 0, out, err)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, compile_config, data, src.name)
