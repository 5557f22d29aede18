"""What is left to judge once a forward destination's addresses are known (pure).

The pre-resolve admit phases decide what they can on the name; when the verdict
hangs on the address (a rule with ``networks``, the SSRF guard), they leave an
`AddressCheck` on the request context.  The dialler runs it on each resolved
address (`pipeline/admit/access.resolved`) and dials only the addresses it lets
through, so the address judged is the address connected to (no second lookup:
DNS rebinding).  A pooled connection is judged again on its peer address before a
request reuses it, and a background cache fill on the addresses it resolves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from ferryman.errors import FerrymanError, Forbidden

if TYPE_CHECKING:
    from ferryman.pipeline.admit.rules import AclRequest, RuleSet
    from ferryman.pipeline.admit.safety import SsrfGuard

A = TypeVar("A", bound=tuple[int, tuple[Any, ...]])  # a resolved (family, sockaddr)


def rule_label(name: str) -> str:
    """How a 403 names the rule that decided (the default has no rule of its own)."""
    return "forward.default" if name == "default" else name


def denied(host: str, rule: str, message: str | None = None) -> Forbidden:
    why = f"access to {host} denied (rule: {rule_label(rule)})"
    return Forbidden(f"{why}: {message}" if message else why)


def ssrf_refusal(guard: SsrfGuard, host: str, ip: str, port: int, by_network: bool) -> Forbidden | None:
    """The SSRF guard's refusal of dialling ``ip`` for ``host``, or None."""
    v = guard.check(ip, port, by_network)
    if v.allowed:
        return None
    return Forbidden(
        f"access to {host} denied: {ip} is a {v.reason} address (rule: SSRF guard; "
        "a rule may allow it by networks)"
    )


@dataclass(frozen=True, slots=True)
class AddressCheck:
    host: str
    port: int
    rules: RuleSet | None = None  # resume the rules at ``start``, with the address
    req: AclRequest | None = None
    start: int = 0
    now: float = 0.0
    guard: SsrfGuard | None = None  # the SSRF guard (issue 12), when it applies
    by_network: bool = False  # the rules already allowed this destination by its address

    def refusal(self, ip: str) -> FerrymanError | None:
        """None when ``ip`` may be dialled, else the error that refuses it."""
        by_network = self.by_network
        rules = self.rules
        if rules is not None and self.req is not None:
            d = rules.evaluate(replace(self.req, address=ip), self.now, self.start)
            if d.action == "deny" or d.action == "resolve":
                return denied(self.host, d.rule, d.message)
            if d.action == "auth":
                return Forbidden(f"access to {self.host} needs proxy authentication (rule: {d.rule})")
            by_network = d.by_network
        guard = self.guard
        if guard is not None:
            return ssrf_refusal(guard, self.host, ip, self.port, by_network)
        return None

    def allows(self, ip: str) -> bool:
        return self.refusal(ip) is None

    def sift(self, addrs: list[A]) -> tuple[list[A], FerrymanError | None]:
        """The resolved ``(family, sockaddr)`` entries that may be dialled, in order, and
        the first refusal (None when nothing was refused)."""
        allowed: list[A] = []
        first: FerrymanError | None = None
        for a in addrs:
            err = self.refusal(str(a[1][0]))
            if err is None:
                allowed.append(a)
            elif first is None:
                first = err
        return allowed, first

    def admit(self, addrs: list[A]) -> list[A]:
        """The entries that may be dialled (`sift`); raise the first refusal when none may."""
        allowed, first = self.sift(addrs)
        if not allowed:
            raise first if first is not None else Forbidden(f"access to {self.host} denied (no address)")
        return allowed
