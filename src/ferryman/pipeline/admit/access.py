"""ADMIT phases (forward): the ACL rules (``forward.rules``, `pipeline/admit/rules.py`).

`phase` (pre-resolve) judges the request on what is known before DNS: the client,
the user, the canonical host (`route/router.canonical_host`), port, method, the
normalised path, headers, the time.  When the first rule that could match hangs on
the dialled address (``networks``), the rest is left to `resolved`, which judges
each resolved address (`address.AddressCheck`) before one is dialled.  Rules that
can only deny give their answer before DNS when every rule waiting for the address
would deny too (a blocked name that does not resolve is still a 403).

Behind a parent proxy, which resolves names itself, ``networks`` conditions only
ever see IP literals.

Paths: a path condition sees the request path without its query, in the normal
form of `route/paths.py` with encoded slashes decoded and matrix parameters
(``;x``) dropped, so ``/a/../admin``, ``//admin``, ``/%61dmin`` and ``/admin;x``
are all ``/admin`` to the rules (what is forwarded is the client's own path).
A path that cannot be normalised (an invalid escape) is a 400, only when some rule
tests the path.

Neither phase is in the list when there are no rules and the default allows.
"""

from __future__ import annotations

from collections.abc import Callable
from time import time

from ferryman.errors import ClientProtocolError
from ferryman.pipeline.admit.address import AddressCheck, denied
from ferryman.pipeline.admit.auth import DEFAULT_CHALLENGE, Challenges
from ferryman.pipeline.admit.conditions import HOST_MEMO as PATH_MEMO
from ferryman.pipeline.admit.conditions import MEMO_PATH_SIZE, Facts, Path
from ferryman.pipeline.admit.control import AuthPlan
from ferryman.pipeline.admit.rules import AclDecision, AclRequest, RuleSet
from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.route.paths import PathPolicy, normalize, strip_matrix
from ferryman.pipeline.route.plan import ForwardPlan
from ferryman.pipeline.stage import CONTINUE, AddrPhase, Decision, Phase, Respond
from ferryman.upstream.dial import Addr

_PATHS = PathPolicy(merge_slashes=True, escaped_slashes="decode")

Challenge = Callable[[RequestContext, AclDecision], Decision]


def rules_path(target_path: bytes) -> str:
    """The path the rules see (module docstring); raises ClientProtocolError."""
    q = target_path.find(b"?")
    path = normalize(target_path if q < 0 else target_path[:q], _PATHS).decode("latin-1")
    return strip_matrix(path) if ";" in path else path


def challenge(auth: AuthPlan | None) -> Challenge:
    """The answer to an ``auth`` decision: 407 with the realm's challenge (closing the
    connection after a CONNECT or an unread body: `auth.Challenges`)."""
    answers = Challenges(auth.challenge if auth is not None else DEFAULT_CHALLENGE)

    def ask_credentials(ctx: RequestContext, d: AclDecision) -> Decision:
        return answers.challenge(ctx.head, "missing")

    return ask_credentials


def before_dns(
    rules: RuleSet, req: AclRequest | Facts, now: float, d: AclDecision, parent: bool
) -> AclDecision:
    """A ``resolve`` decision settled without the address when it can be: behind a
    parent (no address will be known, so the rules waiting for it do not match), when
    the waiting rules and the first rule that surely matches all deny, or when an
    ``auth`` rule waits and the client has not authenticated (the 407 comes first)."""

    def resume(start: int) -> AclDecision:
        return rules.decide(req, start) if isinstance(req, Facts) else rules.evaluate(req, now, start)

    if parent:
        while d.action == "resolve":
            d = resume(d.index + 1)
        return d
    first = d
    while d.action == "resolve":
        waiting = rules.rules[d.index].action
        if waiting == "auth" and req.user is None:
            # credentials may be needed once the address is known: ask for them now, as
            # a 407 cannot be answered from the dial
            return AclDecision("auth", d.rule, d.index)
        if waiting != "deny":
            return first
        d = resume(d.index + 1)
    return d if d.action == "deny" else first


def phase(fwd: ForwardPlan, ask: Challenge | None = None) -> Phase | None:
    rules = fwd.control.rules
    if not rules.rules and rules.default == "allow":
        return None  # nothing to judge
    needs_path = any(isinstance(c, Path) for r in rules.rules for c in r.conditions)
    behind_parent = fwd.parent is not None
    guard = None if fwd.control.safety.laptop or behind_parent else fwd.control.safety
    on_auth = ask if ask is not None else challenge(fwd.control.auth)
    decide = rules.decide
    paths: dict[bytes, str] = {}  # target path -> what the rules see (paths repeat); bounded

    def admit_rules(ctx: RequestContext) -> Decision:
        t = ctx.target
        assert t is not None  # the target phase comes first
        head = ctx.head
        method = head.method
        path = None
        if needs_path and method != "CONNECT":
            path = paths.get(t.path)
            if path is None:
                try:
                    path = rules_path(t.path)
                except ClientProtocolError as exc:
                    return Respond.refuse(exc)
                if len(t.path) <= MEMO_PATH_SIZE:
                    if len(paths) >= PATH_MEMO:
                        paths.clear()
                    paths[t.path] = path
        ident = ctx.identity
        user = ident.user or None
        now = time()
        ev = Facts(ctx.client_ip, method, t.host, t.port, path, head.headers, user, ident.groups, None, now)
        d = decide(ev)
        if d.action == "resolve":
            d = before_dns(rules, ev, now, d, behind_parent)
            if d.action == "resolve":
                req = AclRequest(
                    ctx.client_ip, method, t.host, t.port, path, head.headers, user, ident.groups
                )
                ctx.address_check = AddressCheck(t.host, t.port, rules, req, d.index, now, guard)
                return CONTINUE
        action = d.action
        if action == "allow":
            ctx.by_network = d.by_network
            return CONTINUE
        if action == "deny":
            return Respond.refuse(denied(t.host, d.rule, d.message))
        return on_auth(ctx, d)

    return admit_rules


def resolved(fwd: ForwardPlan) -> AddrPhase | None:
    """Judge each resolved address by what the pre-resolve phases left (`AddressCheck`)."""
    if fwd.parent is not None:
        return None  # the parent resolves: the only address dialled is the parent's
    waits = any(r.destination is not None and r.destination.networks for r in fwd.control.rules.rules)
    if not waits and fwd.control.safety.laptop:
        return None  # neither a rule nor the SSRF guard waits for the address

    def admit_address(ctx: RequestContext, host: str, port: int, addrs: list[Addr]) -> list[Addr] | Respond:
        check = ctx.address_check
        if check is None:
            return addrs
        allowed, first = check.sift(addrs)
        if allowed:
            return allowed  # only allowed addresses are dialled
        return Respond.refuse(first if first is not None else denied(check.host, "no address"))

    return admit_address
