"""Item tokens: one learned token per catalogue item, completed by the item's content feature.

In:  item rows (long, 1..I; 0 = padding; I+1 = start of sequence) and, per row, a content feature
     (F,) with a mask saying which rows have one (an image vector, or a text vector where the item
     has no image: the slot is per item, whatever encoder made it).
Out: the item table (I+2, D): row i = id_embedding[i] + g * mean_k mapping(feature_i) (g a learned gate) where item i has a
     feature, id_embedding[i] otherwise. The table is both the decoder's input embedding of an item
     and its output embedding (tied), so a next-item score is <decoder state, row>.

Letters: I items, D d_model, F feature size, k image tokens per item (the mapping emits k x D).

New items: `ItemVocabulary.add` gives an item that arrived after training a row with no trained id.
Its id part is borrowed from the trained items nearest to it by content (the mean of their ids,
weighted by a softmax of cosine similarity / temperature; `neighbour_ids`), and its content part
comes through the mapping network as for any item: a new product is scored (and retrieved) before
anyone has clicked it. With no neighbours its token is the content part alone, which next to
trained ids is too small to reach a top 10. The content part trains through the id + content sum;
`VIP5Config.content_loss_weight` > 0 adds a loss in which every item is its content part alone, so
the content part names items by itself (off by default: it cost next-item accuracy).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ItemVocabulary:
    """Item key (the string id on the wire) <-> row (1..I). Rows are stable: new keys append."""

    def __init__(self, keys: Iterable[str] = ()):
        self.keys: list[str] = []
        self.rows: dict[str, int] = {}
        self.add(keys)

    def add(self, keys: Iterable[str]) -> list[int]:
        out = []
        for key in keys:
            key = str(key)
            if key not in self.rows:
                self.keys.append(key)
                self.rows[key] = len(self.keys)
            out.append(self.rows[key])
        return out

    def __len__(self) -> int:
        return len(self.keys)

    def row(self, key: str) -> int | None:
        return self.rows.get(str(key))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.keys))

    @classmethod
    def load(cls, path: Path) -> ItemVocabulary:
        keys = json.loads(Path(path).read_text())
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"{path}: expected a JSON list of item keys")
        return cls(keys)


class ItemTokens(nn.Module):
    """The item part of the vocabulary: id embeddings (I+2, D) and content features (I+1, F)."""

    def __init__(self, n_items: int, d_model: int, feature_dim: int):
        super().__init__()
        self.n_items = n_items
        self.id_embedding = nn.Embedding(n_items + 2, d_model)  # row I+1: start of sequence
        nn.init.normal_(self.id_embedding.weight, std=0.02)
        # The mapping ends in a layer norm (unit RMS, as image tokens in a prompt need); a learned
        # gate starts content at the id embeddings' scale, so the first softmax is near uniform.
        self.content_scale = nn.Parameter(torch.tensor(0.02))
        self.register_buffer("features", torch.zeros(n_items + 1, feature_dim))  # (I+1, F)
        self.register_buffer("has_feature", torch.zeros(n_items + 1, dtype=torch.bool))  # (I+1,)
        self.register_buffer("has_id", torch.ones(n_items + 2, dtype=torch.bool))  # False: added after training

    @property
    def bos(self) -> int:
        return self.n_items + 1

    def set_features(self, rows: Sequence[int], features: np.ndarray | torch.Tensor) -> None:
        """Content features of `rows` (N, F), e.g. from the item-embeddings topic."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.features.device)
        if len(index) == 0:
            return
        if int(index.min()) < 1 or int(index.max()) > self.n_items:
            raise ValueError(f"item rows must be in 1..{self.n_items}")
        values = torch.as_tensor(np.asarray(features), dtype=self.features.dtype, device=self.features.device)
        if values.shape != (len(index), self.features.shape[1]):
            raise ValueError(f"features must be ({len(index)}, {self.features.shape[1]}), got {tuple(values.shape)}")
        self.features[index] = values
        self.has_feature[index] = True

    def grow(self, n_items: int) -> None:
        """Room for items that arrived after training: their id part is zero (content only)."""
        extra = n_items - self.n_items
        if extra <= 0:
            return
        weight = self.id_embedding.weight.data
        d_model, device = weight.shape[1], weight.device
        new_rows = torch.zeros(extra, d_model, device=device, dtype=weight.dtype)
        # keep BOS as the last row
        table = torch.cat([weight[:-1], new_rows, weight[-1:]])
        self.id_embedding = nn.Embedding.from_pretrained(table, freeze=not weight.requires_grad)
        self.features = torch.cat([self.features, self.features.new_zeros(extra, self.features.shape[1])])
        self.has_feature = torch.cat([self.has_feature, self.has_feature.new_zeros(extra)])
        has_id = self.has_id
        self.has_id = torch.cat([has_id[:-1], has_id.new_zeros(extra), has_id[-1:]])
        self.n_items = n_items

    def neighbour_keys(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows (T,), unit features (T, F)) of the trained items with content: what a new item's
        content is compared with."""
        trained = (self.has_id[:-1] & self.has_feature).nonzero().squeeze(1)
        return trained, F.normalize(self.features[trained], dim=1)

    def neighbour_ids(self, features: torch.Tensor, k: int, temperature: float,
                      keys: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """features (N, F) -> (N, D): for each, the mean id embedding of its k nearest trained items
        with content (cosine similarity), weighted by softmax(similarity / temperature); zeros when
        k is 0 or no trained item has content. `keys`: `neighbour_keys()`, when the caller keeps them."""
        out = features.new_zeros(len(features), self.id_embedding.weight.shape[1])
        if k == 0 or len(features) == 0:
            return out
        trained, unit = self.neighbour_keys() if keys is None else keys
        if len(trained) == 0:
            return out
        sims = F.normalize(features, dim=1) @ unit.T  # (N, T)
        top, index = sims.topk(min(k, len(trained)), dim=1)  # (N, k)
        weights = torch.softmax(top / temperature, dim=1)
        return (weights[..., None] * self.id_embedding.weight[trained[index]]).sum(dim=1)

    def parts(self, mapping: nn.Module, *, id_dropout: float = 0.0, generator: torch.Generator | None = None,
              neighbours: int = 0, temperature: float = 0.05) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ids, content), each (I+2, D): the id part (for items added after training, borrowed from
        their `neighbours` nearest trained items by content, or zero; zero for a random `id_dropout`
        share of items that have content) and the mapped content feature (zero where an item has
        none; None when no item has one)."""
        ids = self.id_embedding.weight  # (I+2, D)
        keep = self.has_id
        if id_dropout > 0:
            drop = torch.rand(ids.shape[0], generator=generator, device=ids.device) < id_dropout
            drop[-1] = False  # never the start token
            keep = keep & (~drop | ~torch.cat([self.has_feature, self.has_feature.new_zeros(1)]))
        ids = ids * keep[:, None].to(ids.dtype)
        if neighbours:
            new = (~self.has_id[:-1] & self.has_feature).nonzero().squeeze(1)  # arrived after training, with content
            if len(new):
                ids = ids.index_put((new,), self.neighbour_ids(self.features[new], neighbours, temperature))
        if not bool(self.has_feature.any()):
            return ids, None
        content = mapping(self.features).mean(dim=-2) * self.content_scale  # (I+1, k, D) -> (I+1, D)
        content = content * self.has_feature[:, None].to(content.dtype)
        return ids, torch.cat([content, content.new_zeros(1, content.shape[1])])

    def table(self, mapping: nn.Module, **kwargs) -> torch.Tensor:
        """(I+2, D): every item's token, id part plus content part."""
        ids, content = self.parts(mapping, **kwargs)
        return ids if content is None else ids + content
