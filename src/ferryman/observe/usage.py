"""Usage per proxy user (pure): requests and bytes, for the admin ``/status``.

The table is bounded: once ``max_users`` names are in it, the exchanges of any
other user are counted under `OTHERS`, so a flood of user names (each one a
valid login) cannot grow a worker's memory.  Counts are cumulative since the
worker started (a dashboard takes differences between two reads); a tunnel is
counted when it closes, with every byte it carried.  Each worker counts its own
exchanges: ``/status`` answers with the counts of the worker that serves it.
"""

from __future__ import annotations

OTHERS = "(others)"
MAX_USERS = 1000


class UserUsage:
    __slots__ = ("max_users", "_rows")

    def __init__(self, max_users: int = MAX_USERS) -> None:
        self.max_users = max_users
        self._rows: dict[str, list[int]] = {}  # user -> [requests, bytes_in, bytes_out]

    def add(self, user: str, bytes_in: int, bytes_out: int) -> None:
        row = self._rows.get(user)
        if row is None:
            if len(self._rows) >= self.max_users:
                user = OTHERS
                row = self._rows.get(OTHERS)
            if row is None:
                row = self._rows[user] = [0, 0, 0]
        row[0] += 1
        row[1] += bytes_in
        row[2] += bytes_out

    def snapshot(self) -> dict[str, dict[str, int]]:
        """``{user: {requests, bytes_in, bytes_out}}``, the biggest users first."""
        rows = sorted(self._rows.items(), key=lambda kv: (-(kv[1][1] + kv[1][2]), kv[0]))
        return {u: {"requests": r[0], "bytes_in": r[1], "bytes_out": r[2]} for u, r in rows}

    def __len__(self) -> int:
        return len(self._rows)
