"""Training and evaluation prompts for the three task families, drawn from a leave-one-out split.

In:  `RecData` + its `LeaveOneOut` split, a `TaskConfig`, a numpy Generator.
Out: `Prompt`s (model_worker.vip5model.prompts) with their targets, and the image lookup the prompt
     encoder reads (item id string -> feature vector; items without an image are absent).

Training samples (one family per sample, drawn by `family_weights` among the families the data
has; one training template drawn uniformly inside the family, held-out templates never used):
  sequential   a random position t >= 1 of the user's training items: items[:t] (last
               `history_len`) -> items[t]. Every position serves as a target, which gives a small
               model more signal than P5's "one of the last three" while never touching the
               validation or test item.
  direct       the same (history, target) pair; list templates show the target among
               `train_candidates` negatives the user never touched (shuffled), yes/no templates ask
               about the target or one such negative (50/50).
  explanation  a training-split explanation (user, item, rating) -> its text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_worker.vip5model.prompts import (
    FAMILIES,
    Prompt,
    direct_prompt,
    direct_yes_no_prompt,
    explanation_prompt,
    sequential_prompt,
    templates,
)

from .data import Explanation, LeaveOneOut, RecData, sample_negatives


@dataclass(frozen=True)
class TaskConfig:
    """history_len: most recent items written into a prompt; train_candidates: negatives in a
    training candidate list (the paper uses 99); family_weights: sampling weight of sequential,
    direct and explanation samples (families the data lacks are skipped)."""

    history_len: int = 20
    train_candidates: int = 99
    family_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.history_len < 1:
            raise ValueError(f"TaskConfig.history_len must be >= 1, got {self.history_len}")
        if self.train_candidates < 1:
            raise ValueError(f"TaskConfig.train_candidates must be >= 1, got {self.train_candidates}")
        if len(self.family_weights) != len(FAMILIES) or min(self.family_weights) < 0 or not sum(self.family_weights):
            raise ValueError(f"TaskConfig.family_weights needs {len(FAMILIES)} non-negative weights, not all 0")


def image_lookup(data: RecData) -> dict[str, np.ndarray]:
    """Item id (as written in prompts) -> image feature, for items that have one."""
    if data.image_features is None:
        return {}
    return {str(item): data.image_features[item] for item in np.nonzero(data.has_image)[0] if item > 0}


class TrainingSampler:
    """Draws multitask training prompts from the training part of a leave-one-out split."""

    def __init__(self, data: RecData, split: LeaveOneOut, config: TaskConfig):
        self.data, self.split, self.config = data, split, config
        self.users = [u for u, items in enumerate(split.train, start=1) if len(items) >= 2]
        self.explanations = [e for e in data.explanations if e.split == "train"]
        available = {"sequential": bool(self.users), "direct": bool(self.users),
                     "explanation": bool(self.explanations)}
        weights = np.array([w if available[f] else 0.0 for f, w in zip(FAMILIES, config.family_weights, strict=True)])
        if not weights.sum():
            raise ValueError("no training samples: no user has 2 training items and there are no explanations")
        self.family_p = weights / weights.sum()
        self.templates = {f: templates(f, held_out=False) for f in FAMILIES}
        self.templates["explanation"] = [t for t in self.templates["explanation"] if "star_rating" not in t.fields
                                         or self._has_ratings()]

    def _has_ratings(self) -> bool:
        return any(e.rating for e in self.explanations)

    @property
    def families(self) -> list[str]:
        return [f for f, p in zip(FAMILIES, self.family_p, strict=True) if p > 0]

    def sample(self, batch_size: int, rng: np.random.Generator) -> list[Prompt]:
        families = rng.choice(len(FAMILIES), size=batch_size, p=self.family_p)
        return [self._sample_family(FAMILIES[f], rng) for f in families]

    def _sample_family(self, family: str, rng: np.random.Generator) -> Prompt:
        options = self.templates[family]
        template = options[int(rng.integers(len(options)))]
        if family == "explanation":
            return explanation_from(template, self.explanations[int(rng.integers(len(self.explanations)))])
        user = self.users[int(rng.integers(len(self.users)))]
        items = self.split.train[user - 1]
        t = int(rng.integers(1, len(items)))
        history, target = items[:t][-self.config.history_len:], items[t]
        if family == "sequential":
            return sequential_prompt(template, user, history, target, separator=_separator(rng))
        full_sequence = self.data.sequences[user - 1]
        seed = int(rng.integers(2**31))
        if template.target == "yes_no":
            if rng.random() < 0.5:
                return direct_yes_no_prompt(template, user, target, True)
            negative = sample_negatives(full_sequence, self.data.n_items, user=user, seed=seed, count=1)[0]
            return direct_yes_no_prompt(template, user, negative, False)
        negatives = sample_negatives(full_sequence, self.data.n_items, user=user, seed=seed,
                                     count=self.config.train_candidates)
        candidates = shuffled((target, *negatives), rng)
        return direct_prompt(template, user, candidates, target, history=history)


def _separator(rng: np.random.Generator) -> str:
    return "," if rng.random() < 0.5 else "->"  # as the reference code, 50/50


def shuffled(items: Sequence[int], rng: np.random.Generator) -> list[int]:
    return [items[i] for i in rng.permutation(len(items))]


def explanation_from(template, explanation: Explanation) -> Prompt:
    rating = int(round(explanation.rating)) if "star_rating" in template.fields else None
    return explanation_prompt(template, explanation.user, explanation.item, explanation.text, star_rating=rating)


def tokenizer_corpus(data: RecData, split: LeaveOneOut) -> list[str]:
    """Texts a built tokenizer learns from: training explanations (templates are added by
    `build_template_tokenizer`); IDs need only digits, which are always in the vocabulary."""
    del split  # the corpus never includes held-out text
    return [e.text for e in data.explanations if e.split == "train"]


class SequenceSampler:
    """Item-token training batches: whole training sequences, every position a target.

    `sample(batch_size, rng)` -> rows (B, L+1) long: [start, i_1, ..., i_L] per user (the last
    `max_len` training items), right-padded with 0. A batch is one length bucket: a random pool of
    50 batches' worth of users is sorted by length and cut into consecutive batches, one of which
    is returned. So a batch carries little padding, and every user is equally likely to be drawn,
    the shortest and longest sequences too.
    """

    def __init__(self, split: LeaveOneOut, *, bos: int, max_len: int = 50):
        self.sequences = [items[-max_len:] for items in split.train if len(items) >= 1]
        if not self.sequences:
            raise ValueError("no training samples: every user's training sequence is empty")
        self.bos, self.max_len = bos, max_len
        self.lengths = np.array([len(s) for s in self.sequences])

    def sample(self, batch_size: int, rng: np.random.Generator):
        import torch

        pool = rng.choice(len(self.sequences), size=min(len(self.sequences), batch_size * 50), replace=False)
        pool = pool[np.argsort(self.lengths[pool], kind="stable")]
        start = batch_size * int(rng.integers(0, -(-len(pool) // batch_size)))
        chosen = [self.sequences[i] for i in pool[start:start + batch_size]]
        rows = np.zeros((len(chosen), max(len(s) for s in chosen) + 1), dtype=np.int64)
        for row, items in enumerate(chosen):
            rows[row, :len(items) + 1] = (self.bos, *items)
        return torch.from_numpy(rows)
