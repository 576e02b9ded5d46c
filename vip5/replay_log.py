"""What `vip5 bench replay` sends and how it scores what comes back: plain functions, no Kafka.

    RecData (P5 folder or raw review file)  ──► ReplayLog: catalogue, training interactions in
                                                 replay order, sampled test users (validation
                                                 event in, held-out last item to hit)
    published lists / request candidates     ──► HR@10, NDCG@10 (a missing or short list: a miss)
    the same training sequences in-process   ──► Markov and popularity on the same users

The split is the offline one (`model_worker.offline.data.leave_one_out`): each user's items but the
last two are training interactions (users with fewer than 3 items keep all and are never tested);
a test user's second-to-last item is the validation interaction that triggers the recommendation,
the last item is the target. Order: by review time where the file has times (raw `*.json.gz`
reviews; ties keep each user's order), otherwise a seeded uniform interleaving of the users'
sequences (P5 files have none); either keeps each user's own order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_worker.offline.baselines import Markov, Popularity
from model_worker.offline.data import RecData, leave_one_out
from model_worker.offline.metrics import ndcg_at_k, rank_in_list, rank_of_target

K = 10


@dataclass(frozen=True)
class TestUser:
    user: str  # user key
    history: tuple[str, ...]  # item keys, oldest first, the validation item last
    target: str  # the held-out last item


@dataclass(frozen=True)
class ReplayLog:
    """`train`: (user key, item key) in replay order; `test`: the sampled users in replay order."""

    train: tuple[tuple[str, str], ...]
    test: tuple[TestUser, ...]
    ordered_by: str  # "review time" or "seeded interleaving"


def build_log(data: RecData, *, users: int | None, seed: int, review_file: Path | None = None) -> ReplayLog:
    """The replay of `data`; `users`: a seeded sample of test users (None: all of them)."""
    split = leave_one_out(data.sequences)
    keys, items = data.user_keys, data.item_keys
    times = review_times(review_file, data) if review_file is not None else None
    if times is not None:
        slots = sorted(((times[u][p], u, p) for u, seq in enumerate(split.train) for p in range(len(seq))))
        order, ordered_by = [(u, p) for _, u, p in slots], "review time"
    else:
        owners = [u for u, seq in enumerate(split.train) for _ in seq]
        random.Random(seed).shuffle(owners)
        cursor = [0] * len(split.train)
        order = []
        for u in owners:
            order.append((u, cursor[u]))
            cursor[u] += 1
        ordered_by = "seeded interleaving"
    train = tuple((keys[u], items[split.train[u][p] - 1]) for u, p in order)
    tested = list(split.test)
    if users is not None and users < len(tested):  # the users `vip5 evaluate --max-users N` draws with this seed
        tested = [tested[i] for i in np.sort(np.random.default_rng(seed).choice(len(tested), users, replace=False))]
    random.Random(seed).shuffle(tested)  # replay order
    test = tuple(TestUser(user=keys[e.user - 1], history=tuple(items[i - 1] for i in e.history),
                          target=items[e.target - 1]) for e in tested)
    return ReplayLog(train=train, test=test, ordered_by=ordered_by)


def review_times(path: Path, data: RecData) -> list[list[int]] | None:
    """Per user, the review time of each item of its sequence (the loader's time order), or None."""
    from model_worker.offline.data import read_reviews

    first: dict[tuple[str, str], int] = {}
    for review in read_reviews(path):
        pair = (review["reviewerID"], review["asin"])
        first.setdefault(pair, int(review.get("unixReviewTime", 0)))
    out = []
    for u, seq in enumerate(data.sequences):
        user = data.user_keys[u]
        out.append([first.get((user, data.item_keys[i - 1]), 0) for i in seq])
    return out


def list_metrics(ranked_lists: Sequence[Sequence[str] | None], targets: Sequence[str]) -> dict:
    """HR@10 / NDCG@10 of ranked lists over the whole catalogue: a target outside the first 10, or a
    user without a list (None), is a miss."""
    ranks = [K if ranked is None else rank_in_list(list(ranked)[:K], target)
             for ranked, target in zip(ranked_lists, targets, strict=True)]
    return {"hr@10": round(float(np.mean([r < K for r in ranks])) if ranks else 0.0, 4),
            "ndcg@10": round(ndcg_at_k(ranks, K), 4), "n_users": len(ranks)}


def baseline_metrics(data: RecData, test: Sequence[TestUser], *, seed: int) -> dict[str, dict]:
    """Markov and popularity fitted on the training interactions, ranking the whole catalogue for
    the same users (history items excluded, as the published lists exclude them)."""
    split = leave_one_out(data.sequences)
    row = {key: i for i, key in enumerate(data.item_keys, start=1)}
    histories = [[row[i] for i in user.history] for user in test]
    out = {}
    for scorer in (Markov(split.train, data.n_items), Popularity(split.train, data.n_items)):
        rng, ranks = np.random.default_rng(seed), []
        for start in range(0, len(histories), 512):
            chunk = histories[start:start + 512]
            for scores, history, user in zip(scorer.scores(chunk), chunk, test[start:start + 512], strict=True):
                scores[list(set(history))] = -np.inf
                ranks.append(rank_of_target(scores, row[user.target], rng=rng))
        out[scorer.name] = {"hr@10": round(float(np.mean([r < K for r in ranks])), 4),
                            "ndcg@10": round(ndcg_at_k(ranks, K), 4), "n_users": len(ranks)}
    return out


def candidate_recall(candidates: Sequence[Sequence[tuple[str, str]] | None], targets: Sequence[str],
                     sources: Sequence[str]) -> dict[str, float]:
    """Share of users whose target is among their request's candidates, per source and `all`
    ((item, source) pairs per user; None: no request, a miss)."""
    n = max(len(targets), 1)
    out = {s: sum(1 for c, t in zip(candidates, targets, strict=True) if c and (t, s) in set(c)) / n
           for s in sources}
    out["all"] = sum(1 for c, t in zip(candidates, targets, strict=True) if c and t in {i for i, _ in c}) / n
    return {s: round(v, 4) for s, v in out.items()}
