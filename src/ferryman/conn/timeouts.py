"""Names shared by the client connection's parts: read-pause reasons and retry rules.

The connection's states and their deadlines are the table of conn/state.py.
"""

from __future__ import annotations

# reasons to stop reading from the client (a bit set); P_REFUSED is never lifted
P_BUFFER, P_UPSTREAM, P_PIPELINE, P_REFUSED = 1, 2, 4, 8
# methods a proxy may re-send automatically (RFC 9110 9.2.2)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
