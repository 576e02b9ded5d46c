"""Item-to-item co-visitation, learned one interaction at a time from the interactions stream.

In:  `record(before, item)`: a user's items before this interaction (oldest first) and the item.
Out: `candidates(history, k)` -> up to k `(item_id, score)`, best first, never an item of the
     history (or of `exclude`). Scores are comparable within one call only.

Counting: a new item j at distance d (1 = just before) from each of the user's previous `window`
items h adds 1/d to the forward weight (h, j) and `backward_weight`/d to (j, h); a repeat of the
same item adds nothing. Forward pairs weigh more because the list is for what comes next (on
Beauty, `vip5 bench candidates` recall@100 of this source: 0.186 with both directions equal,
0.192 with 0.5).
A history's score for item x sums, over its latest `recent` items h (the newest weighted 1, the one
before 1/2, then 1/3, ...), the weight of (h, x). Fed the same log in the same order without decay
and with rows never pruned, the scores equal those of the batch generator in
`model_worker/offline/candidates.py` (tests/test_covisitation_matches_offline.py holds them equal).

Decay: every weight halves every `half_life_events` recorded interactions. Counting events rather
than seconds makes a replay give the same state whatever the wall clock. Weights are stored relative
to an origin (`w * 2 ** (events / half_life)`), so recording is O(window) and old pairs fall behind
without being touched; all rows are rescaled once the exponent passes 500 (every 500 half-lives).

Bounded memory: a row (one item's neighbours) is cut to its `neighbours` heaviest entries when it
grows past `prune_factor * neighbours`; at most `max_items` rows are kept, the least recently
updated row going first. In CPython an entry costs 40 to 60 bytes (its slot in the row's dict and
its float; item-id strings are shared with the rest of the process), so a full row at the defaults
(200 to 400 entries) costs 11 to 23 KB and the hard bound is max_items x 23 KB (2.3 GB at the
defaults). Real rows are mostly far from full: replaying Beauty's training log (154k interactions,
12,068 items) holds 520k entries in 28 MB, 2.3 KB per item. `memory_bytes()` measures it.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections import OrderedDict, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

MAX_EXPONENT = 500.0  # rebase before 2 ** exponent loses range


@dataclass(frozen=True)
class CovisitationConfig:
    """How pairs are counted, scored, decayed and bounded."""

    window: int = 3  # pairs up to this many positions apart count (weight 1 / distance)
    recent: int = 5  # latest history items whose rows are summed into a user's scores
    backward_weight: float = 0.5  # a pair read from the later item back to the earlier, relative to forward
    neighbours: int = 200  # entries a row is cut back to when it is pruned
    prune_factor: float = 2.0  # a row is pruned once it holds more than prune_factor * neighbours entries
    max_items: int = 100_000  # rows kept; the least recently updated row is dropped beyond this
    # A pair's weight halves every this many interactions; None: no decay. A million interactions
    # is days of traffic on a mid-size shop; much shorter forgets the long tail's rare pairs.
    half_life_events: float | None = 1_000_000.0

    def __post_init__(self) -> None:
        for name in ("window", "recent", "neighbours", "max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"CovisitationConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.backward_weight <= 1.0:
            raise ValueError(f"CovisitationConfig.backward_weight must be in [0, 1], got {self.backward_weight}")
        if not self.prune_factor >= 1.0:
            raise ValueError(f"CovisitationConfig.prune_factor must be >= 1, got {self.prune_factor}")
        if self.half_life_events is not None and not (self.half_life_events > 0 and math.isfinite(self.half_life_events)):
            raise ValueError(f"CovisitationConfig.half_life_events must be > 0 and finite or None, "
                             f"got {self.half_life_events}")

    @property
    def max_row(self) -> int:
        return int(self.prune_factor * self.neighbours)


class Covisitation:
    """Decayed, bounded co-visitation rows. Not thread-safe: one owner (the streams event loop)."""

    def __init__(self, config: CovisitationConfig | None = None):
        self.config = config or CovisitationConfig()
        self._rows: OrderedDict[str, dict[str, float]] = OrderedDict()  # least recently updated first
        self._events = 0  # interactions recorded
        self._origin = 0  # event count the stored weights are relative to
        self.pruned_rows = 0  # times a row was cut back to `neighbours`
        self.evicted_rows = 0  # rows dropped for max_items

    def record(self, before: Sequence[str], item: str) -> None:
        """One interaction with `item`, by a user whose earlier items were `before` (oldest first)."""
        self._events += 1
        gain = self._gain()  # a unit recorded now, relative to the origin
        for distance, other in enumerate(reversed(before[-self.config.window:]), start=1):
            if other != item:
                weight = gain / distance
                self._add(other, item, weight)
                self._add(item, other, weight * self.config.backward_weight)

    def record_many(self, before: Sequence[str], items: Sequence[str]) -> None:
        """Several interactions of one user in order: each sees the ones before it as its history."""
        seen = list(before[-self.config.window:])
        for item in items:
            self.record(seen, item)
            seen = (seen + [item])[-self.config.window:]

    def candidates(self, history: Sequence[str], k: int, *,
                   exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """Up to k items co-visited with the latest history items, heaviest first."""
        if k <= 0:
            return []
        scores: dict[str, float] = defaultdict(float)
        for age, item in enumerate(reversed(history[-self.config.recent:])):
            for other, weight in self._rows.get(item, {}).items():
                scores[other] += weight / (age + 1)
        seen = set(history) | set(exclude)
        best = heapq.nlargest(k, ((i, s) for i, s in scores.items() if i not in seen), key=lambda kv: kv[1])
        scale = 1.0 / self._gain()  # stored weights are relative to the origin: back to "now"
        return [(item, score * scale) for item, score in best]

    def neighbours(self, item: str) -> dict[str, float]:
        """A copy of `item`'s row with weights as of now (for inspection and tests)."""
        scale = 1.0 / self._gain()
        return {other: w * scale for other, w in self._rows.get(item, {}).items()}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, item: str) -> bool:
        return item in self._rows

    def entries(self) -> int:
        return sum(len(row) for row in self._rows.values())

    def memory_bytes(self) -> int:
        """Bytes of the rows: dicts and their float values (the item-id strings are shared, not counted)."""
        floats = sys.getsizeof(1.0) * self.entries()
        return sys.getsizeof(self._rows) + sum(sys.getsizeof(row) for row in self._rows.values()) + floats

    def stats(self) -> dict:
        return {"events": self._events, "rows": len(self), "entries": self.entries(),
                "pruned_rows": self.pruned_rows, "evicted_rows": self.evicted_rows}

    def _gain(self) -> float:
        """The stored weight of a unit added now: 2 ** (events since origin / half_life)."""
        half_life = self.config.half_life_events
        if half_life is None:
            return 1.0
        exponent = (self._events - self._origin) / half_life
        if exponent > MAX_EXPONENT:
            self._rebase()
            exponent = 0.0
        return 2.0 ** exponent

    def _rebase(self) -> None:
        factor = 2.0 ** (-(self._events - self._origin) / self.config.half_life_events)
        for item, row in self._rows.items():
            self._rows[item] = {other: w * factor for other, w in row.items() if w * factor > 1e-300}
        self._origin = self._events

    def _add(self, item: str, other: str, weight: float) -> None:
        row = self._rows.get(item)
        if row is None:
            row = self._rows[item] = {}
            if len(self._rows) > self.config.max_items:
                self._rows.popitem(last=False)
                self.evicted_rows += 1
        else:
            self._rows.move_to_end(item)
        row[other] = row.get(other, 0.0) + weight
        if len(row) > self.config.max_row:
            self._rows[item] = dict(heapq.nlargest(self.config.neighbours, row.items(), key=lambda kv: kv[1]))
            self.pruned_rows += 1
