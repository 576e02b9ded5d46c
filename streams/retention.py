"""Which users' histories a streams worker keeps: at most `max_users`, none idle past `user_idle_s`.

    touch(key, now_ms)          an interaction of the user: it becomes the most recently active
    evictions(now_ms)      ──►  the keys to delete: the least recently active beyond max_users, then
                                every user idle for longer than user_idle_s (0: no idle limit)
    restore(states, now_ms)     after a rebalance: the order rebuilt from the table's states
                                (oldest "active_ms" first)

The caller deletes the keys it is given from the history table. On faust's table a delete writes a
tombstone to the changelog, so an evicted user does not come back when the table is restored, and
the bound holds after a restart too. Plain Python, no faust: InteractionsHandler calls it, and
streams.app calls `restore` from faust's recovery callback.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class UserRetention:
    def __init__(self, *, max_users: int, user_idle_s: float):
        if max_users < 1 or user_idle_s < 0:
            raise ValueError(f"max_users: must be >= 1 and user_idle_s >= 0, got {max_users}, {user_idle_s}")
        self.max_users, self.idle_ms = max_users, user_idle_s * 1000
        self._active: OrderedDict[bytes, int] = OrderedDict()  # key -> last active (ms), least recent first

    def __len__(self) -> int:
        return len(self._active)

    def __contains__(self, key: bytes) -> bool:
        return key in self._active

    def touch(self, key: bytes, now_ms: int) -> None:
        self._active[key] = now_ms
        self._active.move_to_end(key)

    def evictions(self, now_ms: int) -> list[bytes]:
        """Forget and return the users past the bound; O(number evicted)."""
        evicted = []
        while len(self._active) > self.max_users:
            evicted.append(self._active.popitem(last=False)[0])
        if self.idle_ms > 0:
            while self._active and next(iter(self._active.values())) < now_ms - self.idle_ms:
                evicted.append(self._active.popitem(last=False)[0])
        return evicted

    def restore(self, states: Iterable[tuple[bytes, dict]], *, now_ms: int) -> None:
        """Replace the order with the one the states record; a state without "active_ms" (written
        before the bound existed) counts as active now, so an upgrade does not drop every user."""
        by_age = sorted((state.get("active_ms", now_ms), key) for key, state in states)
        self._active = OrderedDict((key, active_ms) for active_ms, key in by_age)
