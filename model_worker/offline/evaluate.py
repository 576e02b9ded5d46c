"""Offline evaluation of a trained VIP5 next to popularity, Markov and SASRec on the same split.

In:  a model directory written by `train.py` (its `train_config.json` fixes the data and the item
     numbering) or explicit configs, and an `EvalConfig`.
Out: one dict (`vip5 evaluate --json`):
  sequential   next item over the whole catalogue: HR@1/5/10, NDCG@5/10 under the seen template
               (A-3), and under `held_out` the unseen one (A-9). Exact log-likelihood of every item
               id (one decoder pass over the catalogue trie per prompt) or constrained beam search.
  direct       1 true item + 99 untouched negatives (seeded per user), listed in the prompt in a
               seeded random order; each candidate scored by its exact log-likelihood; B-5 / B-8.
  explanation  greedy generation for test-split explanations; BLEU-4, ROUGE-1/2/L (percent); C-3 / C-12.
  baselines    popularity, markov, sasrec, next_id: the same sequential and direct metrics on the
               same users and candidate lists (SASRec trained here on the same training split;
               next_id = largest history id + 1, a probe of how much the numbering leaks).
  cold_start   (item-token runs with cold items) the users whose target was held out of training:
               with_content, content_part_only, without_content; cold items are served as items
               that arrived after training in every metric of such a run.
  stages, numbering, n_users, model (size), data, protocol, timing_s.
Ranks break score ties uniformly at random (seeded). With `exclude_history` (default) items already
in the history are ranked last for every method alike (no test target of the 5-core data repeats a
history item).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from index.sasrec import SASRecConfig, SASRecScorer

from .baselines import Markov, NextId, Popularity
from .candidates import CoVisitCandidates, RetrieverCandidates
from .data import (
    SPLIT_FIELDS,
    DataConfig,
    Example,
    RecData,
    cold_items,
    direct_candidates,
    load_data,
    training_split,
)
from .metrics import rank_in_list, rank_metrics, rank_of_target, text_metrics
from .runs import run_dirs
from .tasks import explanation_from, image_lookup, shuffled

log = logging.getLogger(__name__)

SEEN = {"sequential": "A-3", "direct": "B-5", "explanation": "C-3"}
HELD_OUT = {"sequential": "A-9", "direct": "B-8", "explanation": "C-12"}
BASELINES = ("popularity", "markov", "sasrec", "next_id")
METHODS = ("exact", "topk", "beam")
TOP_K = 10  # the largest cut-off reported


@dataclass(frozen=True)
class EvalConfig:
    """split: "test" or "valid"; max_users: seeded sample of users (None: all); held_out_max_users:
    the held-out templates use only the first this many of that sample (None: all of it); method: "exact"
    likelihood of every catalogue item, "topk" (the exact 10 most likely items by best-first trie
    search: the same HR/NDCG@<=10, cheaper when the model is confident) or constrained "beam"
    search (num_beams results); history_len: items in a
    prompt; batch_size: prompts per forward pass; exclude_history: rank history items last;
    negatives_seed/direct_negatives: the direct task's untouched negatives (99 as the paper); baselines: which to run; max_explanations: seeded
    sample of explanation pairs; explanation_tokens: generation length (decoding: model.EXPLANATION_DECODING); catalogue_chunk: items per
    trie in exact catalogue scoring (tree attention costs grow with its square; 128 was fastest
    here); threads: torch threads."""

    split: str = "test"
    max_users: int | None = 1000
    held_out_max_users: int | None = None
    sample_seed: int = 0
    method: str = "exact"
    num_beams: int = 20
    history_len: int = 20
    batch_size: int = 16
    exclude_history: bool = True
    negatives_seed: int = 2023
    direct_negatives: int = 99
    baselines: tuple[str, ...] = BASELINES
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    max_explanations: int | None = 500
    explanation_tokens: int = 32
    catalogue_chunk: int = 128
    threads: int = 2
    rerank_candidates: int = 100
    retriever: str | None = None  # a `vip5 retriever train` folder: its items join the re-rank candidates

    def __post_init__(self) -> None:
        object.__setattr__(self, "baselines", tuple(self.baselines))
        if self.split not in ("test", "valid"):
            raise ValueError(f"EvalConfig.split must be 'test' or 'valid', got {self.split!r}")
        if self.method not in METHODS:
            raise ValueError(f"EvalConfig.method must be one of {METHODS}, got {self.method!r}")
        if unknown := set(self.baselines) - set(BASELINES):
            raise ValueError(f"EvalConfig.baselines has unknown names {sorted(unknown)}")
        for name in ("num_beams", "history_len", "batch_size", "direct_negatives", "explanation_tokens",
                     "catalogue_chunk", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.held_out_max_users is not None and self.held_out_max_users < 1:
            raise ValueError(f"EvalConfig.held_out_max_users must be >= 1 or None, got {self.held_out_max_users}")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"EvalConfig.max_users must be >= 1 or None, got {self.max_users}")


@dataclass(frozen=True)
class EvalContext:
    """What every evaluator needs: the data, the sampled examples and their candidate lists."""

    data: RecData
    examples: tuple[Example, ...]
    candidates: tuple[tuple[int, ...], ...]  # per example: target first, then 99 negatives
    train: tuple[tuple[int, ...], ...]
    config: EvalConfig
    rerank: tuple[tuple[int, ...], ...] = ()  # per example: the generator's top candidates, best first
    rerank_scores: tuple[tuple[float, ...], ...] = ()  # their generator scores (co-visitation weight)
    rerank_affinity: tuple[tuple[float, ...], ...] = ()  # with a retriever: its affinity of each candidate


def make_context(data: RecData, config: EvalConfig, trained: dict | None = None) -> EvalContext:
    """`trained`: the run's training config (`train_config.json` "train"); the baselines and the
    candidate generator are fitted on the sequences the run trained on, and the validation split
    holds only the users whose validation item the run did not train on."""
    split = training_split(data, **{k: v for k, v in (trained or {}).items() if k in SPLIT_FIELDS})
    examples = split.test if config.split == "test" else split.valid
    if config.max_users is not None and config.max_users < len(examples):
        chosen = np.sort(np.random.default_rng(config.sample_seed).choice(len(examples), config.max_users,
                                                                           replace=False))
        examples = tuple(examples[i] for i in chosen)
    candidates = tuple(direct_candidates(e, data.sequences[e.user - 1], data.n_items, seed=config.negatives_seed,
                                         count=config.direct_negatives) for e in examples)
    generator = CoVisitCandidates(split.train, data.n_items)
    if config.retriever:
        generator = RetrieverCandidates(generator, config.retriever, data.item_keys)
    generated, affinity = [], []
    for e in examples:  # one user at a time: the retriever scores each history once for both
        generated.append(generator.candidates(e.history, config.rerank_candidates))
        if config.retriever:
            affinity.append(tuple(generator.affinity(e.history, generated[-1][0])))
    return EvalContext(data, tuple(examples), candidates, split.train, config,
                       rerank=tuple(tuple(items) for items, _ in generated),
                       rerank_scores=tuple(tuple(scores) for _, scores in generated), rerank_affinity=tuple(affinity))


def batches(items: Sequence, size: int):
    for lo in range(0, len(items), size):
        yield items[lo: lo + size]


def _mask_history(scores: np.ndarray, example: Example, columns_are_items: bool) -> np.ndarray:
    """Rank history items last: -inf at their columns (column j = item j, or item j + 1)."""
    scores = scores.copy()
    shift = 0 if columns_are_items else 1
    scores[[i - shift for i in set(example.history)]] = -np.inf
    return scores


# ----------------------------------------------------------------------------- baselines


MISS = 10**9  # the rank of a target the candidates do not hold


def baseline_ranks(scorer, context: EvalContext) -> dict[str, list[int]]:
    """Sequential (whole catalogue), direct (the same 100 sampled candidates) and rerank (the
    generator's candidates; a target outside them is a miss) ranks of one scorer."""
    rng = np.random.default_rng(context.config.sample_seed)
    sequential, direct, rerank = [], [], []
    for chunk_start in range(0, len(context.examples), 256):
        chunk = context.examples[chunk_start: chunk_start + 256]
        scores = scorer.scores([e.history for e in chunk])  # (B, I+1)
        for offset, (row, example) in enumerate(zip(scores, chunk, strict=True)):
            full = _mask_history(row, example, True) if context.config.exclude_history else row
            sequential.append(rank_of_target(full, example.target, rng=rng))
            direct.append(rank_of_target(row[list(context.candidates[chunk_start + offset])], 0, rng=rng))
            if context.rerank:
                rerank.append(rerank_rank(row, context.rerank[chunk_start + offset], example.target, rng))
    return {"sequential": sequential, "direct": direct, "rerank": rerank}


def rerank_rank(scores: np.ndarray, candidates: Sequence[int], target: int, rng: np.random.Generator) -> int:
    if target not in candidates:
        return MISS
    return rank_of_target(scores[list(candidates)], list(candidates).index(target), rng=rng)


FUSION_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def candidate_log_probs(scorer, context: EvalContext) -> list[np.ndarray]:
    """Per example: the scorer's log-probability (softmax over the catalogue) of each candidate."""
    out = []
    for start in range(0, len(context.examples), 256):
        chunk = context.examples[start:start + 256]
        scores = scorer.scores([e.history for e in chunk])
        scores = scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)
        out.extend(row[list(c)] for row, c in zip(scores, context.rerank[start:start + 256], strict=True))
    return out


