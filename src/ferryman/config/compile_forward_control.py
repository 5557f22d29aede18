"""Normalised forward-control settings -> `ForwardControl` (issue 12), and the notes
``ferryman check`` prints about them.  Called by `compile.py` for the ``forward`` section.

Reads the htpasswd, group and domains files (compile time, never per request).
Every problem is collected and raised as one `ConfigError` whose lines name their
field paths, e.g. ``forward.auth.htpasswd: users.htpasswd:3: expected user:hash``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from ferryman.errors import ConfigError
from ferryman.pipeline.admit.anonymity import DEFAULT_IDENTIFYING, AnonymityPolicy
from ferryman.pipeline.admit.control import AuthPlan, ForwardControl
from ferryman.pipeline.admit.domainset import DomainSet
from ferryman.pipeline.admit.htpasswd import AuthFileError, UserDb, file_stamps
from ferryman.pipeline.admit.rules import RuleError, RuleSet, compile_rules
from ferryman.pipeline.admit.safety import SsrfGuard
from ferryman.pipeline.pac import pac_script

IMPLICIT_AUTH = {"name": "forward.auth", "auth": {}}


def _abs(base_dir: str, p: str) -> str:
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(base_dir, p))


def compile_auth(auth: Mapping[str, Any], base_dir: str, path: str, errors: list[str]) -> AuthPlan | None:
    ht = _abs(base_dir, auth["htpasswd"])
    gf = _abs(base_dir, auth["group_file"]) if auth.get("group_file") else None
    # Stamped before reading: a file changed in between is read again at the next look.
    stamps = file_stamps([ht] + ([gf] if gf else []))
    try:
        db = UserDb.from_files(ht, gf, auth.get("groups") or {})
    except AuthFileError as exc:
        key = "htpasswd" if exc.path == ht else "group_file"
        errors.append(f"{path}.{key}: {exc}")
        return None
    window = float(auth.get("failure_window", 60.0))
    lockout = auth.get("lockout")
    return AuthPlan(
        db=db,
        realm=auth.get("realm", "ferryman"),
        cache_ttl=float(auth.get("cache_ttl", 300.0)),
        cache_size=int(auth.get("cache_size", 10_000)),
        max_failures=int(auth.get("max_failures", 10)),
        failure_window=window,
        lockout=float(lockout) if lockout is not None else window,
        reload_check=float(auth.get("reload_check", 5.0)),
        stamps=stamps,
        max_pending_checks=auth.get("max_pending_checks"),
        reread=partial(compile_auth, dict(auth), base_dir, path),
    )


def compile_forward_control(
    fwd: Mapping[str, Any],
    *,
    base_dir: str,
    clients: Sequence[str],
    own: Sequence[tuple[str, int]],
    proxy: tuple[str, int],
    local_addresses: Sequence[str] = (),
    source: str = "<config>",
    path: str = "forward",
    load_domains: Callable[[str], DomainSet] = DomainSet.from_file,
) -> ForwardControl:
    """``fwd``: the normalised ``forward`` mapping (`config/schema.py` `Forward`);
    ``clients``: forward.clients; ``own``: every listener's and the admin API's
    (host, port); ``proxy``: the (host, port) the PAC file names."""
    errors: list[str] = []
    auth = None
    if fwd.get("auth"):
        auth = compile_auth(fwd["auth"], base_dir, f"{path}.auth", errors)
    raw_rules = list(fwd.get("rules") or ())
    rules = RuleSet(())
    try:
        rules = compile_rules(
            raw_rules, base_dir, f"{path}.rules", fwd.get("default", "allow"), load_domains
        )
    except RuleError as exc:
        errors.extend(exc.errors)
    if fwd.get("auth") and not any(r.action == "auth" for r in rules.rules):
        # forward.auth with no auth rule: every request authenticates first
        implicit = compile_rules([IMPLICIT_AUTH], base_dir, f"{path}.auth")
        rules = RuleSet(implicit.rules + rules.rules, rules.default)
    elif rules.needs_auth and not fwd.get("auth"):
        errors.append(f"{path}.rules: a rule asks for or names users, but {path}.auth is not set")
    try:
        anonymity = AnonymityPolicy.compile(
            fwd.get("anonymity", "anonymous"), fwd.get("identifying_headers", DEFAULT_IDENTIFYING)
        )
    except ValueError as exc:
        errors.append(f"{path}.identifying_headers: {exc}")
        anonymity = AnonymityPolicy.compile("anonymous")
    pac = ""
    try:
        pac = pac_script(
            proxy[0], proxy[1], fwd.get("direct_networks") or (), fwd.get("direct") or (),
            bool(fwd.get("pac_resolve")),
        )
    except ValueError as exc:
        errors.append(f"{path}.direct: {exc}")
    if errors:
        raise ConfigError(source, errors)
    return ForwardControl(
        auth=auth,
        rules=rules,
        safety=SsrfGuard.compile(clients, own, local_addresses),
        anonymity=anonymity,
        pac=pac,
        log_query=bool(fwd.get("log_query", False)),
    )


def check_notes(fc: ForwardControl, path: str = "forward") -> list[str]:
    """Warnings for ``ferryman check``: weak password hashes by user, group members
    that are not users, rules that can never match, private destinations refused."""
    notes = []
    if fc.auth is not None:
        db = fc.auth.db
        for e in db.weak_entries():
            scheme = {"apr1": "apr1-MD5", "sha1": "SHA-1"}[e.scheme]
            notes.append(
                f"{path}.auth.htpasswd: {db.source}:{e.line}: user {e.user!r} has a weak {scheme} "
                "hash; re-hash it with bcrypt (htpasswd -B)"
            )
        for group, user in db.unknown_group_members():
            notes.append(f"{path}.auth: group {group!r} names {user!r}, who is not in {db.source}")
    notes.extend(s.message for s in fc.rules.shadowed())
    note = fc.safety.laptop_note()
    if note:
        notes.append(note)
    return notes
