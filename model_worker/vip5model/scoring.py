"""Scoring item ids under a prompt: exact trie scoring, the naive form, constrained beam search.

In: a model, encoded prompts (`EncodedBatch`), and per prompt the candidate items (as an `ItemTrie`).
Out: log p(item id tokens | prompt) per candidate, or the beam's top items.
Letters: B prompts, T source tokens, D d_model, H heads, N trie input nodes, E trie edges,
I items, V vocabulary, C candidates.

Exact scoring (`score_tries`) runs the encoder once per prompt and the decoder once over the whole
trie: every distinct prefix of the candidates' token sequences is one decoder position, attending
only to its ancestors (a tree attention mask) with T5's relative position bias taken over depths,
so each position computes exactly what a left-to-right decoder would at that prefix. Cross-attention
keys/values are computed once per prompt, shared prefixes (e.g. "▁", "item_") once per prompt, and
the vocabulary log-softmax once per distinct prefix. The naive form (`score_naive`) repeats the
encoder output per candidate and runs the full decoder per candidate; both give the same numbers.

Entry points: `score_candidates` (direct recommendation, re-ranking), `CatalogueScorer` (every item,
for full rankings), `top_k_items` (exact k best items by best-first search over the trie),
`constrained_beam` (beam search that can only spell valid ids), `score_naive` (reference).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from transformers.modeling_outputs import BaseModelOutput

from .encoding import EncodedBatch
from .trie import ItemTrie, PackedTrie


@contextmanager
def evaluating(model):
    """Eval mode and no autograd for the duration; restores the previous mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


# ---- exact scoring over a trie ----------------------------------------------------------------


def score_tries(model, encoder_states: torch.Tensor, encoder_mask: torch.Tensor,
                tries: Sequence[PackedTrie]) -> list[torch.Tensor]:
    """Per prompt b, the log-likelihood (I_b,) of every item in `tries[b]`, in the trie's item order.

    encoder_states (B, T, D), encoder_mask (B, T); one decoder pass for all B tries. When every
    prompt shares one trie (catalogue scoring), its mask and position bias are built once, (1, N, N),
    and broadcast over the prompts.
    """
    backbone, device = model.backbone, encoder_states.device
    shared = all(t is tries[0] for t in tries)
    tokens, depth, ancestors, sizes = _stack(tries[:1] if shared else tries, pad_token=int(tries[0].tokens[0]),
                                             device=device)  # (B or 1, N), (B or 1, N), (B or 1, N, N), (B or 1,)
    if shared:
        tokens, sizes = tokens.expand(len(tries), -1), sizes.expand(len(tries))
    hidden = _tree_decoder(backbone, tokens, depth, ancestors, encoder_states, encoder_mask)  # (B, N, D)
    valid = torch.arange(tokens.shape[1], device=device)[None, :] < sizes[:, None]  # (B, N)
    logits = backbone.lm_head(hidden[valid]).float()  # (sum N_b, V): once per distinct prefix
    log_normaliser = torch.logsumexp(logits, dim=-1)  # (sum N_b,)
    offsets = torch.cumsum(sizes, 0) - sizes  # (B,) first row of prompt b in logits
    scores = []
    for b, trie in enumerate(tries):
        rows = offsets[b] + trie.edge_source.to(device)
        edge_logp = logits[rows, trie.edge_token.to(device)] - log_normaliser[rows]  # (E,)
        edge_logp = torch.cat([edge_logp, edge_logp.new_zeros(1)])  # slot E pads short paths
        scores.append(edge_logp[trie.item_edges.to(device)].sum(dim=-1).cpu())  # (I,)
    return scores


def _stack(tries: Sequence[PackedTrie], *, pad_token: int, device: torch.device):
    """Pad B packed tries to a common N; a padding node attends only to itself."""
    sizes = torch.tensor([t.tokens.numel() for t in tries])
    n = int(sizes.max())
    tokens = torch.full((len(tries), n), pad_token, dtype=torch.long)
    depth = torch.zeros((len(tries), n), dtype=torch.long)
    ancestors = torch.eye(n, dtype=torch.bool).repeat(len(tries), 1, 1)  # (B, N, N)
    for b, trie in enumerate(tries):
        size = trie.tokens.numel()
        tokens[b, :size], depth[b, :size] = trie.tokens, trie.depth
        ancestors[b, :size, :size] = trie.ancestors
    return tokens.to(device), depth.to(device), ancestors.to(device), sizes.to(device)


