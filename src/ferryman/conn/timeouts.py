"""Names shared by the client connection's parts: timer phases and read-pause reasons.

Phase deadlines (DESIGN 2.6): one `call_later` handle per connection, re-armed
per phase; BODY and RESP are activity deadlines (re-armed for the remainder
while bytes move).
"""

from __future__ import annotations

# timer phases
IDLE, HEAD, BODY, WAIT, RESP, TUNNEL = range(6)
# reasons to stop reading from the client (a bit set)
P_BUFFER, P_UPSTREAM, P_PIPELINE = 1, 2, 4
# methods a proxy may re-send automatically (RFC 9110 9.2.2)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
