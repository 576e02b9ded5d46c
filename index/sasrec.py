"""SASRec (Kang & McAuley, ICDM 2018), a standard implementation in torch.

RecBole's SASRec needs its own environment here (see the project notes), so this is our own
implementation of the paper's model: item embeddings (scaled by sqrt(D)) plus learned positions,
`n_blocks` pre-LayerNorm blocks of causal self-attention and a point-wise feed-forward net, a final
LayerNorm; the score of item j after position t is <h_t, E_j>. Training: binary cross-entropy with
one sampled negative per position (an item the user never touched), as in the paper ("bce"), or
softmax cross-entropy over all items at every position ("ce", the default: the eSASRec finding,
arXiv 2508.06450, that this alone lifts SASRec to the best from-scratch results on these splits).
With "ce" the item embeddings start small (N(0, 0.02)) and are not scaled by sqrt(D): scaled,
tied embeddings start the softmax far above chance and learn slowly. `label_smoothing` (Szegedy
et al., 2016) moves that share of each target's probability mass onto all items, a regulariser
against over-confident scores. `ema_decay` keeps an exponential moving average of the weights over
the training steps (`torch.optim.swa_utils.AveragedModel`); validation scores the average and it is
what training keeps. Together they lifted the retriever's HR@10 a little on Beauty and left its
recall@100 where it was (README, "Replaying a log").

Towers (`SASRecConfig.towers` K > 1): K independently initialised SASRecs, each hidden / K wide,
trained side by side on the same batches, each on its own loss; an item's vector is the towers'
vectors concatenated (hidden wide) and a user's state the towers' states concatenated and divided
by K, so the inner product is the mean of the towers' scores: an ensemble that is still one
retriever searched in one index, its scores on a single model's scale. Independent towers miss
fewer targets together than either alone; they must each be wide enough, though (see the README,
"Replaying a log").

Item side information (optional): given one vector per item (`content`, (I+1, C): image features
or the text encoder's vectors of title and category) and/or each item's attribute ids
(`attributes`: categories, brand), an item's vector is its ID embedding plus a learned projection
of its unit-length content vector plus the mean of its attributes' learned embeddings. Rare items
then borrow from similar ones: on Beauty this lifts the retriever's recall@100 more than a wider
ID-only model does. `item_table()` is the (I+1, D) table either way, so a trained model exports as
a plain SASRec (`index.retriever`).

In:  training sequences (items 1..I, oldest first); histories to score.
Out: `scores(histories)` -> (B, I+1) numpy array, column 0 = -inf (the `Scorer` interface).
Shapes: B batch, L max_len, D hidden, I items.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SASRecConfig:
    """hidden: D; n_blocks/n_heads: attention blocks and heads; max_len: L (older items dropped);
    dropout: on embeddings and inside blocks; loss: "ce" (softmax over all items) or "bce" (one
    negative per position); label_smoothing: with "ce", the share of each target spread over all
    items (0: plain cross-entropy); ema_decay: per-step decay of the weight average that is
    validated and kept (0: no average, the last step's weights); lr/batch_size/max_epochs: Adam training;
    time_budget_s: training stops after the epoch that crosses it; seed: init and sampling;
    validate_every/patience: with a validation function (`SASRecScorer(validate=...)`), score it
    every `validate_every` epochs, stop after `patience` scores without a new best and keep the
    best epoch's weights."""

    hidden: int = 64
    n_blocks: int = 2
    n_heads: int = 1
    max_len: int = 50
    dropout: float = 0.5
    loss: str = "ce"
    label_smoothing: float = 0.0
    ema_decay: float = 0.0
    lr: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 200
    time_budget_s: float = 300.0
    seed: int = 0
    validate_every: int = 1
    patience: int = 5
    towers: int = 1  # independent SASRecs, hidden / towers wide each, scores averaged (see the module doc)

    def __post_init__(self) -> None:
        for name in ("hidden", "n_blocks", "n_heads", "max_len", "batch_size", "max_epochs", "validate_every",
                     "patience", "towers"):
            if getattr(self, name) < 1:
                raise ValueError(f"SASRecConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % (self.towers * self.n_heads):
            raise ValueError(f"SASRecConfig.hidden ({self.hidden}) must be divisible by towers x n_heads "
                             f"({self.towers} x {self.n_heads})")
        if self.loss not in ("ce", "bce"):
            raise ValueError(f"SASRecConfig.loss must be 'ce' or 'bce', got {self.loss!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"SASRecConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.label_smoothing and self.loss != "ce":
            raise ValueError("SASRecConfig.label_smoothing needs loss='ce' (a softmax over all items)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"SASRecConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SASRecConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.time_budget_s <= 0:
            raise ValueError("SASRecConfig.lr and SASRecConfig.time_budget_s must be > 0")


class SASRecBlock(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.hidden, eps=1e-8)
        self.attn = nn.MultiheadAttention(config.hidden, config.n_heads, dropout=config.dropout, batch_first=True)
        self.ff_norm = nn.LayerNorm(config.hidden, eps=1e-8)
        self.ff = nn.Sequential(nn.Linear(config.hidden, config.hidden), nn.ReLU(), nn.Dropout(config.dropout),
                                nn.Linear(config.hidden, config.hidden), nn.Dropout(config.dropout))

    def forward(self, x: torch.Tensor, blocked: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x (B, L, D); blocked (B*heads, L, L) True where attention is not allowed; keep (B, L, 1)."""
        query = self.attn_norm(x)
        attended, _ = self.attn(query, x, x, attn_mask=blocked, need_weights=False)
        x = query + attended  # (B, L, D); residual on the normalised query, as in the reference code
        x = x + self.ff(self.ff_norm(x))
        return x * keep


class SASRec(nn.Module):
    def __init__(self, n_items: int, config: SASRecConfig, content: np.ndarray | None = None,
                 attributes: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        if config.towers != 1:
            raise ValueError(f"SASRec is one tower; build {config.towers} with sasrec_model()")
        self.config, self.n_items = config, n_items
        self.item_emb = nn.Embedding(n_items + 1, config.hidden, padding_idx=0)
        self.content_proj: nn.Linear | None = None
        if content is not None:
            if content.ndim != 2 or content.shape[0] != n_items + 1:
                raise ValueError(f"content: expected ({n_items + 1}, C) vectors (row 0 = padding), got {content.shape}")
            unit = content / np.maximum(np.linalg.norm(content, axis=1, keepdims=True), 1e-8)
            self.register_buffer("content", torch.from_numpy(unit.astype(np.float32)), persistent=False)
            self.content_proj = nn.Linear(content.shape[1], config.hidden, bias=False)
        self.attribute_emb: nn.EmbeddingBag | None = None
        if attributes is not None:
            if len(attributes) != n_items + 1:
                raise ValueError(f"attributes: expected {n_items + 1} lists (row 0 = padding), got {len(attributes)}")
            flat = [int(a) for row in attributes for a in row]
            if flat and min(flat) < 0:
                raise ValueError("attributes: ids must be >= 0")
            offsets = np.cumsum([0] + [len(row) for row in attributes[:-1]])
            self.register_buffer("attribute_ids", torch.tensor(flat, dtype=torch.long), persistent=False)
            self.register_buffer("attribute_offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
            self.attribute_emb = nn.EmbeddingBag(max(flat, default=0) + 1, config.hidden, mode="mean")
        self.pos_emb = nn.Embedding(config.max_len, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(config) for _ in range(config.n_blocks))
        self.final_norm = nn.LayerNorm(config.hidden, eps=1e-8)
        for name, param in self.named_parameters():
            if param.dim() > 1 and "norm" not in name:
                nn.init.xavier_normal_(param)  # as the reference implementation
        if config.loss == "ce":
            nn.init.normal_(self.item_emb.weight, std=0.02)
            for extra in (self.content_proj, self.attribute_emb):
                if extra is not None:
                    nn.init.normal_(extra.weight, std=0.02)
        self.embedding_scale = math.sqrt(config.hidden) if config.loss == "bce" else 1.0
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def attention_mask(self, present: torch.Tensor) -> torch.Tensor:
        """present (B, L) False at padding -> (B*heads, L, L), True = blocked: future positions and
        padding keys; the diagonal stays open so a padding query has something to attend to (its
        output is zeroed anyway)."""
        length = present.shape[1]
        future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=present.device), diagonal=1)
        blocked = future[None] | ~present[:, None, :]  # (B, L, L)
        blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=present.device)[None]
        return blocked.repeat_interleave(self.config.n_heads, dim=0)

    def item_table(self) -> torch.Tensor:
        """(I+1, D) every item's vector (row 0, padding, is zero): the ID embedding, plus the
        projected content vector and the mean attribute embedding when the model has them (an
        item without attributes adds zeros)."""
        if self.content_proj is None and self.attribute_emb is None:
            return self.item_emb.weight
        table = self.item_emb.weight
        if self.content_proj is not None:
            table = table + self.content_proj(self.content)
        if self.attribute_emb is not None:
            table = table + self.attribute_emb(self.attribute_ids, self.attribute_offsets)
        return torch.cat([torch.zeros_like(table[:1]), table[1:]])

    def forward(self, seqs: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """seqs (B, T) item ids, left-padded with 0, T <= L -> hidden states (B, T, D); `table` is
        `item_table()`, passed in when the caller also scores against it.

        Positions count back from the last column, so trimming all-padding columns on the left
        gives exactly the same outputs."""
        table = self.item_table() if table is None else table
        return self.encode(nn.functional.embedding(seqs, table), seqs > 0)

    def encode(self, items: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """items (B, T, D) item vectors, present (B, T) False at padding -> hidden states (B, T, D).
        The item table is only read by the caller, so a replica holding the vectors elsewhere (the
        streams worker's retriever, `index.retriever`) runs the same network without it."""
        length = items.shape[1]
        positions = torch.arange(self.config.max_len - length, self.config.max_len, device=items.device)
        x = items * self.embedding_scale + self.pos_emb(positions)[None]
        keep = present.unsqueeze(-1).float()  # (B, T, 1)
        x = self.dropout(x) * keep
        blocked = self.attention_mask(present)
        for block in self.blocks:
            x = block(x, blocked, keep)
        return self.final_norm(x)

    def bce_loss(self, seqs: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """seqs, pos, neg (B, L); positions where pos == 0 are padding and ignored."""
        table = self.item_table()
        hidden = self.forward(seqs, table)
        pos_logits = (hidden * table[pos]).sum(-1)  # (B, L)
        neg_logits = (hidden * table[neg]).sum(-1)
        mask = pos > 0
        bce = nn.functional.binary_cross_entropy_with_logits
        loss = bce(pos_logits[mask], torch.ones_like(pos_logits[mask]), reduction="sum")
        loss = loss + bce(neg_logits[mask], torch.zeros_like(neg_logits[mask]), reduction="sum")
        return loss / mask.sum().clamp(min=1)


    def ce_loss(self, seqs: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """seqs, pos (B, L): softmax cross-entropy over all items at every non-padding position
        (with `config.label_smoothing`)."""
        table = self.item_table()
        hidden = self.forward(seqs, table)[pos > 0]  # (N, D)
        logits = hidden @ table[1:].T  # (N, I): column j is item j+1
        return nn.functional.cross_entropy(logits, pos[pos > 0] - 1, label_smoothing=self.config.label_smoothing)

    def plain_state(self) -> dict[str, torch.Tensor]:
        """The weights of a plain SASRec: content and attribute embeddings folded into the item table."""
        state = {name: t.detach().contiguous() for name, t in self.state_dict().items()
                 if not name.startswith(("content_proj.", "attribute_emb."))}
        state["item_emb.weight"] = self.item_table().detach().contiguous()
        return state

    def final_scale(self) -> torch.Tensor:
        """(D,) the final LayerNorm's weights: the scale of the hidden states that score items."""
        return self.final_norm.weight

    @property
    def side_information(self) -> dict:
        return {"content_dim": None if self.content_proj is None else self.content_proj.in_features,
                "attributes": None if self.attribute_emb is None else self.attribute_emb.num_embeddings}


class SASRecTowers(nn.Module):
    """`config.towers` SASRecs side by side, each `config.hidden / towers` wide and initialised on its
    own (see the module doc). The same interface as one SASRec: item vectors are the towers'
    concatenated and hidden states the towers' concatenated / K, so inner products are the mean of
    the towers' scores; each tower learns from its own loss (`ce_loss` / `bce_loss` return their mean)."""

    def __init__(self, n_items: int, config: SASRecConfig, content: np.ndarray | None = None,
                 attributes: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        self.config, self.n_items = config, n_items
        one = replace(config, hidden=config.hidden // config.towers, towers=1)
        self.towers = nn.ModuleList(SASRec(n_items, one, content, attributes) for _ in range(config.towers))

    def item_table(self) -> torch.Tensor:
        return torch.cat([tower.item_table() for tower in self.towers], dim=1)  # (I+1, D)

    forward = SASRec.forward  # the same lookup of the (concatenated) item vectors, then `encode`

    def encode(self, items: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """items (B, T, D): each tower reads its own slice of the vectors -> (B, T, D), divided by K
        so that an inner product with an item vector is the towers' mean score."""
        slices = items.split(self.config.hidden // self.config.towers, dim=-1)
        states = [tower.encode(part, present) for tower, part in zip(self.towers, slices, strict=True)]
        return torch.cat(states, dim=-1) / len(self.towers)

    def ce_loss(self, seqs: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return torch.stack([tower.ce_loss(seqs, pos) for tower in self.towers]).mean()

    def bce_loss(self, seqs: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return torch.stack([tower.bce_loss(seqs, pos, neg) for tower in self.towers]).mean()

    def plain_state(self) -> dict[str, torch.Tensor]:
        return {f"towers.{k}.{name}": t for k, tower in enumerate(self.towers) for name, t in tower.plain_state().items()}

    def final_scale(self) -> torch.Tensor:
        return torch.cat([tower.final_scale() for tower in self.towers]) / len(self.towers)

    @property
    def side_information(self) -> dict:
        return self.towers[0].side_information


def sasrec_model(n_items: int, config: SASRecConfig, content: np.ndarray | None = None,
                 attributes: Sequence[Sequence[int]] | None = None) -> SASRec | SASRecTowers:
    """The network `config` describes: one SASRec, or `config.towers` of them side by side."""
    if config.towers == 1:
        return SASRec(n_items, config, content, attributes)
    return SASRecTowers(n_items, config, content, attributes)


def left_pad(items: Sequence[int], length: int) -> list[int]:
    items = list(items)[-length:]
    return [0] * (length - len(items)) + items


def training_arrays(train: Sequence[Sequence[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs items[:-1] and positives items[1:], left-padded to (N, L); users with < 2 items dropped."""
    usable = [items for items in train if len(items) >= 2]
    seqs = np.array([left_pad(items[:-1], max_len) for items in usable], dtype=np.int64).reshape(-1, max_len)
    pos = np.array([left_pad(items[1:], max_len) for items in usable], dtype=np.int64).reshape(-1, max_len)
    return seqs, pos


def trim_padding(*arrays: np.ndarray) -> list[np.ndarray]:
    """Drop the left columns that are padding in every row of the first array."""
    filled = np.nonzero((arrays[0] > 0).any(axis=0))[0]
    start = int(filled[0]) if len(filled) else arrays[0].shape[1] - 1
    return [a[:, start:] for a in arrays]


def length_batches(seqs: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices grouped by similar length (less padding per batch), batches in random order."""
    lengths = (seqs > 0).sum(axis=1) + rng.random(len(seqs))  # random tie-break inside a length
    order = np.argsort(lengths)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def sample_training_negatives(pos: np.ndarray, touched: list[set[int]], n_items: int,
                              rng: np.random.Generator) -> np.ndarray:
    """One random item per non-padding position, never one the user touched."""
    neg = rng.integers(1, n_items + 1, size=pos.shape)
    for row, seen in enumerate(touched):
        for col in np.nonzero(pos[row])[0]:
            while int(neg[row, col]) in seen:
                neg[row, col] = rng.integers(1, n_items + 1)
    return neg * (pos > 0)


class SASRecScorer:
    """Fits SASRec on training sequences within the config's epoch and time budget. `validate`
    (scorer -> a number, higher is better, e.g. recall on held-out users) picks the best epoch
    and stops training once it no longer improves (`SASRecConfig.patience`)."""

    name = "sasrec"

    def __init__(self, train: Sequence[Sequence[int]], n_items: int, config: SASRecConfig | None = None, *,
                 content: np.ndarray | None = None, attributes: Sequence[Sequence[int]] | None = None,
                 validate: Callable[[SASRecScorer], float] | None = None) -> None:
        self.config = config or SASRecConfig()
        self.n_items = n_items
        torch.manual_seed(self.config.seed)
        self.model = sasrec_model(n_items, self.config, content, attributes)
        self.validation: list[tuple[int, float]] = []  # (epoch, score) of each validation
        self.best_epoch: int | None = None
        self.epochs_run, self.train_s, self.last_loss = self._fit(train, validate)

    def _fit(self, train: Sequence[Sequence[int]], validate) -> tuple[int, float, float]:
        config = self.config
        rng = np.random.default_rng(config.seed)
        seqs, pos = training_arrays(train, config.max_len)
        touched = [set(items) for items in train if len(items) >= 2]
        optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(0.9, 0.98))
        averaged = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
                    if config.ema_decay else None)
        start, epoch, loss_value = time.monotonic(), 0, float("nan")
        self.model.train()
        while epoch < config.max_epochs and time.monotonic() - start < config.time_budget_s and len(seqs):
            neg = sample_training_negatives(pos, touched, self.n_items, rng) if config.loss == "bce" else None
            losses = []
            for batch in length_batches(seqs, config.batch_size, rng):
                if neg is None:
                    loss = self.model.ce_loss(*(torch.from_numpy(a) for a in trim_padding(seqs[batch], pos[batch])))
                else:
                    arrays = trim_padding(seqs[batch], pos[batch], neg[batch])
                    loss = self.model.bce_loss(*(torch.from_numpy(a) for a in arrays))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if averaged is not None:
                    averaged.update_parameters(self.model)
                losses.append(loss.item())
            epoch, loss_value = epoch + 1, float(np.mean(losses))
            log.debug("sasrec epoch %d loss %.4f", epoch, loss_value)
            if validate is not None and epoch % config.validate_every == 0:
                with self._weights_of(averaged):
                    if self._validated(validate, epoch):
                        break
        if self.best_epoch is not None:
            self.model.load_state_dict(self._best_state)
            del self._best_state
        elif averaged is not None:
            vector_to_parameters(parameters_to_vector(averaged.module.parameters()), self.model.parameters())
        self.model.eval()
        elapsed = time.monotonic() - start
        log.info("sasrec: %d epochs in %.0f s, last loss %.4f", epoch, elapsed, loss_value)
        return epoch, elapsed, loss_value

    @contextmanager
    def _weights_of(self, averaged: AveragedModel | None) -> Iterator[None]:
        """Inside: the model holds the averaged weights (when there is an average); after: its own again."""
        if averaged is None:
            yield
            return
        own = parameters_to_vector(self.model.parameters()).detach().clone()
        vector_to_parameters(parameters_to_vector(averaged.module.parameters()).detach(), self.model.parameters())
        try:
            yield
        finally:
            vector_to_parameters(own, self.model.parameters())

    def _validated(self, validate, epoch: int) -> bool:
        """Score the current weights, keep them if they are the best so far; True: stop (no new
        best in the last `patience` scores)."""
        self.model.eval()
        score = float(validate(self))
        self.model.train()
        log.info("sasrec epoch %d validation %.4f", epoch, score)
        if self.best_epoch is None or score > max(s for _, s in self.validation):
            self.best_epoch = epoch
            self._best_state = {name: t.detach().clone() for name, t in self.model.state_dict().items()}
        self.validation.append((epoch, score))
        return sum(1 for e, _ in self.validation if e > self.best_epoch) >= self.config.patience

    @torch.no_grad()
    def scores(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        padded = np.array([left_pad(h, self.config.max_len) for h in histories], dtype=np.int64)
        table = self.model.item_table()
        hidden = self.model(torch.from_numpy(trim_padding(padded)[0]), table)[:, -1]  # (B, D): the state after the last history item
        out = (hidden @ table.T).numpy().astype(np.float64)  # (B, I+1)
        out[:, 0] = -np.inf
        return out

    def info(self) -> dict:
        losses = {"ce": "softmax cross-entropy over all items", "bce": "BCE with one negative"}
        return {"implementation": f"own torch SASRec (Kang & McAuley 2018), {losses[self.config.loss]} at every position",
                "epochs": self.epochs_run, "train_s": round(self.train_s, 1), "last_loss": self.last_loss,
                "best_epoch": self.best_epoch, "validation": [[e, round(s, 4)] for e, s in self.validation],
                **self.model.side_information,
                **{k: getattr(self.config, k) for k in ("hidden", "n_blocks", "n_heads", "max_len", "dropout", "towers",
                                                      "label_smoothing", "ema_decay")}}
