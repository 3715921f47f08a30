"""Hyper-parameter grids (paper appendix A.1-A.3) and picking the best setting per method.

A grid is a mapping ``{name: [values, ...]}``; names are TransferConfig fields (``base_lr`` — alias
``lr`` —, ``temperature``, ``epochs``, ``batch_size``, ``transfer_fraction``, ``weight_decay``,
``momentum``, ``seed``) or the method's own hyper-parameters (``lambda``, ``k``, ``tau``, ``N``, ``beta``,
...). :func:`expand_grid` yields one validated config per grid point (the Cartesian product, in the
grid's key order), with ``study_part='hparam'``; the pipeline runs each over a set of pairs and writes
the summaries to ``hparams/``. :func:`best_per_method` then picks, per method, the setting with the best
mean ``delta_last`` over (student, teacher) pairs.

Default grids live with each method in the registry (:mod:`zoo_study.methods.builtin`);
:func:`default_grids` collects them.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from zoo_study.methods.grids import GRID_CONFIG_KEYS, canonical_key as _canonical_key, grid_points
from zoo_study.methods.registry import default_grid, methods
from zoo_study.transfer.config import REFERENCE_BATCH, TransferConfig

__all__ = ["default_grids", "GRID_CONFIG_KEYS", "grid_points", "expand_grid", "expand_grids", "best_per_method", "best_configs",
           "BEST_SCHEMA"]

def default_grids() -> dict[str, dict[str, list]]:
    """``{method: grid}`` of every registered method that has a default grid."""
    return {m.name: default_grid(m.name) for m in methods() if m.grid}


def expand_grid(base: TransferConfig | Mapping[str, Any] | str, grid: Mapping[str, Sequence[Any]],
                *, study_part: str = "hparam") -> list[TransferConfig]:
    """One config per point of ``grid`` (Cartesian product in key order), on top of ``base`` (a config,
    its dict, or just a method name for the defaults).

    Raises on an empty value list, repeated values (they would give duplicate jobs), a key given
    twice through an alias, or any value the config rejects (the error names the value).
    """
    if isinstance(base, str):
        base_cfg = TransferConfig(method=base)
    else:
        base_cfg = base if isinstance(base, TransferConfig) else TransferConfig.from_dict(base)
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"a grid must be a non-empty mapping name -> list of values, got {grid!r}")
    keys: list[str] = []
    values: list[list[Any]] = []
    for raw_key, vals in grid.items():
        key = _canonical_key(raw_key)
        if key in keys:
            raise ValueError(f"grid key {raw_key!r} is given twice (as {key!r})")
        if key in ("method", "mode", "hparams", "study_part", "job_id"):
            raise ValueError(f"grid key {raw_key!r} cannot be varied; valid: {', '.join(GRID_CONFIG_KEYS)} or the "
                             f"method's hyper-parameters ({', '.join(sorted(base_cfg.method_spec.params)) or 'none'})")
        if key not in GRID_CONFIG_KEYS and key not in base_cfg.method_spec.params:
            raise ValueError(f"grid key {raw_key!r} is neither a config field ({', '.join(GRID_CONFIG_KEYS)}) nor a "
                             f"hyper-parameter of method {base_cfg.method!r} "
                             f"({', '.join(sorted(base_cfg.method_spec.params)) or 'none'})")
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or len(vals) == 0:
            raise ValueError(f"grid key {raw_key!r} needs a non-empty list of values, got {vals!r}")
        seen = [json.dumps(v, sort_keys=True) for v in vals]
        if len(set(seen)) != len(seen):
            raise ValueError(f"grid key {raw_key!r} repeats values: {list(vals)}")
        keys.append(key)
        values.append(list(vals))
    out = []
    base_dict = base_cfg.to_dict()
    for point in itertools.product(*values):
        d = dict(base_dict)
        hp = dict(base_cfg.hparams)
        for k, v in zip(keys, point):
            if k in GRID_CONFIG_KEYS:
                d[k] = v
            else:
                hp[k] = v
        d["hparams"] = hp
        d["study_part"] = study_part
        out.append(TransferConfig.from_dict(d))
    return out


def expand_grids(base: TransferConfig | Mapping[str, Any], grids: Mapping[str, Mapping[str, Sequence[Any]]],
                 *, study_part: str = "hparam") -> list[TransferConfig]:
    """Grids of several methods: ``{method: grid}``; each on ``base`` with its method swapped in."""
    base_cfg = base if isinstance(base, TransferConfig) else TransferConfig.from_dict(base)
    out: list[TransferConfig] = []
    for method, grid in grids.items():
        # a new method starts from its own defaults (hparams, lr, T), the shared settings stay
        b = base_cfg if method == base_cfg.method else base_cfg.replace(method=method)
        out.extend(expand_grid(b, grid, study_part=study_part))
    return out


BEST_SCHEMA = pa.schema([
    pa.field("method", pa.string(), nullable=False),
    pa.field("hparams_json", pa.string(), nullable=False),
    pa.field("lr", pa.float64(), nullable=False),  # as used
    pa.field("base_lr", pa.float64(), nullable=False),  # lr * 256 / batch_size
    pa.field("temperature", pa.float64(), nullable=False),
    pa.field("batch_size", pa.int32(), nullable=False),
    pa.field("epochs", pa.int32(), nullable=False),
    pa.field("n_pairs", pa.int64(), nullable=False),
    pa.field("n_runs", pa.int64(), nullable=False),
    pa.field("mean_delta_last", pa.float64(), nullable=False),
    pa.field("success_rate", pa.float64(), nullable=False),  # share of pairs with mean delta > 0
    pa.field("n_settings", pa.int64(), nullable=False),  # settings of the method that competed
])

_SETTING = ("hparams_json", "lr", "temperature", "batch_size", "epochs")


def best_per_method(summaries: pa.Table, *, require_all_pairs: bool = True) -> pa.Table:
    """Per method, the setting (hparams_json, lr, temperature, batch, epochs) with the best mean
    ``delta_last`` over (student, teacher) pairs; several runs of one pair are averaged first.

    With ``require_all_pairs`` only settings that completed as many pairs as the method's most complete
    setting compete, so a setting whose failed (diverged) runs left fewer pairs cannot win on a friendlier
    subset. Ties go to the setting that sorts first by (hparams_json, lr, temperature, ...).
    """
    need = ["method", "student", "teacher", "delta_last", *_SETTING]
    missing = [c for c in need if c not in summaries.column_names]
    if missing:
        raise ValueError(f"summaries lack columns {missing}; need {need} (TRANSFER_SUMMARY_SCHEMA)")
    runs: dict[tuple, dict[tuple, list[float]]] = {}
    for r in summaries.select(need).to_pylist():
        setting = (r["method"],) + tuple(r[c] for c in _SETTING)
        runs.setdefault(setting, {}).setdefault((r["student"], r["teacher"]), []).append(float(r["delta_last"]))
    by_method: dict[str, list[dict]] = {}
    for setting, pairs in runs.items():
        pair_means = np.asarray([np.mean(v) for v in pairs.values()])
        by_method.setdefault(setting[0], []).append({
            "method": setting[0], **dict(zip(_SETTING, setting[1:])),
            "n_pairs": len(pairs), "n_runs": sum(len(v) for v in pairs.values()),
            "mean_delta_last": float(pair_means.mean()), "success_rate": float(np.mean(pair_means > 0)),
        })
    rows = []
    for method in sorted(by_method):
        cands = by_method[method]
        if require_all_pairs:
            most = max(c["n_pairs"] for c in cands)
            cands = [c for c in cands if c["n_pairs"] == most]
        cands.sort(key=lambda c: tuple(c[k] for k in _SETTING))
        best = max(cands, key=lambda c: c["mean_delta_last"])  # first maximum after the sort
        rows.append({**best, "base_lr": best["lr"] * REFERENCE_BATCH / best["batch_size"], "n_settings": len(cands)})
    return pa.Table.from_pylist(rows, schema=BEST_SCHEMA)


def best_configs(best: pa.Table, base: TransferConfig | Mapping[str, Any]) -> dict[str, TransferConfig]:
    """Configs for the winners of :func:`best_per_method`, on top of ``base`` (study_part transfer)."""
    base_dict = (base if isinstance(base, TransferConfig) else TransferConfig.from_dict(base)).to_dict()
    out = {}
    for r in best.to_pylist():
        out[r["method"]] = TransferConfig.from_dict({
            **base_dict, "method": r["method"], "hparams": json.loads(r["hparams_json"]),
            "base_lr": r["base_lr"], "temperature": r["temperature"], "batch_size": r["batch_size"],
            "epochs": r["epochs"], "study_part": None,
        })
    return out
