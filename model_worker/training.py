"""The one training loop every caller shares: the optimizer recipe, the step, the schedule.

In:  a VIP5 model (its trainable parameters), batches (a prompt `EncodedBatch` or item-token rows;
     `VIP5Model.loss` takes either), a learning rate per step.
Out: updated parameters, the step's loss.

Offline training (`offline/train.py`: checkpoints, resume, time budgets, validation) and online
adapter rounds (`tuning.py`: the trainer and the demo) both call `make_optimizer` and
`train_step`; `lr_factor` is the warmup-then-decay schedule by steps or time, whichever is further.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, total_steps: int, elapsed_s: float, budget_s: float, warmup_fraction: float) -> float:
    """Linear warmup over the first `warmup_fraction` of the stage, then linear decay to 0.
    Progress is the further along of steps and time, so a stage cut short by its time budget
    still warms up over its first few percent and ends at a small learning rate."""
    time_progress = elapsed_s / budget_s if math.isfinite(budget_s) else 0.0
    progress = min(1.0, max((step + 1) / max(total_steps, 1), time_progress))
    if warmup_fraction > 0 and progress < warmup_fraction:
        return progress / warmup_fraction
    return max(0.0, (1.0 - progress) / (1.0 - warmup_fraction))


def make_optimizer(model, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with weight decay on weight matrices only (nanoGPT's recipe): norms, biases, gains and
    embeddings (item tokens, whole-word and modality embeddings, T5's shared vocabulary and
    relative position buckets) are not pulled towards zero."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        embedding = "embedding" in name or "shared" in name or "relative_attention_bias" in name
        (decay if param.dim() >= 2 and not embedding else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.98))


def train_step(model, optimizer, batch, *, lr: float, grad_clip: float) -> float:
    """One optimizer step on `batch` (a prompt Batch or item-token rows): the step every training
    path shares (offline stages, online adapter rounds)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model.loss(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.step()
    return float(loss.detach())
