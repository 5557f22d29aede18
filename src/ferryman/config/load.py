"""YAML -> validated `Config`, with every error named by file and field path."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from ferryman.config.schema import Config
from ferryman.errors import ConfigError


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def validate(data: Any, source: str) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): expected a mapping of settings"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            # Drop pydantic's internal tags (e.g. 'function-after[...]') from paths.
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting"
            if not loc and ": " in msg:
                lines.extend(msg.split("; "))  # cross-field checks carry their own paths
            else:
                lines.append(f"{_path(loc)}: {msg}")
        raise ConfigError(source, lines) from None


def normalise(cfg: Config) -> dict[str, Any]:
    """The validated config as plain JSON-able data: durations in seconds, sizes in bytes."""
    return cfg.model_dump(mode="json")


def load_file(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    return load_text(text, path)


def load_text(text: str, source: str) -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}invalid YAML: {problem}"]) from None
    return validate(data, source)
