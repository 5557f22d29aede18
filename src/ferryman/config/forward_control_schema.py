"""The YAML shape of the forward proxy's control settings (issue 12), as frozen pydantic
models: a rule and proxy authentication; `schema.Forward` is the one ``forward``
section that uses them (``rules``, ``auth``).

Pydantic checks the shape (types, unknown keys, networks); what needs compiling (a
regex, a time of day, a time zone, a domains file, an htpasswd line) is checked by
`compile_forward_control`, whose errors name the same field paths.  The rule shape
is a superset of today's ``forward.rules`` (``allow``/``deny`` with ``domains``,
``domains_file``, ``networks``, ``ports``, ``methods``), so existing files keep their
meaning.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, field_validator, model_validator

from ferryman.config.units import Duration, Networks


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _listify(v: object) -> object:
    return [v] if isinstance(v, str | int) and not isinstance(v, bool) else v


_PORT_RANGE = re.compile(r"\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?")


def _port_item(v: object) -> int | str:
    """A port (1-65535) or a range such as ``8000-8999``."""
    if isinstance(v, int) and not isinstance(v, bool):
        if 1 <= v <= 65535:
            return v
    elif isinstance(v, str) and (m := _PORT_RANGE.fullmatch(v)):
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if 1 <= lo <= hi <= 65535:
            return v
    raise ValueError(f"expected a port (1-65535) or a range like 8000-8999, got {v!r}")


PortSpec = Annotated[int | str, PlainValidator(_port_item)]


class ProxyAuthCfg(_Model):
    htpasswd: str
    group_file: str | None = None
    groups: dict[str, list[str]] = Field(default_factory=dict)  # group: [user, ...]
    realm: str = "ferryman"
    cache_ttl: Duration = 300.0  # how long a verified password is remembered
    cache_size: int = Field(default=10_000, ge=0)
    max_failures: int = Field(default=10, ge=1)  # per client address, within failure_window
    failure_window: Duration = 60.0
    lockout: Duration | None = None  # default: failure_window
    reload_check: Duration = 5.0  # look at the files' mtimes at most this often
    # password checks waiting or running per worker; beyond, 503 at once (None: 8 per thread)
    max_pending_checks: int | None = Field(default=None, ge=1)

    @field_validator("realm")
    @classmethod
    def _realm(cls, v: str) -> str:
        if not v or not v.isprintable() or '"' in v or "\\" in v or not v.isascii():
            raise ValueError("a realm is printable ASCII without quotes or backslashes")
        return v


class ConditionsCfg(_Model):
    clients: Networks | None = None
    users: list[str] | None = None
    groups: list[str] | None = None
    authenticated: bool | None = None
    domains: list[str] | None = None
    domain_regex: list[str] | None = None
    domains_file: str | list[str] | None = None
    networks: Networks | None = None
    ports: list[PortSpec] | None = None
    methods: list[str] | None = None
    path_prefix: list[str] | None = None
    path_regex: list[str] | None = None
    time: dict[str, str | list[str]] | None = None  # from, to, days, tz: checked when compiled
    headers: dict[str, bool | str] | None = None

    _one_or_many = field_validator(
        "users", "groups", "domains", "domain_regex", "ports", "methods", "path_prefix", "path_regex",
        mode="before",
    )(_listify)


class RuleCfg(_Model):
    name: str | None = None
    allow: ConditionsCfg | None = None
    deny: ConditionsCfg | None = None
    auth: ConditionsCfg | None = None
    message: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_action(cls, data: object) -> object:
        # "- deny:" (no conditions) reads as deny: null; it means "match everything"
        if isinstance(data, dict):
            return {k: ({} if k in ("allow", "deny", "auth") and v is None else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _one_action(self) -> RuleCfg:
        given = [a for a in ("allow", "deny", "auth") if getattr(self, a) is not None]
        if len(given) != 1:
            raise ValueError("a rule needs exactly one of 'allow', 'deny' or 'auth'")
        if self.message is not None and self.deny is None:
            raise ValueError("message: only a deny rule shows a message")
        return self
