"""A prefix tree over item ids' target token sequences, and its packed tensor form.

In: item ids and their token sequences (each ending with </s>). Out: the trie (for constrained
decoding: which tokens may follow a prefix) and `PackedTrie`, the tensors one decoder pass needs to
score every item exactly (see scoring.py). Letters: N decoder input nodes (the root = decoder
start, then every distinct proper prefix, parents before children), E edges (one per non-root
node: parent input node -> token), I items, P longest path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PackedTrie:
    tokens: torch.Tensor      # (N,) decoder input token per input node (root: decoder start)
    depth: torch.Tensor       # (N,) root 0
    ancestors: torch.Tensor   # (N, N) bool, [i, j] = j is i or an ancestor of i
    edge_source: torch.Tensor  # (E,) input node whose next-token distribution scores the edge
    edge_token: torch.Tensor  # (E,) token on the edge
    item_edges: torch.Tensor  # (I, P) edges on each item's path, padded with E (a zero log-prob slot)


class ItemTrie:
    def __init__(self, item_ids: Sequence[str], token_seqs: Sequence[Sequence[int]], *, start_token: int):
        if len(item_ids) != len(token_seqs):
            raise ValueError("item_ids and token_seqs differ in length")
        self.item_ids = [str(i) for i in item_ids]
        self.start_token = start_token
        self.children: list[dict[int, int]] = [{}]  # node -> {token: child node}; node 0 is the root
        self.token, self.parent, self.depth = [start_token], [-1], [0]
        self.item_path: list[list[int]] = []  # item -> nodes after the root
        self.leaf_item: dict[int, int] = {}  # leaf node -> first item ending there
        for index, seq in enumerate(token_seqs):
            if not seq:
                raise ValueError(f"item {self.item_ids[index]!r} has an empty token sequence")
            path = self._insert_path(seq)
            self.item_path.append(path)
            self.leaf_item.setdefault(path[-1], index)

    def _insert_path(self, seq: Sequence[int]) -> list[int]:
        node, path = 0, []
        for token in seq:
            child = self.children[node].get(int(token))
            if child is None:
                child = len(self.token)
                self.children[node][int(token)] = child
                self.children.append({})
                self.token.append(int(token))
                self.parent.append(node)
                self.depth.append(self.depth[node] + 1)
            node = child
            path.append(node)
        return path

    @classmethod
    def from_items(cls, encoder, item_ids: Sequence[str]) -> ItemTrie:
        """Trie over the items' target tokenization (`PromptEncoder.target_token_ids`)."""
        start = encoder.tokenizer.pad_token_id
        return cls(item_ids, encoder.target_token_ids([str(i) for i in item_ids]), start_token=start)

    # ---- constrained decoding ------------------------------------------------------------------

    def allowed_next(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that may follow `prefix` (tokens after the decoder start); [] when the prefix is
        complete or leaves the trie."""
        node = 0
        for token in prefix:
            node = self.children[node].get(int(token), -1)
            if node < 0:
                return []
        return list(self.children[node])

    def item_for(self, tokens: Sequence[int]) -> str | None:
        """The item whose full token sequence is `tokens` (trailing padding ignored), else None."""
        node = 0
        for token in tokens:
            nxt = self.children[node].get(int(token))
            if nxt is None:
                break
            node = nxt
        item = self.leaf_item.get(node)
        return None if item is None else self.item_ids[item]

    @property
    def max_depth(self) -> int:
        return max(self.depth)

    # ---- packed form for exact scoring ---------------------------------------------------------

    def pack_prefixes(self, nodes: Sequence[int]) -> tuple[PackedTrie, torch.Tensor]:
        """Decoder inputs for computing the next-token distribution at `nodes`: the nodes and
        all their ancestors (no edges). Returns the packed inputs and each node's row (len(nodes),)."""
        include = set()
        for node in nodes:
            while node >= 0 and node not in include:
                include.add(node)
                node = self.parent[node]
        order = sorted(include)  # node ids are assigned parents-first
        return self._pack_inputs(order), torch.tensor([order.index(n) for n in nodes])

    def _pack_inputs(self, inputs: list[int], **edges) -> PackedTrie:
        index = {node: i for i, node in enumerate(inputs)}
        ancestors = np.zeros((len(inputs), len(inputs)), dtype=bool)  # (N, N)
        for i, node in enumerate(inputs):
            if node != 0:
                ancestors[i] = ancestors[index[self.parent[node]]]
            ancestors[i, i] = True
        empty = torch.zeros(0, dtype=torch.long)
        return PackedTrie(
            tokens=torch.tensor([self.token[n] for n in inputs]),
            depth=torch.tensor([self.depth[n] for n in inputs]),
            ancestors=torch.from_numpy(ancestors),
            edge_source=edges.get("edge_source", empty),
            edge_token=edges.get("edge_token", empty),
            item_edges=edges.get("item_edges", empty.view(0, 0)),
        )

    def pack(self) -> PackedTrie:
        # Decoder inputs: every node with children (the root and all proper prefixes). Node ids are
        # assigned parents-first, so ancestors always precede descendants.
        inputs = [n for n in range(len(self.token)) if self.children[n]]
        input_index = {node: i for i, node in enumerate(inputs)}
        edge_of_node = {node: e for e, node in enumerate(range(1, len(self.token)))}  # E = nodes - 1
        n_edges = len(edge_of_node)
        longest = max(len(p) for p in self.item_path)
        item_edges = np.full((len(self.item_path), longest), n_edges, dtype=np.int64)  # (I, P)
        for i, path in enumerate(self.item_path):
            item_edges[i, : len(path)] = [edge_of_node[n] for n in path]
        return self._pack_inputs(
            inputs,
            edge_source=torch.tensor([input_index[self.parent[n]] for n in range(1, len(self.token))]),
            edge_token=torch.tensor(self.token[1:]),
            item_edges=torch.from_numpy(item_edges),
        )