def covisit_term(context: EvalContext) -> list[np.ndarray]:
    """log(1 + co-visitation weight) per candidate (popularity-filled candidates add 0)."""
    return [np.log1p(np.maximum(np.asarray(g, dtype=np.float64), 0.0)) for g in context.rerank_scores]


def affinity_term(context: EvalContext) -> list[np.ndarray]:
    """The learned retriever's affinity per candidate (`vip5 evaluate --retriever`)."""
    return [np.asarray(a, dtype=np.float64) for a in context.rerank_affinity]


def fused_ranks(log_probs: Sequence[np.ndarray], terms: Sequence[np.ndarray], context: EvalContext,
                weight: float) -> list[int]:
    """Ranks under model log-probability + weight * term (one term per candidate)."""
    rng, ranks = np.random.default_rng(context.config.sample_seed), []
    for model, term, items, example in zip(log_probs, terms, context.rerank, context.examples, strict=True):
        if example.target not in items:
            ranks.append(MISS)
            continue
        ranks.append(rank_of_target(model + weight * term, items.index(example.target), rng=rng))
    return ranks


def fused_metrics(scorer, context: EvalContext, validation: EvalContext,
                  term: Callable[[EvalContext], list[np.ndarray]] = covisit_term, *,
                  weight: float | None = None) -> dict:
    """The model's score fused with a candidate term, at `weight` or (None) the weight chosen on
    `validation` (the run's validation users) by NDCG@10 from `FUSION_WEIGHTS`; the validation
    NDCG@10 of every weight is reported either way."""
    held_out, held_out_terms = candidate_log_probs(scorer, validation), term(validation)
    by_weight = {w: rank_metrics(fused_ranks(held_out, held_out_terms, validation, w))["ndcg@10"]
                 for w in sorted({*FUSION_WEIGHTS, *([weight] if weight is not None else [])})}
    best = max(by_weight, key=lambda w: (by_weight[w], -w))
    weight = best if weight is None else weight
    return {**rank_metrics(fused_ranks(candidate_log_probs(scorer, context), term(context), context, weight)),
            "weight": weight, "best_validation_weight": best,
            "validation_ndcg@10": {str(w): round(v, 4) for w, v in by_weight.items()},
            "n_validation_users": len(validation.examples)}


