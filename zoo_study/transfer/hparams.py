"""Picking the best setting per method from a hyper-parameter grid's results (paper appendix A.1-A.3).

A grid is a mapping ``{name: [values, ...]}`` (:mod:`zoo_study.methods.grids`: ``grid_points`` gives its
points; default grids live with each method in the registry). The pipeline's hparam stage runs each
point over a set of pairs and writes the summaries to ``hparams/``; :func:`best_per_method` then picks,
per method, the setting with the best mean ``delta_last`` over (student, teacher) pairs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from zoo_study.transfer.config import REFERENCE_BATCH

__all__ = ["best_per_method", "BEST_SCHEMA"]

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