def _tree_decoder(backbone, tokens, depth, ancestors, encoder_states, encoder_mask) -> torch.Tensor:
    """T5's decoder stack over packed trie nodes: (B, N) tokens -> (B, N, D) final hidden states.

    Calls the stack's blocks directly so the self-attention bias can be the tree's: relative
    position = depth(key) - depth(query) for ancestors, masked elsewhere. Everything else (adapter
    hooks, LoRA layers, cross-attention, final norm, output scaling) is the stock decoder's.
    """
    decoder = backbone.decoder
    first = decoder.block[0].layer[0].SelfAttention
    relative = depth[:, None, :] - depth[:, :, None]  # (B, N, N) key depth - query depth, <= 0 on ancestors
    buckets = first._relative_position_bucket(
        relative, bidirectional=False, num_buckets=first.relative_attention_num_buckets,
        max_distance=first.relative_attention_max_distance,
    )
    x = decoder.embed_tokens(tokens)  # (B, N, D)
    lowest = torch.finfo(x.dtype).min
    position_bias = first.relative_attention_bias(buckets).permute(0, 3, 1, 2).to(x.dtype)  # (B, H, N, N)
    self_mask = x.new_zeros(ancestors.shape).masked_fill(~ancestors, lowest)[:, None]  # (B, 1, N, N)
    cross_mask = x.new_zeros(encoder_mask.shape).masked_fill(encoder_mask == 0, lowest)
    cross_mask = cross_mask[:, None, None, :]  # (B, 1, 1, T)
    for block in decoder.block:
        x = block(x, attention_mask=self_mask, position_bias=position_bias, encoder_hidden_states=encoder_states,
                  encoder_attention_mask=cross_mask)[0]
    x = decoder.dropout(decoder.final_layer_norm(x))
    if backbone.config.scale_decoder_outputs:
        x = x * backbone.config.d_model**-0.5
    return x


def score_candidates(model, batch: EncodedBatch, tries: Sequence[ItemTrie]) -> list[torch.Tensor]:
    """Exact log-likelihood of every candidate, prompt b's candidates given as `tries[b]` (CPU tensors)."""
    batch = batch.to(model.device)
    with evaluating(model):
        states = model.encode(batch).last_hidden_state  # (B, T, D): one encoder pass per prompt
        packed = {id(t): t.pack() for t in tries}  # a trie shared by several prompts is packed once
        return score_tries(model, states, batch.attention_mask, [packed[id(t)] for t in tries])


class CatalogueScorer:
    """Exact likelihood of every catalogue item for each prompt (sequential evaluation).

    The catalogue is split, in token order, into chunks of at most `chunk_items` items; each chunk
    is a complete trie packed once here and reused for every prompt.
    """

    def __init__(self, encoder, item_ids: Sequence[str], *, chunk_items: int = 512):
        self.item_ids = [str(i) for i in item_ids]
        seqs = encoder.target_token_ids(self.item_ids)
        order = sorted(range(len(seqs)), key=lambda i: seqs[i])  # neighbours share prefixes
        start = encoder.tokenizer.pad_token_id
        self.chunks = []  # (item indices, packed trie)
        for lo in range(0, len(order), chunk_items):
            index = order[lo: lo + chunk_items]
            trie = ItemTrie([self.item_ids[i] for i in index], [seqs[i] for i in index], start_token=start)
            self.chunks.append((torch.tensor(index), trie.pack()))

    def score(self, model, batch: EncodedBatch) -> torch.Tensor:
        """(B, I) log-likelihoods (CPU), columns in `item_ids` order."""
        batch = batch.to(model.device)
        with evaluating(model):
            states = model.encode(batch).last_hidden_state  # (B, T, D)
            out = torch.empty((len(batch), len(self.item_ids)))
            for index, packed in self.chunks:
                scores = score_tries(model, states, batch.attention_mask, [packed] * len(batch))
                out[:, index] = torch.stack(scores)
            return out


# ---- exact top-k by best-first search ---------------------------------------------------------


class _BestFirst:
    """Best-first search over one prompt's trie. A prefix's log-probability bounds every item
    below it (log-probabilities are <= 0), so a complete item popped from the frontier outranks
    everything not yet found: the first k popped are exactly the k most likely items."""

    def __init__(self, trie: ItemTrie, k: int):
        self.trie, self.k = trie, k
        self.frontier = [(0.0, 0, 0)]  # (-log p(prefix), tie-break, node)
        self.counter = itertools.count(1)
        self.found: list[tuple[str, float]] = []

    @property
    def done(self) -> bool:
        return len(self.found) >= self.k or not self.frontier

    def next_nodes(self, limit: int) -> list[tuple[int, float]]:
        """Pop found items off the top, then up to `limit` prefixes to expand (best first)."""
        nodes: list[tuple[int, float]] = []
        while self.frontier and len(nodes) < limit and len(self.found) < self.k:
            neg_logp, _, node = self.frontier[0]
            if self.trie.children[node]:
                nodes.append((node, -heapq.heappop(self.frontier)[0]))
            elif nodes:  # a pending expansion might still beat this item
                break
            else:
                heapq.heappop(self.frontier)
                self.found.append((self.trie.item_ids[self.trie.leaf_item[node]], -neg_logp))
        return nodes

    def expand(self, nodes: list[tuple[int, float]], logp: torch.Tensor) -> None:
        """logp (len(nodes), V): next-token log-probabilities at each expanded prefix."""
        for (node, score), row in zip(nodes, logp, strict=True):
            for token, child in self.trie.children[node].items():
                heapq.heappush(self.frontier, (-(score + float(row[token])), next(self.counter), child))


