"""Grid axes shared by every method (torch-free): which names a grid may vary and their aliases.

A grid is ``{name: [values, ...]}``; names are TransferConfig fields (``base_lr`` — alias ``lr`` —,
``temperature`` — alias ``T`` —, ``epochs``, ``batch_size``, ...) or the method's own hyper-parameters.
The registry checks each method's default grid against these at registration, so a typo in a grid is
an import-time error, not a failed job.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Mapping, Sequence

__all__ = ["GRID_CONFIG_KEYS", "ALIASES", "canonical_key", "check_grid_keys", "grid_points"]

GRID_CONFIG_KEYS = ("base_lr", "temperature", "epochs", "batch_size", "transfer_fraction", "weight_decay",
                    "momentum", "seed", "student_mode")
ALIASES = {"lr": "base_lr", "T": "temperature"}


def canonical_key(key: str) -> str:
    return ALIASES.get(key, key)


def check_grid_keys(method: str, grid: Mapping[str, Sequence[Any]], params: Mapping[str, Any]) -> None:
    """Every key is a config field or one of the method's parameters, every axis a non-empty list."""
    for key, values in grid.items():
        k = canonical_key(key)
        if k not in GRID_CONFIG_KEYS and k not in params:
            raise ValueError(f"method {method!r}: grid key {key!r} is neither a config field "
                             f"({', '.join(GRID_CONFIG_KEYS)}) nor one of its hyper-parameters "
                             f"({', '.join(sorted(params)) or 'none'})")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"method {method!r}: grid key {key!r} needs a non-empty list of values, got {values!r}")


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The points of a grid as plain dicts (Cartesian product in key order), checked for empty or
    repeated value lists; names are not interpreted (``TransferConfig(hparams=point)`` accepts method
    parameters and ``lr`` / ``temperature`` alike)."""
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"a grid must be a non-empty mapping name -> list of values, got {grid!r}")
    for key, vals in grid.items():
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or len(vals) == 0:
            raise ValueError(f"grid key {key!r} needs a non-empty list of values, got {vals!r}")
        seen = [json.dumps(v, sort_keys=True) for v in vals]
        if len(set(seen)) != len(seen):
            raise ValueError(f"grid key {key!r} repeats values: {list(vals)}")
    keys = list(grid)
    return [dict(zip(keys, point)) for point in itertools.product(*(list(grid[k]) for k in keys))]
