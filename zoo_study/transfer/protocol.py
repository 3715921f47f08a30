"""Protocol scaling: a study that runs fewer optimiser steps than the paper keeps the paper's *ratios*.

Why: the paper's settings are tuned for about 10,000 steps (20 epochs over ImageNet 10% at batch 256).
A short study that keeps the raw values changes what the methods do. MCL is the sharp case: its slow
weights move by (1 - tau) of the way towards the fast weights at every interpolation, so over I
interpolations the kept model takes a share 1 - tau^I of the fast trajectory. The paper's tau = 0.9999 over
its 5,070 interpolations gives 39.8%; over the 57 interpolations of a 115-step study it gives 0.57%, and MCL
becomes a no-op (or, with a raised lr, a collapse). Scaling tau so that tau'^I = tau^I_paper keeps the
share: tau' = tau^(I_paper / I). And no method's lr may leave the grid the paper searched: an lr outside
it is a regime the paper never ran, so a verdict from it would be decided by the budget, not by the data.

This module imports no torch: the planner validates lr ranges with it, the MCL hook calls ``scaled_tau``.
"""

from __future__ import annotations

import math
from typing import Iterable

__all__ = ["PAPER_EPOCHS", "PAPER_STEPS_PER_EPOCH", "PAPER_MCL_EVERY", "PAPER_INTERPOLATIONS", "slow_share",
           "scaled_tau", "check_lr_in_grid"]

PAPER_EPOCHS = 20
# ImageNet 10% as the paper draws it: 130 images of each of 1,000 classes, batches of 256 -> 507 full steps
PAPER_STEPS_PER_EPOCH = 130_000 // 256
PAPER_MCL_EVERY = 2  # N: one interpolation every 2 optimiser steps (the paper's best)
PAPER_INTERPOLATIONS = PAPER_EPOCHS * PAPER_STEPS_PER_EPOCH // PAPER_MCL_EVERY  # 5,070


def slow_share(tau: float, interpolations: int) -> float:
    """Share of the fast trajectory the slow model takes over ``interpolations`` steps: 1 - tau^I."""
    return 1.0 - tau ** max(0, int(interpolations))


def scaled_tau(tau: float, interpolations: int, paper_interpolations: int = PAPER_INTERPOLATIONS) -> float:
    """tau' with tau'^I = tau^I_paper: the slow model takes the paper's share over this run's I interpolations.

    A run with as many interpolations as the paper keeps tau; fewer give a smaller tau' (0.9999 over 57
    interpolations -> 0.99114). tau = 0 or 1 stay as they are (no averaging / a frozen slow model)."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"MCL tau must be in [0, 1], got {tau}")
    if interpolations < 1:
        raise ValueError(f"MCL interpolations must be >= 1, got {interpolations}")
    if tau in (0.0, 1.0):
        return tau
    return math.exp(math.log(tau) * paper_interpolations / interpolations)


def check_lr_in_grid(method: str, base_lr: float, grid: Iterable[float]) -> None:
    """Raise when ``base_lr`` (per batch 256) lies outside [min, max] of the method's paper grid."""
    values = [float(v) for v in grid]
    if not values:
        return
    lo, hi = min(values), max(values)
    if not lo * (1 - 1e-9) <= base_lr <= hi * (1 + 1e-9):
        raise ValueError(f"method {method!r}: lr {base_lr:g} (batch 256) is outside the paper's grid "
                         f"[{lo:g}, {hi:g}]; lower transfer.lr_scale or give more steps instead "
                         f"(protocol = 'paper_ratios' keeps every lr inside its grid)")
