"""Candidate scoring, the model side of re-ranking: VIP5 scores each candidate under the direct prompt.

In: `ScoringRequest`s (user id, history item ids, candidate item ids, optional retrieval scores: the
model's view of a wire `schemas.records.RerankRequest`, built by ranker.py or the trainer; the
retrieval score is the learned retriever's affinity, `Candidate.affinity`) and an image-feature
lookup (item id -> (F,) vector; missing items use the "no image" tokens).
Out: per request, one score per candidate in the request's order:
  score = log p(candidate id tokens | direct prompt) + retrieval_weight * retrieval score.
Both terms are log-probabilities up to a constant per request (the retriever is trained with a
softmax over all items), so the sum is a product of the two models' next-item distributions.

Cost: one encoder pass per request (requests batched), then one decoder pass over each request's
candidate trie (see vip5/scoring.py). `score_naive` and `beam` are the slower reference forms the
benchmark compares against. One `Reranker` serves a model for its lifetime; the features may be
given per call. Adapters are switched between calls (vip5model.slots).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model_worker.vip5model.encoding import ImageLookup
from model_worker.vip5model.prompts import TEMPLATES, direct_prompt
from model_worker.vip5model.scoring import constrained_beam, score_candidates, score_naive
from model_worker.vip5model.trie import ItemTrie


@dataclass(frozen=True)
class ScoringRequest:
    user_id: str
    history: tuple[str, ...]
    candidates: tuple[str, ...]
    retrieval_scores: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError("ScoringRequest.candidates must not be empty")
        if self.retrieval_scores is not None and len(self.retrieval_scores) != len(self.candidates):
            raise ValueError("ScoringRequest.retrieval_scores must have one score per candidate")


@dataclass(frozen=True)
class RerankConfig:
    template_id: str = "B-7"
    """direct-recommendation list template (B-7 and B-9 also show the history)"""
    history_len: int = 20
    """most recent history items written into the prompt"""
    retrieval_weight: float = 2.0
    """weight of the retrieval score (the learned retriever's affinity) added to the log-likelihood;
    0: the model alone; requests without affinities are scored by the model alone. On Beauty's
    validation users (`vip5 evaluate --retriever`, `rerank.with_retriever`) NDCG@10 rises from 0.071
    at 0 to 0.083 at 2 and 4 and falls at 8; the smaller keeps more of the model's view"""
    max_batch_requests: int = 16
    """requests encoded and decoded together"""
    catalogue_k: int = 0
    """item-token models also retrieve: their best `catalogue_k` items over the whole catalogue
    (history and candidates excluded) join each request's candidates. 0 (re-rank only) by default:
    with the default recipe's 50-minute model, the model's own full-catalogue ranking (Beauty HR@10
    0.064) is below its re-ranking of co-visitation candidates (0.078)"""

    def __post_init__(self) -> None:
        template = TEMPLATES.get(self.template_id)
        if template is None or template.family != "direct" or template.target != "item":
            raise ValueError(f"RerankConfig.template_id {self.template_id!r} is not a direct list template")
        if self.history_len < 0:
            raise ValueError("RerankConfig.history_len must be >= 0")
        if self.max_batch_requests < 1:
            raise ValueError("RerankConfig.max_batch_requests must be >= 1")
        if self.catalogue_k < 0:
            raise ValueError("RerankConfig.catalogue_k must be >= 0")
        if not (self.retrieval_weight >= 0 and math.isfinite(self.retrieval_weight)):
            raise ValueError(f"RerankConfig.retrieval_weight must be >= 0 and finite, got {self.retrieval_weight}")


class Reranker:
    def __init__(self, model, image_lookup: ImageLookup | None = None, config: RerankConfig = RerankConfig()):
        self.model, self.image_lookup, self.config = model, image_lookup, config

    def encode_requests(self, requests: Sequence[ScoringRequest], features: ImageLookup | None = None):
        """Yield (requests, EncodedBatch) in groups of `max_batch_requests`, each as a direct prompt;
        `features` (default: the lookup given at construction) supplies the image features."""
        lookup = self.image_lookup if features is None else features
        size = self.config.max_batch_requests
        for lo in range(0, len(requests), size):
            chunk = requests[lo: lo + size]
            prompts = [
                direct_prompt(self.config.template_id, r.user_id, r.candidates,
                              history=list(r.history)[-self.config.history_len:] if self.config.history_len else [])
                for r in chunk
            ]
            yield chunk, self.model.encoder.encode(prompts, lookup, with_labels=False)

    def score(self, requests: Sequence[ScoringRequest], features: ImageLookup | None = None) -> list[list[float]]:
        """Exact scores, one list per request, aligned with its candidates."""
        if getattr(self.model, "item_tokens", None) is not None:
            return self.score_item_tokens(requests, features)
        results = []
        for chunk, batch in self.encode_requests(requests, features):
            tries = [ItemTrie.from_items(self.model.encoder, r.candidates) for r in chunk]
            for request, llh in zip(chunk, score_candidates(self.model, batch, tries), strict=True):
                results.append(self._combine(request, llh))
        return results

    def score_item_tokens(self, requests: Sequence[ScoringRequest], features: ImageLookup | None = None
                          ) -> list[list[float]]:
        """Item-token scores: one decoder pass per batch of histories, a dot product per candidate."""
        lookup = self.image_lookup if features is None else features
        results = []
        for chunk, states, table in self._history_states(requests):
            for request, state in zip(chunk, states, strict=True):
                results.append(self._combine(request, state @ self._candidate_tokens(request, table, lookup).T))
        return results

    def with_catalogue_candidates(self, requests: Sequence[ScoringRequest]) -> list[ScoringRequest]:
        """Item-token models: each request's candidates plus the model's best `catalogue_k` other
        items over the whole catalogue (not in the history), so recall is not capped by the
        request's candidate sources. Other models: the requests unchanged."""
        k = self.config.catalogue_k
        if k == 0 or getattr(self.model, "item_tokens", None) is None:
            return list(requests)
        vocab, out = self.model.item_vocabulary, []
        for chunk, states, table in self._history_states(requests):
            scores = states @ table[1:self.model.item_tokens.n_items + 1].T  # (B, I): column j = row j+1
            for request, row_scores in zip(chunk, scores, strict=True):
                taken = {vocab.row(i) for i in (*request.history, *request.candidates)} - {None}
                if taken:
                    row_scores[[r - 1 for r in taken]] = float("-inf")
                best = torch.topk(row_scores, min(k, len(row_scores))).indices.tolist()
                extra = tuple(vocab.keys[j] for j in best if j + 1 not in taken)
                retrieval = None if request.retrieval_scores is None else (
                    *request.retrieval_scores, *([min(request.retrieval_scores, default=0.0)] * len(extra)))
                out.append(ScoringRequest(user_id=request.user_id, history=request.history,
                                          candidates=request.candidates + extra, retrieval_scores=retrieval))
        return out

    @torch.no_grad()
    def _history_states(self, requests: Sequence[ScoringRequest]):
        """Yield (requests, (B, D) decoder states after their histories, item table), per batch."""
        model, vocab = self.model, self.model.item_vocabulary
        max_items = max(1, self.config.history_len)
        table = model.item_table()  # (I+2, D)
        for lo in range(0, len(requests), self.config.max_batch_requests):
            chunk = requests[lo: lo + self.config.max_batch_requests]
            rows = [[r for r in (vocab.row(i) for i in req.history) if r is not None][-max_items:] for req in chunk]
            padded = torch.zeros((len(chunk), max(1, max(len(r) for r in rows))), dtype=torch.long)
            for b, items in enumerate(rows):
                padded[b, :len(items)] = torch.tensor(items, dtype=torch.long)
            lengths = torch.tensor([len(r) for r in rows])
            yield chunk, model.history_states(padded.to(model.device), lengths.to(model.device), table), table

    def _candidate_tokens(self, request: ScoringRequest, table: torch.Tensor, lookup: ImageLookup | None
                          ) -> torch.Tensor:
        """(C, D): the model's token per candidate; built from the content feature for unseen items
        (`VIP5Model.new_item_tokens`), NaN rows (scored -inf) for unseen items without a usable feature."""
        vocab, dim = self.model.item_vocabulary, self.model.config.image_feature_dim
        tokens = torch.full((len(request.candidates), table.shape[1]), float("nan"), device=table.device)
        rows = [vocab.row(item) for item in request.candidates]
        known = [c for c, row in enumerate(rows) if row is not None]
        if known:  # one gather for every candidate the vocabulary knows
            tokens[known] = table[torch.tensor([rows[c] for c in known], device=table.device)]
        unseen, found = [], []
        for c in (c for c, row in enumerate(rows) if row is None):
            feature = lookup.get(request.candidates[c]) if lookup is not None else None
            if feature is not None and len(feature) == dim:
                unseen.append(c)
                found.append(torch.as_tensor(feature, dtype=torch.float32))
        if unseen:
            tokens[unseen] = self.model.new_item_tokens(torch.stack(found).to(table.device))
        return tokens

    def score_naive(self, requests: Sequence[ScoringRequest], features: ImageLookup | None = None) -> list[list[float]]:
        """Same scores as `score`, computed with the encoder output repeated per candidate."""
        results = []
        for chunk, batch in self.encode_requests(requests, features):
            tokens = [self.model.encoder.target_token_ids(r.candidates) for r in chunk]
            for request, llh in zip(chunk, score_naive(self.model, batch, tokens), strict=True):
                results.append(self._combine(request, llh))
        return results

    def beam(self, requests: Sequence[ScoringRequest], *, num_beams: int = 20) -> list[list[str]]:
        """Top candidates by beam search constrained to each request's candidate ids."""
        results = []
        for chunk, batch in self.encode_requests(requests):
            tries = [ItemTrie.from_items(self.model.encoder, r.candidates) for r in chunk]
            ranked = constrained_beam(self.model, batch, tries, num_beams=num_beams)
            results.extend([[item for item, _ in r] for r in ranked])
        return results

    def _combine(self, request: ScoringRequest, llh: torch.Tensor) -> list[float]:
        scores = torch.nan_to_num(llh.double().cpu(), nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        if request.retrieval_scores is not None and self.config.retrieval_weight:
            scores = scores + self.config.retrieval_weight * torch.tensor(request.retrieval_scores, dtype=torch.float64)
        return scores.tolist()


def rank(candidates: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Candidates best first (ties keep the candidates' order)."""
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])
    return [candidates[i] for i in order]