def retrieval_recall(scorer, context: EvalContext) -> dict:
    """Recall@K (K = the re-rank candidates) of three candidate lists: the generator's, the
    scorer's own top K over the catalogue (history excluded: a learned retriever), and the first
    half of the generator's list filled up with the scorer's best other items."""
    k, hits = context.config.rerank_candidates, Counter()
    for start in range(0, len(context.examples), 256):
        chunk = context.examples[start:start + 256]
        for row, example, generated in zip(scorer.scores([e.history for e in chunk]), chunk,
                                           context.rerank[start:start + 256], strict=True):
            row = _mask_history(row, example, True)
            row[0] = -np.inf
            best = np.argsort(-row, kind="stable")[:k].tolist()
            half = set(generated[:k // 2])
            merged = half | set([i for i in best if i not in half][:k - len(half)])
            hits["candidates"] += example.target in generated[:k]
            hits["model"] += example.target in best
            hits["merged"] += example.target in merged
    return {"k": k, **{name: round(hits[name] / max(1, len(context.examples)), 4)
                       for name in ("candidates", "model", "merged")}}


def candidate_order_ranks(context: EvalContext) -> list[int]:
    """0-based ranks under the generator's own order."""
    return [c.index(e.target) if e.target in c else MISS for e, c in zip(context.examples, context.rerank,
                                                                         strict=True)]


class ItemTokenScorer:
    """An item-token VIP5 as a `Scorer`: histories -> (B, I+1) scores of every item as the next one
    (one decoder pass over the last `max_len` history items)."""

    name = "vip5"

    def __init__(self, model, *, max_len: int = 50, batch_size: int = 256):
        self.model, self.max_len, self.batch_size = model, max_len, batch_size

    def scores(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        self.model.eval()
        out = []
        for start in range(0, len(histories), self.batch_size):
            chunk = [list(h)[-(self.max_len - 1):] for h in histories[start:start + self.batch_size]]
            rows = np.zeros((len(chunk), max(1, max(len(h) for h in chunk))), dtype=np.int64)
            for row, items in enumerate(chunk):
                rows[row, :len(items)] = items
            lengths = torch.tensor([len(h) for h in chunk])
            out.append(self.model.next_item_scores(torch.from_numpy(rows), lengths).double().numpy())
        return np.concatenate(out)


def make_baseline(name: str, context: EvalContext):
    if name == "popularity":
        return Popularity(context.train, context.data.n_items)
    if name == "markov":
        return Markov(context.train, context.data.n_items)
    if name == "next_id":
        return NextId(context.train, context.data.n_items)
    return SASRecScorer(context.train, context.data.n_items, context.config.sasrec)


def evaluate_baselines(context: EvalContext) -> dict:
    out = {}
    for name in context.config.baselines:
        started = time.monotonic()
        scorer = make_baseline(name, context)
        ranks = baseline_ranks(scorer, context)
        out[name] = {task: rank_metrics(r) for task, r in ranks.items() if r}
        if hasattr(scorer, "info"):
            out[name]["info"] = scorer.info()
        out[name]["time_s"] = round(time.monotonic() - started, 1)
        log.info("baseline %s: sequential hr@5 %.4f, direct ndcg@10 %.4f", name,
                 out[name]["sequential"]["hr@5"], out[name]["direct"]["ndcg@10"])
    return out


# ----------------------------------------------------------------------------- VIP5


def _progress(iterable, total: int, desc: str):
    import sys

    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)


def sequential_ranks(model, context: EvalContext, template: str) -> list[int]:
    from model_worker.vip5model.prompts import sequential_prompt
    from model_worker.vip5model.scoring import CatalogueScorer, constrained_beam, top_k_items
    from model_worker.vip5model.trie import ItemTrie

    config, images = context.config, image_lookup(context.data)
    item_ids = [str(i) for i in range(1, context.data.n_items + 1)]
    scorer = CatalogueScorer(model.encoder, item_ids, chunk_items=config.catalogue_chunk) if config.method == "exact" else None
    trie = ItemTrie.from_items(model.encoder, item_ids) if config.method != "exact" else None
    rng, ranks = np.random.default_rng(config.sample_seed), []
    n_batches = -(-len(context.examples) // config.batch_size)
    for chunk in _progress(batches(context.examples, config.batch_size), n_batches, f"sequential {template}"):
        prompts = [sequential_prompt(template, e.user, e.history[-config.history_len:]) for e in chunk]
        batch = model.encoder.encode(prompts, images, with_labels=False)
        if scorer is not None:
            scores = scorer.score(model, batch).double().numpy()  # (B, I): column j = item j + 1
            for row, example in zip(scores, chunk, strict=True):
                row = _mask_history(row, example, False) if config.exclude_history else row
                ranks.append(rank_of_target(row, example.target - 1, rng=rng))
        else:
            if config.method == "topk":  # room for history items that are ranked last afterwards
                extra = max(len(set(e.history)) for e in chunk) if config.exclude_history else 0
                ranked = top_k_items(model, batch, [trie] * len(chunk), TOP_K + extra)
            else:
                ranked = constrained_beam(model, batch, [trie] * len(chunk), num_beams=config.num_beams)
            for items, example in zip(ranked, chunk, strict=True):
                kept = [i for i, _ in items if not (config.exclude_history and int(i) in example.history)]
                ranks.append(rank_in_list(kept, str(example.target)))
    return ranks


def direct_ranks(model, context: EvalContext, template: str) -> list[int]:
    from model_worker.vip5model.prompts import direct_prompt
    from model_worker.vip5model.scoring import score_candidates
    from model_worker.vip5model.trie import ItemTrie

    config, images = context.config, image_lookup(context.data)
    rng, ranks = np.random.default_rng(config.sample_seed), []
    pairs = list(zip(context.examples, context.candidates, strict=True))
    n_batches = -(-len(pairs) // config.batch_size)
    for chunk in _progress(batches(pairs, config.batch_size), n_batches, f"direct {template}"):
        orders = [shuffled(c, np.random.default_rng([config.negatives_seed, e.user])) for e, c in chunk]
        prompts = [direct_prompt(template, e.user, order, history=e.history[-config.history_len:])
                   for (e, _), order in zip(chunk, orders, strict=True)]
        batch = model.encoder.encode(prompts, images, with_labels=False)
        tries = [ItemTrie.from_items(model.encoder, [str(i) for i in cands]) for _, cands in chunk]
        for scores in score_candidates(model, batch, tries):  # trie order = candidates, target first
            ranks.append(rank_of_target(scores.double().numpy(), 0, rng=rng))
    return ranks


def explanation_scores(model, context: EvalContext, template: str) -> dict:
    from model_worker.vip5model.prompts import TEMPLATES

    config, images = context.config, image_lookup(context.data)
    wanted = "test" if config.split == "test" else "valid"
    pool = [e for e in context.data.explanations if e.split == wanted]
    if config.max_explanations is not None and config.max_explanations < len(pool):
        chosen = np.sort(np.random.default_rng(config.sample_seed).choice(len(pool), config.max_explanations,
                                                                          replace=False))
        pool = [pool[i] for i in chosen]
    generated = []
    n_batches = -(-len(pool) // config.batch_size)
    for chunk in _progress(batches(pool, config.batch_size), n_batches, f"explanation {template}"):
        prompts = [explanation_from(TEMPLATES[template], e) for e in chunk]
        batch = model.encoder.encode(prompts, images, with_labels=False)
        generated += model.explain_text(batch, max_new_tokens=config.explanation_tokens)
    result = {"template": template, "n": len(pool), **text_metrics(generated, [e.text for e in pool])}
    result["examples"] = [{"generated": g, "reference": e.text} for g, e in list(zip(generated, pool, strict=True))[:3]]
    train = [e for e in context.data.explanations if e.split == "train"]
    result["retrieval_baseline"] = text_metrics(retrieved_explanations(pool, train), [e.text for e in pool])
    return result


def retrieved_explanations(pool, train) -> list[str]:
    """The retrieval baseline: for each (user, item), the training explanation of the same item whose
    words are closest (cosine of word counts) to the user's own training explanations; an item
    without training explanations gets the user's closest one of any item, else an empty text."""
    from collections import Counter, defaultdict

    from .metrics import words

    by_item, by_user = defaultdict(list), defaultdict(list)
    for e in train:
        by_item[e.item].append(e.text)
        by_user[e.user].append(e.text)

    def cosine(a: Counter, b: Counter) -> float:
        dot = sum(v * b.get(k, 0) for k, v in a.items())
        return dot / ((sum(v * v for v in a.values()) * sum(v * v for v in b.values())) ** 0.5 or 1.0)

    out = []
    for e in pool:
        profile = Counter(w for text in by_user.get(e.user, []) for w in words(text))
        options = by_item.get(e.item) or by_user.get(e.user, [])
        out.append(max(options, key=lambda t: cosine(profile, Counter(words(t)))) if options else "")
    return out


def _seen_and_held_out(family: str, run: Callable[[str], dict]) -> dict:
    seen = run(SEEN[family])
    return {**seen, "held_out": run(HELD_OUT[family])}


def _for_template(context: EvalContext, template: str) -> EvalContext:
    """The held-out templates run on the first `held_out_max_users` users of the sample."""
    limit = context.config.held_out_max_users
    if template not in HELD_OUT.values() or limit is None or limit >= len(context.examples):
        return context
    return replace(context, examples=context.examples[:limit], candidates=context.candidates[:limit])


def evaluate_item_tokens(model, context: EvalContext, *, max_len: int, cold: frozenset[int],
                         validation: EvalContext | None = None) -> dict:
    """Sequential, sampled direct and rerank metrics of an item-token model (one pass per batch of
    histories scores the whole catalogue), the rerank fused with the candidate score (weight chosen
    on `validation`), and cold-start items with and without content. Cold items (held out of
    training) are served as items that arrived after training throughout."""
    with served_as_new(model, cold):
        return _evaluate_item_tokens(model, context, max_len=max_len, cold=cold, validation=validation)


@contextmanager
def served_as_new(model, items: frozenset[int]) -> Iterator[None]:
    """Within the block, `items` have no trained id (as items that arrived after training)."""
    has_id = model.item_tokens.has_id
    saved = has_id.clone()
    has_id[torch.tensor(sorted(items), dtype=torch.long)] = False
    try:
        yield
    finally:
        has_id.copy_(saved)


def _evaluate_item_tokens(model, context: EvalContext, *, max_len: int, cold: frozenset[int],
                          validation: EvalContext | None) -> dict:
    started = time.monotonic()
    scorer = ItemTokenScorer(model, max_len=max_len)
    ranks = baseline_ranks(scorer, context)
    out = {"sequential": {"n_users": len(ranks["sequential"]), **rank_metrics(ranks["sequential"])},
           "direct": {"sampled": "1 target + 99 untouched negatives", **rank_metrics(ranks["direct"])},
           "rerank": {"model": rank_metrics(ranks["rerank"]),
                      "candidates": rank_metrics(candidate_order_ranks(context)),
                      "n_candidates": context.config.rerank_candidates}}
    if validation is not None and validation.examples:
        out["rerank"]["fused"] = fused_metrics(scorer, context, validation)
        if context.rerank_affinity:  # as the model worker serves it: its default retrieval weight
            from model_worker.rerank import RerankConfig

            out["rerank"]["with_retriever"] = fused_metrics(scorer, context, validation, affinity_term,
                                                            weight=RerankConfig().retrieval_weight)
    out["retrieval_recall"] = retrieval_recall(scorer, context)
    if cold:
        out["cold_start"] = cold_start_metrics(model, context, max_len=max_len, cold=cold)
    out["explanation"] = {"skipped": "item-token runs train the sequential task; explanations need a digits run"}
    out["timing_s"] = {"all": round(time.monotonic() - started, 1)}
    return out


def cold_start_metrics(model, context: EvalContext, *, max_len: int, cold: frozenset[int]) -> dict:
    """Test users whose target was held out of training (`served_as_new`): ranked with the cold
    items' content (the id borrowed from their nearest trained items by content, plus the content
    part), with the content part alone, and without content."""
    examples = [e for e in context.examples if e.target in cold]
    if not examples:
        return {"n_users": 0}
    tokens, rows, config = model.item_tokens, torch.tensor(sorted(cold)), model.config
    saved = tokens.has_feature.clone()
    sub = replace(context, examples=tuple(examples), rerank=())
    out = {"n_users": len(examples), "n_items": len(cold), "neighbours": config.new_item_neighbours}
    variants = (("with_content", True, config), ("content_part_only", True, config.replace(new_item_neighbours=0)),
                ("without_content", False, config))
    with served_as_new(model, cold):
        try:
            for name, has_content, served in variants:
                tokens.has_feature[rows] = saved[rows] & has_content
                model.config = served
                out[name] = rank_metrics(_sequential_only(ItemTokenScorer(model, max_len=max_len), sub))
        finally:
            model.config = config
            tokens.has_feature.copy_(saved)
    return out


def _sequential_only(scorer, context: EvalContext) -> list[int]:
    return next_item_ranks(scorer, context.examples, exclude_history=context.config.exclude_history,
                           seed=context.config.sample_seed)


def next_item_ranks(scorer, examples: Sequence[Example], *, exclude_history: bool = True, seed: int = 0
                    ) -> list[int]:
    """Whole-catalogue rank of each example's target under `scorer` (ties broken at random, seeded;
    history items ranked last when `exclude_history`)."""
    rng, ranks = np.random.default_rng(seed), []
    for start in range(0, len(examples), 256):
        chunk = examples[start:start + 256]
        for row, example in zip(scorer.scores([e.history for e in chunk]), chunk, strict=True):
            row = _mask_history(row, example, True) if exclude_history else row
            ranks.append(rank_of_target(row, example.target, rng=rng))
    return ranks


def evaluate_model(model, context: EvalContext) -> dict:
    def sequential(template: str) -> dict:
        ranks = sequential_ranks(model, _for_template(context, template), template)
        return {"template": template, "n_users": len(ranks), **rank_metrics(ranks)}

    def direct(template: str) -> dict:
        ranks = direct_ranks(model, _for_template(context, template), template)
        return {"template": template, "n_users": len(ranks), **rank_metrics(ranks)}

    timing = {}
    started = time.monotonic()
    out = {"sequential": _seen_and_held_out("sequential", sequential)}
    timing["sequential"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    out["direct"] = _seen_and_held_out("direct", direct)
    timing["direct"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    if any(e.split == context.config.split for e in context.data.explanations):
        out["explanation"] = _seen_and_held_out("explanation", lambda t: explanation_scores(model, context, t))
    else:
        out["explanation"] = {"skipped": f"the data has no {context.config.split}-split explanations"}
    timing["explanation"] = round(time.monotonic() - started, 1)
    out["timing_s"] = timing
    return out


def model_summary(model) -> dict:
    report = model.trainable_parameters()
    report.pop("groups")
    backbone = model.backbone.config
    return {"preset": model.config.backbone, "adapter_kind": model.config.adapter_kind,
            "d_model": backbone.d_model, "layers": f"{backbone.num_layers}+{backbone.num_decoder_layers}",
            "vocab_size": backbone.vocab_size, "image_tokens": model.config.image_tokens, **report}


def trained_data_config(model_dir: Path) -> DataConfig:
    """The DataConfig a run was trained with (its `train_config.json`)."""
    record = json.loads((run_dirs(model_dir)[0] / "train_config.json").read_text())
    return DataConfig(**record["data"])


def load_run(model_dir: Path) -> tuple[object, DataConfig, dict]:
    """A trained model and the data config it was trained with (`<run>/train_config.json`)."""
    from model_worker.vip5model.model import VIP5Model

    run_dir, model_path = run_dirs(model_dir)
    record = json.loads((run_dir / "train_config.json").read_text())
    stages = run_dir / "stages.json"
    record["stage_runs"] = json.loads(stages.read_text()) if stages.exists() else []
    return VIP5Model.from_pretrained(model_path), DataConfig(**record["data"]), record


def evaluate(config: EvalConfig, *, model_dir: str | None = None, data_config: DataConfig | None = None) -> dict:
    """Evaluate a trained run (its data config unless `data_config` is given) and the baselines."""
    torch.set_num_threads(config.threads)
    model, record = None, {}
    if model_dir is not None:
        model, trained_on, record = load_run(Path(model_dir))
        data_config = data_config or trained_on
    if data_config is None:
        raise ValueError("evaluate needs a model_dir or a data_config")
    started = time.monotonic()
    data = load_data(data_config)
    context = make_context(data, config, record.get("train"))
    result: dict = {"numbering": data.numbering, "n_users": len(context.examples), "split": config.split,
                    "data": data.summary(), "stages": [], "model": None}
    if model is not None:
        result.update(stages=list(model.stages_run), model=model_summary(model),
                      training=_training_summary(record))
        if model.item_tokens is not None:
            train = record.get("train", {})
            cold = cold_items(data.n_items, train.get("cold_items_share", 0.0), train.get("seed", 0))
            validation_users = train.get("validate_users", 2000)
            validation = make_context(data, replace(config, split="valid", max_users=validation_users), train)
            result.update(evaluate_item_tokens(model, context, max_len=train.get("max_len", 50), cold=cold,
                                               validation=validation))
        else:
            result.update(evaluate_model(model, context))
    result["baselines"] = evaluate_baselines(context)
    result.setdefault("rerank", {}).update(candidates=rank_metrics(candidate_order_ranks(context)),
                                           n_candidates=config.rerank_candidates)
    protocol = asdict(config)
    protocol["sasrec"] = asdict(config.sasrec)
    result["protocol"] = protocol
    result["total_s"] = round(time.monotonic() - started, 1)
    return result


def _training_summary(record: dict) -> dict:
    runs = record.get("stage_runs", [])
    return {"train_s": round(sum(r["train_s"] for r in runs), 1),
            "stages": [{k: r[k] for k in ("stage", "steps", "planned_steps", "train_s", "first_loss", "last_loss")}
                       for r in runs],
            "batch_size": record.get("train", {}).get("batch_size"),
            "tasks": record.get("tasks")}
