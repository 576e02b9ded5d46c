"""Fitting the learned sequential retriever (SASRec, softmax over all items) on a training split.

In:  a `RecData` (items, their content vectors and categories), a `LeaveOneOut` split, a
     `SASRecConfig`, and whether to add content vectors and attribute embeddings to the item ids.
Out: a fitted `SASRecScorer` and an info dict (its config, epochs, time, and on the split's
     held-out validation users its next-item HR@10 and recall@100, which also pick the epoch kept).

`vip5 retriever train` saves the result as a retriever (`index.retriever.save_retriever`);
`vip5 train --item-init retriever` fits one first and starts VIP5's item tokens from its item
vectors (collaborative item tokens), saving it beside the run as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from index.sasrec import SASRecConfig, SASRecScorer

from .data import Example, LeaveOneOut, RecData


def fit_retriever(data: RecData, split: LeaveOneOut, config: SASRecConfig, *, content: np.ndarray | None = None,
                  attributes: bool = True) -> tuple[SASRecScorer, dict]:
    """SASRec fitted on `split.train` (with `content` (I+1, C) vectors and, when `attributes`,
    each item's attribute embeddings added to its id), the best epoch by validation recall@100."""
    attribute_rows = item_attributes(data) if attributes else None
    validate = (lambda fitted: validation_scores(fitted, split.valid)["recall@100"]) if split.valid else None
    scorer = SASRecScorer(split.train, data.n_items, config, content=content, attributes=attribute_rows,
                          validate=validate)
    return scorer, {**scorer.info(), "valid": validation_scores(scorer, split.valid)}


def item_attributes(data: RecData) -> list[list[int]] | None:
    """Each item's attribute ids (row 0 empty), numbered from the names in its category field
    (`item2attributes.json`'s categories and brand, comma-separated); None when no item has any."""
    vocabulary: dict[str, int] = {}
    rows = [[]] + [[vocabulary.setdefault(name, len(vocabulary)) for name in data.category(i).split(", ") if name]
                   for i in range(1, data.n_items + 1)]
    return rows if vocabulary else None


def validation_scores(scorer, examples: Sequence[Example], *, batch: int = 512) -> dict:
    """HR@10 and recall@100 of the retriever's own ranking (history items excluded) on `examples`."""
    hits = np.zeros((len(examples), 2), dtype=bool)
    for start in range(0, len(examples), batch):
        chunk = examples[start:start + batch]
        scores = scorer.scores([e.history for e in chunk])  # (B, I+1)
        for row, example in enumerate(chunk):
            scores[row, list(example.history)] = -np.inf
            target = scores[row, example.target]
            rank = int((scores[row] > target).sum())  # items scored above the target
            hits[start + row] = (rank < 10, rank < 100)
    return {"users": len(examples), "hr@10": round(float(hits[:, 0].mean()), 4) if len(examples) else None,
            "recall@100": round(float(hits[:, 1].mean()), 4) if len(examples) else None}
