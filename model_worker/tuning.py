"""Tuning VIP5 on live-system data: examples from user histories, and a bounded training loop.

    user histories (item id strings, oldest first) ──► training prompts (sequential + direct)
    VIP5Model + prompts + image features           ──► `tune`: AdamW, warmup, clipping, N steps

The offline pipeline (model_worker.offline) trains on benchmark datasets; this module serves the
streaming side: the demo's model preparation and the incremental adapter trainer, both of which
see items as the string ids that flow through Kafka.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model_worker.training import make_optimizer, train_step
from model_worker.vip5model.model import VIP5Model
from model_worker.vip5model.prompts import (
    Prompt,
    direct_prompt,
    explanation_prompt,
    sequential_prompt,
    templates,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneConfig:
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    time_budget_s: float | None = None  # stop early when spent
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: must be >= 0, got {self.warmup_steps}")


@dataclass(frozen=True)
class ExampleConfig:
    history_len: int = 10  # items written into a sequential prompt
    direct_candidates: int = 20  # candidates in a direct prompt (1 true + negatives)
    held_out_templates: bool = False  # True: only the unseen-prompt templates (evaluation)


def position_prompts(user_id: str, before: Sequence[str], target: str, catalogue: Sequence[str],
                     rng: random.Random, config: ExampleConfig = ExampleConfig()) -> list[Prompt]:
    """The prompts teaching that `target` follows `before`: a sequential prompt, and a direct prompt
    with `target` among sampled catalogue items the user has not touched."""
    seq_templates = templates("sequential", held_out=config.held_out_templates)
    direct_templates = [t for t in templates("direct", held_out=config.held_out_templates) if t.target == "item"]
    recent = list(before[-config.history_len:])
    touched = {*before, target}
    pool = [i for i in catalogue if i not in touched]
    candidates = [target, *rng.sample(pool, min(len(pool), config.direct_candidates - 1))]
    rng.shuffle(candidates)
    return [sequential_prompt(rng.choice(seq_templates), user_id, recent, target),
            direct_prompt(rng.choice(direct_templates), user_id, candidates, target, history=recent)]


def history_prompts(user_id: str, items: Sequence[str], catalogue: Sequence[str], rng: random.Random,
                    config: ExampleConfig = ExampleConfig()) -> list[Prompt]:
    """`position_prompts` for every position t >= 1 of a history (items oldest first)."""
    return [p for t in range(1, len(items)) for p in position_prompts(user_id, items[:t], items[t], catalogue, rng, config)]


def explanation_prompts(user_id: str, items: Sequence[str], texts: Mapping[str, str], rng: random.Random,
                        config: ExampleConfig = ExampleConfig()) -> list[Prompt]:
    """One explanation prompt per history item that has a text (a review, or a description)."""
    plain = [t for t in templates("explanation", held_out=config.held_out_templates) if "star_rating" not in t.fields]
    return [explanation_prompt(rng.choice(plain), user_id, item, texts[item]) for item in items if item in texts]


def _schedule(step: int, cfg: TuneConfig) -> float:
    """Linear warmup then linear decay to 10% of the peak rate."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return max(0.1, 1.0 - 0.9 * progress)


def tune(model: VIP5Model, prompts: Sequence[Prompt], features: Mapping[str, np.ndarray], cfg: TuneConfig,
         *, stage: str, sequences: Sequence[Sequence[str]] = (),
         on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train the parameters of `stage` ("pretrain" or "adapt") for at most cfg.steps steps (or
    cfg.time_budget_s), with the optimizer recipe and step every training path shares
    (model_worker.training). Item-token models train on `sequences` (item keys oldest first; every
    position a target); others on `prompts`. Returns {"steps", "loss_first", "loss_last", "seconds"}."""
    item_tokens = model.item_tokens is not None
    examples = [s for s in (_item_rows(model, seq) for seq in sequences) if len(s) >= 2] if item_tokens else prompts
    if not examples:
        raise ValueError("tune needs at least one prompt (or, for item-token models, a sequence of 2 known items)")
    model.set_stage(stage)
    model.train()
    optimizer = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    device = next(model.parameters()).device
    rng = random.Random(cfg.seed)
    order: list[int] = []
    losses, start = [], time.monotonic()
    for step in range(cfg.steps):
        if cfg.time_budget_s is not None and time.monotonic() - start > cfg.time_budget_s:
            break
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        chunk, order = order[: cfg.batch_size], order[cfg.batch_size:]
        if item_tokens:
            batch = _rows_batch(model, [examples[i] for i in chunk]).to(device)
        else:
            batch = model.encoder.encode([examples[i] for i in chunk], features).to(device)
        losses.append(train_step(model, optimizer, batch, lr=cfg.lr * _schedule(step, cfg), grad_clip=cfg.max_grad_norm))
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    window = max(1, min(10, len(losses) // 4))
    return {"steps": len(losses), "loss_first": float(np.mean(losses[:window])),
            "loss_last": float(np.mean(losses[-window:])), "seconds": round(time.monotonic() - start, 2)}


def _item_rows(model: VIP5Model, items: Sequence[str]) -> list[int]:
    """Item keys -> the model's rows, unknown keys left out (they have no token to train)."""
    return [r for r in (model.item_vocabulary.row(i) for i in items) if r is not None]


def _rows_batch(model: VIP5Model, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, L+1): [start, i_1, ..., i_L] per sequence, right-padded with 0 (see VIP5Model.sequence_loss)."""
    rows = torch.zeros((len(sequences), max(len(s) for s in sequences) + 1), dtype=torch.long)
    for b, items in enumerate(sequences):
        rows[b, :len(items) + 1] = torch.tensor([model.item_tokens.bos, *items])
    return rows
