"""The error tree and the one table that maps errors to HTTP statuses.

Every failure a request can meet is one of these classes; `conn/` never picks a
status code itself.  That keeps the mapping auditable in one place and lets the
log phase tell client faults from upstream faults (``source``).

``origin_failure`` marks the errors that say the origin is down or failing: its name
does not resolve, it cannot be reached, it closed or timed out, it answered garbage, or
none of its servers is healthy or free.  Those, and only those, may be answered by a
stale cache entry under RFC 5861 stale-if-error (`conn/cache_flow.py`).  ferryman's own
refusals (403 by the rules or the SSRF guard, 508 loop: also when judged after DNS),
client faults and internal errors never are, whatever their status: the client gets the
refusal, as it would without a cache.
"""

from __future__ import annotations

from typing import ClassVar, Literal

Source = Literal["client", "upstream", "internal", "policy"]


class FerrymanError(Exception):
    """Base of every error that ends a request with a synthetic response."""

    status: ClassVar[int] = 500
    source: ClassVar[Source] = "internal"
    origin_failure: ClassVar[bool] = False  # the origin is down or failing (module docstring)

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# -- client side -------------------------------------------------------------
class ClientProtocolError(FerrymanError):
    """Malformed request: the connection cannot be trusted any further."""

    status = 400
    source = "client"


class ClientTimeout(FerrymanError):
    status = 408
    source = "client"


class BodyTooLarge(FerrymanError):
    status = 413
    source = "client"


class UriTooLong(FerrymanError):
    status = 414
    source = "client"


class HeadersTooLarge(FerrymanError):
    status = 431
    source = "client"


class NotImplementedByProxy(FerrymanError):
    """A request feature ferryman does not forward (e.g. unknown transfer coding)."""

    status = 501
    source = "client"


# -- policy ------------------------------------------------------------------
class Forbidden(FerrymanError):
    status = 403
    source = "policy"


class LoopDetected(FerrymanError):
    status = 508
    source = "policy"


class ProxyAuthRequired(FerrymanError):
    """Missing, malformed or wrong ``Proxy-Authorization`` (answered with a challenge)."""

    status = 407
    source = "policy"


class RateLimited(FerrymanError):
    """Too many failed attempts (e.g. proxy credentials) from one client."""

    status = 429
    source = "policy"


class AuthBusy(FerrymanError):
    """Too many proxy password checks waiting already (``forward.auth.max_pending_checks``):
    the credentials were not checked (sent with Retry-After).  503, not 429: the client did
    nothing wrong, this worker's password checker is saturated (Squid and nginx users know
    "auth backend unavailable" as a 503); not 407, which would say the password was wrong."""

    status = 503
    source = "internal"


class RouteNotFound(FerrymanError):
    status = 404
    source = "policy"


# -- upstream side -----------------------------------------------------------
class UpstreamConnectError(FerrymanError):
    status = 502
    source = "upstream"
    origin_failure = True


class UpstreamProtocolError(FerrymanError):
    """The upstream sent something we will not relay (bad framing, garbage)."""

    status = 502
    source = "upstream"
    origin_failure = True


class UpstreamClosed(FerrymanError):
    status = 502
    source = "upstream"
    origin_failure = True


class DnsError(FerrymanError):
    status = 502
    source = "upstream"
    origin_failure = True


class UpstreamTimeout(FerrymanError):
    status = 504
    source = "upstream"
    origin_failure = True


class NoHealthyUpstream(FerrymanError):
    """Every server of the route's upstream is down or ejected (sent with Retry-After)."""

    status = 503
    source = "upstream"
    origin_failure = True


class UpstreamFull(FerrymanError):
    """Every healthy server is at its max_conns and the queue timed out or is full
    (sent with Retry-After).  Not a fault of the servers: passive health ignores it; but
    the origin cannot take the request now, so a stale entry may answer it."""

    status = 503
    source = "upstream"
    origin_failure = True


class SourceLineError(ValueError):
    """A line of a file (or an entry of a config list) that cannot be used: names its
    ``source`` and ``line`` (0: the source as a whole, e.g. unreadable)."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}" if line else f"{source}: {message}")
        self.source = source
        self.line = line
        self.message = message


class ConfigError(Exception):
    """A configuration that cannot be built; ``errors`` holds one line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(errors))
        self.source = source
        self.errors = errors

    def render(self) -> str:
        return "\n".join(f"{self.source}: {e}" for e in self.errors)


REASONS: dict[int, str] = {
    100: "Continue",
    103: "Early Hints",
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    508: "Loop Detected",
}


def reason(status: int) -> str:
    return REASONS.get(status, "Unknown")
