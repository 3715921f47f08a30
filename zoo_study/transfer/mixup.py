"""Batch mixing for any transfer objective (METHOD.md section 5, Choi et al.): none, partial, full.

Why a plan drawn once per batch: the teacher, the frozen student and every student of a pack must see
the *same* mixed images, whatever their input geometry. Mixing is affine with weights summing to one,
so mixing each model's preprocessed input (resize, then normalise) equals preprocessing the mixed
picture; the plan (which samples, with which partner, lambda) is applied to each geometry's input.

Partial mixup (PMU) mixes *exactly* ``round(share * B)`` samples of a batch of B, chosen without
replacement. (The reference code draws the mixed indices with replacement, so its nominal 10% mixes
about 41% of a batch of 128 after de-duplication; we do what the name says.) Full mixup (FMU) mixes all.
lambda ~ Beta(alpha, alpha), one value per batch as in Zhang et al.; partners are a random permutation
of the batch. Targets for CE terms are the mixed one-hot labels; objectives that need one hard label
(the DP routing) get the label of the larger component.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MixPlan", "draw_mix_plan", "mixed_count"]


def mixed_count(kind: str, share: float, batch: int) -> int:
    """How many samples of a batch of ``batch`` are mixed: PMU exactly ``round(share * batch)``."""
    if kind == "none":
        return 0
    if kind == "fmu":
        return batch
    if kind == "pmu":
        return min(batch, max(0, int(round(share * batch))))
    raise ValueError(f"mixup={kind!r}; valid: none, pmu, fmu")


@dataclass(frozen=True)
class MixPlan:
    """Which samples are mixed (``mask``), with which partner (``partner``), at which ``lam``."""

    mask: Tensor  # [B] bool
    partner: Tensor  # [B] int64 index into the batch
    lam: float

    def images(self, x: Tensor) -> Tensor:
        """``lam x_i + (1 - lam) x_partner(i)`` for mixed samples, ``x_i`` for the others."""
        mixed = self.lam * x + (1.0 - self.lam) * x[self.partner.to(x.device)]
        m = self.mask.to(x.device).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(m, mixed.to(x.dtype), x)

    def soft_targets(self, labels: Tensor, num_classes: int) -> Tensor:
        """Mixed one-hot targets [B, C] (float32)."""
        one = F.one_hot(labels, num_classes).float()
        mixed = self.lam * one + (1.0 - self.lam) * one[self.partner.to(labels.device)]
        return torch.where(self.mask.to(labels.device).unsqueeze(1), mixed, one)

    def hard_labels(self, labels: Tensor) -> Tensor:
        """The label of the larger component of each (mixed) sample."""
        if self.lam >= 0.5:
            return labels
        return torch.where(self.mask.to(labels.device), labels[self.partner], labels)


def draw_mix_plan(kind: str, share: float, alpha: float, batch: int, rng: np.random.Generator) -> MixPlan | None:
    """The plan of one batch, drawn from ``rng`` (the phase's own mixup stream); None for ``kind="none"``."""
    k = mixed_count(kind, share, batch)
    if k == 0:
        return None
    lam = float(rng.beta(alpha, alpha))
    chosen = rng.choice(batch, size=k, replace=False)
    mask = torch.zeros(batch, dtype=torch.bool)
    mask[torch.from_numpy(chosen)] = True
    partner = torch.from_numpy(rng.permutation(batch).astype(np.int64))
    return MixPlan(mask=mask, partner=partner, lam=lam)