def top_k_items(model, batch: EncodedBatch, tries: Sequence[ItemTrie], k: int, *,
                nodes_per_step: int = 32) -> list[list[tuple[str, float]]]:
    """Exactly the k most likely items of `tries[b]` for prompt b, best first, with their
    log-likelihoods; expands only the prefixes that can still reach the top k (a trained model
    expands few; a near-uniform one can expand most of the trie)."""
    batch = batch.to(model.device)
    with evaluating(model):
        states = model.encode(batch).last_hidden_state  # (B, T, D)
        searches = [_BestFirst(trie, k) for trie in tries]
        while True:
            pending = {b: s.next_nodes(nodes_per_step) for b, s in enumerate(searches) if not s.done}
            pending = {b: nodes for b, nodes in pending.items() if nodes}
            if not pending:
                break
            prompts = list(pending)
            packed = [tries[b].pack_prefixes([n for n, _ in pending[b]]) for b in prompts]
            index = torch.tensor(prompts, device=states.device)
            tokens, depth, ancestors, _ = _stack([p for p, _ in packed], pad_token=tries[0].start_token,
                                                 device=states.device)
            hidden = _tree_decoder(model.backbone, tokens, depth, ancestors, states[index],
                                   batch.attention_mask[index])  # (B', N, D)
            for i, b in enumerate(prompts):
                rows = hidden[i, packed[i][1].to(states.device)]  # (n, D)
                logp = torch.log_softmax(model.backbone.lm_head(rows).float(), dim=-1).cpu()  # (n, V)
                searches[b].expand(pending[b], logp)
        return [s.found for s in searches]


# ---- the naive form ---------------------------------------------------------------------------


def score_naive(model, batch: EncodedBatch, candidate_tokens: Sequence[Sequence[Sequence[int]]]) -> list[torch.Tensor]:
    """Same numbers as `score_candidates`, computed the expensive way: prompt b's encoder output
    repeated per candidate, full decoder and full-vocabulary log-softmax at every target position."""
    batch = batch.to(model.device)
    with evaluating(model):
        states = model.encode(batch).last_hidden_state  # (B, T, D)
        scores = []
        for b, seqs in enumerate(candidate_tokens):
            labels = _pad_labels(seqs).to(model.device)  # (C, L)
            n = labels.shape[0]
            encoder_out = BaseModelOutput(last_hidden_state=states[b: b + 1].expand(n, -1, -1))
            mask = batch.attention_mask[b: b + 1].expand(n, -1)
            decoder_inputs = model.backbone._shift_right(labels)  # (C, L) start token + labels[:-1]
            logits = model.backbone(encoder_outputs=encoder_out, attention_mask=mask,
                                    decoder_input_ids=decoder_inputs).logits  # (C, L, V)
            logp = torch.log_softmax(logits.float(), dim=-1)  # (C, L, V)
            token_logp = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]  # (C, L)
            scores.append((token_logp * (labels != -100)).sum(dim=1).cpu())
        return scores


def _pad_labels(seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    longest = max(len(s) for s in seqs)
    labels = torch.full((len(seqs), longest), -100, dtype=torch.long)
    for i, seq in enumerate(seqs):
        labels[i, : len(seq)] = torch.tensor(list(seq))
    return labels


# ---- constrained beam search ------------------------------------------------------------------


def constrained_beam(model, batch: EncodedBatch, tries: Sequence[ItemTrie], *, num_beams: int = 20,
                     num_return: int | None = None) -> list[list[tuple[str, float]]]:
    """Beam search that can only spell item ids of `tries[b]`: per prompt, (item id, beam score)
    best first (HF's length-normalised sequence score)."""
    num_return = num_return or num_beams
    pad = model.tokenizer.pad_token_id
    batch = batch.to(model.device)

    def allowed(batch_id: int, prefix: torch.Tensor) -> list[int]:
        return tries[batch_id].allowed_next(prefix.tolist()[1:]) or [pad]

    with evaluating(model):
        out = model.generate(
            batch, num_beams=num_beams, num_return_sequences=num_return, do_sample=False,
            max_new_tokens=max(t.max_depth for t in tries), prefix_allowed_tokens_fn=allowed,
            return_dict_in_generate=True, output_scores=True,
        )
    sequences, seq_scores = out.sequences, out.sequences_scores  # (B * R, L), (B * R,)
    results = []
    for b, trie in enumerate(tries):
        ranked = []
        for r in range(b * num_return, (b + 1) * num_return):
            item = trie.item_for(sequences[r, 1:].tolist())
            if item is not None and all(item != seen for seen, _ in ranked):
                ranked.append((item, float(seq_scores[r])))
        results.append(ranked)
    return results
