"""The model on real interaction sequences (the vendored Amazon Beauty cut, P5 numbering)."""

from pathlib import Path

import numpy as np
import torch

from model_worker.vip5model.prompts import direct_prompt, sequential_prompt
from model_worker.vip5model.scoring import score_candidates, score_naive
from model_worker.vip5model.trie import ItemTrie

DATA = Path(__file__).parents[1] / "data" / "beauty_small" / "sequential_data.txt"


def _sequences(limit: int = 40) -> dict[str, list[str]]:
    lines = DATA.read_text().splitlines()[:limit]
    return {user: items for user, *items in (line.split() for line in lines)}


def _half_with_images(sequences, dim: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    items = sorted({i for seq in sequences.values() for i in seq}, key=int)
    return {i: rng.standard_normal(dim).astype(np.float32) for i in items[::2]}  # the rest have no image


def test_pretraining_on_real_sequences_lowers_the_loss(make_model):
    torch.manual_seed(0)
    sequences = _sequences()
    images = _half_with_images(sequences)
    prompts = [sequential_prompt("A-1", user, seq[:-1][-8:], seq[-1]) for user, seq in sequences.items()]
    model = make_model(perturb=False)
    model.set_stage("pretrain")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batch = model.encoder.encode(prompts[:16], images)
    losses = []
    for _ in range(15):
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_exact_and_naive_scores_agree_on_real_candidates(make_model):
    sequences = _sequences()
    images = _half_with_images(sequences)
    catalogue = sorted({i for seq in sequences.values() for i in seq}, key=int)
    rng = np.random.default_rng(1)
    users = list(sequences)[:3]
    candidates = [[sequences[u][-1], *rng.choice([i for i in catalogue if i not in sequences[u]], 49, replace=False)]
                  for u in users]
    model = make_model()
    prompts = [direct_prompt("B-7", u, c, history=sequences[u][:-1]) for u, c in zip(users, candidates, strict=True)]
    batch = model.encoder.encode(prompts, images, with_labels=False)
    exact = score_candidates(model, batch, [ItemTrie.from_items(model.encoder, c) for c in candidates])
    naive = score_naive(model, batch, [model.encoder.target_token_ids(c) for c in candidates])
    for e, n in zip(exact, naive, strict=True):
        assert torch.allclose(e, n, atol=1e-4)
