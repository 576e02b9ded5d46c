"""Named adapter sets in one model, switched in place (peft's `set_adapter`, for every adapter kind).

An adapter set is every tensor stage "adapt" trains (adapters, image mapping, "no image" tokens,
layer norms: the adapter artifact's contents, `model.adapt_state_dict()`). `AdapterSlots` keeps
several named sets for one model; the active set's tensors *are* the model's parameters
(`param.data` points at them), so

    slots.stage("v3", artifact)   checks the artifact against the model and keeps its tensors (one set)
    slots.activate("v3")          points every adapt parameter at slot v3: no copy, no new model
    slots.copy("v2", "candidate") a trainable copy of one set (the trainer's round)
    slots.drop("v2")              frees a set that is not active

Memory: the backbone exists once; each slot held costs one adapter set. Activating never copies.
Not thread-safe: activate between forward passes (the serving loop does it between batches).
"""

from __future__ import annotations

import torch

from .checkpoint import AdapterArtifact, check_adapter


class AdapterSlots:
    def __init__(self, model, active: str):
        self.model = model
        self._params = {n: p for n, p in model.named_parameters() if model.trainable_in("adapt", n)}
        self._slots: dict[str, dict[str, torch.Tensor]] = {active: {n: p.data for n, p in self._params.items()}}
        self.active = active

    def __contains__(self, name: str) -> bool:
        return name in self._slots

    def names(self) -> list[str]:
        return list(self._slots)

    def stage(self, name: str, artifact: AdapterArtifact, *, check_backbone: bool = True) -> None:
        """Keep `artifact`'s tensors as slot `name`, after checking config, keys, shapes and backbone.
        Tensors already on the model's device and dtype are kept as they are (no copy)."""
        if name == self.active:
            raise ValueError(f"slot {name!r} is active; stage a new version under another name")
        check_adapter(self.model, artifact, check_backbone=check_backbone)
        self._slots[name] = {n: artifact.tensors[n].to(p.device, p.dtype) for n, p in self._params.items()}

    def copy(self, source: str, name: str) -> None:
        """Slot `name` := a copy of slot `source` (e.g. to train a candidate next to the current set)."""
        self._slots[name] = {n: t.detach().clone() for n, t in self._slots[source].items()}

    def activate(self, name: str) -> None:
        """Point the model's adapt parameters at slot `name`'s tensors (a pointer change)."""
        slot = self._slots[name]
        with torch.no_grad():
            for n, param in self._params.items():
                param.data = slot[n]
        self.active = name

    def rename(self, old: str, new: str) -> None:
        self._slots[new] = self._slots.pop(old)
        if self.active == old:
            self.active = new

    def drop(self, name: str) -> None:
        if name == self.active:
            raise ValueError(f"slot {name!r} is active; activate another before dropping it")
        self._slots.pop(name, None)

    def keep_only_active(self) -> None:
        for name in [n for n in self._slots if n != self.active]:
            del self._slots[name]

    def set_bytes(self) -> int:
        """Bytes of one adapter set."""
        return sum(t.numel() * t.element_size() for t in self._slots[self.active].values())
