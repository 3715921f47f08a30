"""Stratified subsets of a split (the paper's seeded 10% transfer set)."""

from __future__ import annotations

import numpy as np


def stratified_indices(
    labels: np.ndarray,
    *,
    fraction: float | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices of a class-stratified random subset, sorted ascending.

    Exactly one of ``fraction`` (share of each class, rounded to the nearest integer, at least one
    sample of every non-empty class) or ``per_class`` (n samples of every class) is given. Each class
    is shuffled with its own generator seeded from ``(seed, class)``, so the subset of one class does not
    change when other classes change, and numpy's PCG64 keeps it identical across runs and machines.
    """
    labels = np.asarray(labels)
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction= or per_class=")
    if fraction is not None and not (0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer))
                                  or per_class < 1):
        raise ValueError(f"per_class must be an integer >= 1, got {per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")  # numpy seeds are non-negative
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-d array, got shape {labels.shape}")
    chosen: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if fraction is not None:
            take = max(1, int(np.floor(len(members) * fraction + 0.5)))
        else:
            if per_class > len(members):
                raise ValueError(
                    f"per_class={per_class} but class {int(cls)} has only {len(members)} samples; "
                    f"use per_class <= {len(members)} or fraction="
                )
            take = per_class
        rng = np.random.default_rng([int(seed), int(cls)])
        chosen.append(members[rng.permutation(len(members))[:take]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
