"""Ranking and text-generation metrics.

In:  ranks of the true item (0 = first place; a rank >= the list length counts as a miss), or a
     score vector and the target's index; generated and reference texts.
Out: plain floats: HR@k and NDCG@k in [0, 1] (one relevant item, so NDCG@k = 1/log2(rank + 2) inside
     the top k); BLEU-4 (corpus level, on words, no smoothing, as Papineni et al. 2002) and mean
     ROUGE-1/2/L F1 on words, both in percent as in the VIP5 paper's Table 4.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

RANK_KS = (1, 5, 10)
NDCG_KS = (5, 10)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def hit_rate_at_k(ranks: Sequence[int], k: int) -> float:
    if not len(ranks):
        return 0.0
    return float(np.mean([rank < k for rank in ranks]))


def ndcg_at_k(ranks: Sequence[int], k: int) -> float:
    if not len(ranks):
        return 0.0
    return float(np.mean([1.0 / math.log2(rank + 2) if rank < k else 0.0 for rank in ranks]))


def rank_metrics(ranks: Sequence[int]) -> dict[str, float]:
    """HR@1/5/10 and NDCG@5/10, keyed `hr@5`, `ndcg@10`, ..."""
    out = {f"hr@{k}": hit_rate_at_k(ranks, k) for k in RANK_KS}
    out.update({f"ndcg@{k}": ndcg_at_k(ranks, k) for k in NDCG_KS})
    return out


def rank_in_list(ranked: Sequence, target) -> int:
    """Position of `target` in a ranked list; len(ranked) (a miss) when absent."""
    for position, item in enumerate(ranked):
        if item == target:
            return position
    return len(ranked)


def rank_of_target(scores: np.ndarray, target_index: int, *, rng: np.random.Generator) -> int:
    """Rank of scores[target_index] among finite scores; ties are broken uniformly at random so a
    constant scorer gets chance-level metrics rather than a lucky or unlucky fixed order."""
    target = scores[target_index]
    higher = int(np.sum(scores > target))
    ties = int(np.sum(scores == target)) - 1
    return higher + (int(rng.integers(0, ties + 1)) if ties > 0 else 0)


# ----------------------------------------------------------------------------- text


def words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks."""
    return _WORD.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], *, max_n: int = 4) -> float:
    """Corpus BLEU-`max_n` in percent: clipped n-gram precisions pooled over the corpus, their
    geometric mean, times the brevity penalty exp(1 - r/c) when the output is shorter (c < r)."""
    if len(hypotheses) != len(references):
        raise ValueError("corpus_bleu: hypotheses and references differ in number")
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp_text, ref_text in zip(hypotheses, references, strict=True):
        hyp, ref = words(hyp_text), words(ref_text)
        hyp_len, ref_len = hyp_len + len(hyp), ref_len + len(ref)
        for n in range(1, max_n + 1):
            hyp_ngrams, ref_ngrams = _ngrams(hyp, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(c, ref_ngrams[g]) for g, c in hyp_ngrams.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * brevity * math.exp(log_precision)


def _f1(overlap: int, hyp_count: int, ref_count: int) -> float:
    if overlap == 0 or hyp_count == 0 or ref_count == 0:
        return 0.0
    precision, recall = overlap / hyp_count, overlap / ref_count
    return 2 * precision * recall / (precision + recall)


def rouge_n(hyp: Sequence[str], ref: Sequence[str], n: int) -> float:
    """ROUGE-N F1 of one pair (clipped n-gram overlap), in [0, 1]."""
    hyp_ngrams, ref_ngrams = _ngrams(hyp, n), _ngrams(ref, n)
    overlap = sum((hyp_ngrams & ref_ngrams).values())
    return _f1(overlap, sum(hyp_ngrams.values()), sum(ref_ngrams.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(hyp: Sequence[str], ref: Sequence[str]) -> float:
    """ROUGE-L F1 (longest common subsequence, beta = 1) of one pair, in [0, 1]."""
    return _f1(lcs_length(hyp, ref), len(hyp), len(ref))


def _percent_mean(values: Sequence[float]) -> float:
    return 100.0 * float(np.mean(values)) if len(values) else 0.0


def text_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """`bleu4`, `rouge_1`, `rouge_2`, `rouge_l` in percent (ROUGE: mean per-pair F1)."""
    pairs = [(words(h), words(r)) for h, r in zip(hypotheses, references, strict=True)]
    return {
        "bleu4": corpus_bleu(hypotheses, references),
        "rouge_1": _percent_mean([rouge_n(h, r, 1) for h, r in pairs]),
        "rouge_2": _percent_mean([rouge_n(h, r, 2) for h, r in pairs]),
        "rouge_l": _percent_mean([rouge_l(h, r) for h, r in pairs]),
    }
