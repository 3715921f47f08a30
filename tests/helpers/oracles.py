"""Python twins of metrics the analysis computes in SQL, kept only as test oracles.

The study's success rates and transfer rates are SQL (analysis/queries/fig4a_success_rate.sql,
fig5a_transfer_rate_topx.sql); these plain-numpy versions state the same definitions a second way so a
test can check the SQL against them on the same data.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from zoo_study.metrics import _bool, _same_length
from zoo_study.scoring import top_x_counts


def success_rate(deltas: Iterable[float]) -> float:
    """Share of a student's teachers whose transfer has delta > 0, over the real number of teachers."""
    d = np.asarray(list(deltas), dtype=np.float64)
    if d.size == 0:
        raise ValueError("success_rate needs at least one delta (one per teacher), got none")
    if np.isnan(d).any():
        raise ValueError(f"success_rate got NaN deltas at positions {np.flatnonzero(np.isnan(d)).tolist()}")
    return float(np.count_nonzero(d > 0)) / d.size


def success_rates(summaries: pa.Table, by: Sequence[str] = ("method", "student")) -> pa.Table:
    """Success rate per group of a transfer summary table (runs of one teacher averaged first).

    Columns: the ``by`` columns, ``n_teachers``, ``n_success``, ``success_rate``.
    """
    need = list(by) + ["teacher", "delta_last"]
    missing = [c for c in need if c not in summaries.column_names]
    if missing:
        raise ValueError(f"summaries lack columns {missing}; need {need}")
    per_teacher: dict[tuple, list[float]] = {}
    for row in summaries.select(need).to_pylist():
        per_teacher.setdefault(tuple(row[c] for c in by) + (row["teacher"],), []).append(row["delta_last"])
    groups: dict[tuple, list[float]] = {}
    for key, vals in per_teacher.items():
        groups.setdefault(key[:-1], []).append(float(np.mean(vals)))
    rows = []
    for key in sorted(groups):
        d = groups[key]
        rows.append({**dict(zip(by, key)), "n_teachers": len(d), "n_success": int(sum(x > 0 for x in d)),
                     "success_rate": success_rate(d)})
    schema = pa.schema([summaries.schema.field(c) for c in by] + [
        pa.field("n_teachers", pa.int64()), pa.field("n_success", pa.int64()), pa.field("success_rate", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


def positive_flip_counts(
    teacher_correct: np.ndarray, student_correct: np.ndarray, labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """c_k: number of positive flips (teacher right, student wrong) per class k, int64 [num_classes]."""
    t = _bool(teacher_correct, "teacher_correct")
    s = _bool(student_correct, "student_correct")
    y = np.asarray(labels, dtype=np.int64)
    _same_length(teacher_correct=t, student_correct=s, labels=y)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    return np.bincount(y[t & ~s], minlength=num_classes).astype(np.int64)


def top_x_classes(pos_flip_counts: np.ndarray, x: float) -> np.ndarray:
    """The teacher's top-X% classes: the smallest prefix of classes, sorted by positive flips descending
    (ties by class id), whose cumulative share of flips is >= X%. Counted exactly on integers, the same
    rule as :func:`zoo_study.scoring.top_x_counts` and the fig5a query. Empty without flips."""
    c = np.asarray(pos_flip_counts)
    if c.ndim != 1 or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"pos_flip_counts must be a 1-D integer array of per-class counts, got {c.dtype} {c.shape}")
    if not (0 < x <= 100):
        raise ValueError(f"x must be a percentage in (0, 100], got {x}")
    if c.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(c.size), -c))  # flips descending, then class id ascending
    if float(x).is_integer():
        m = int(top_x_counts(c[None, :].astype(np.int64), [int(x)])[0, 0])
    else:
        cum = np.cumsum(c[order]) * 100.0
        m = int(np.argmax(cum >= x * c.sum()) + 1)
    return np.sort(order[:m]).astype(np.int64)


def transfer_rate(
    teacher_correct: np.ndarray,
    initial_correct: np.ndarray,
    final_correct: np.ndarray,
    labels: np.ndarray | None = None,
    classes: Iterable[int] | None = None,
) -> float | None:
    """Of the initial positive flips (teacher right, initial student wrong) whose label is in
    ``classes`` (all classes when None), the share the final student gets right. None when there is
    no such flip (a rate of nothing is undefined, not 0)."""
    t = _bool(teacher_correct, "teacher_correct")
    b = _bool(initial_correct, "initial_correct")
    a = _bool(final_correct, "final_correct")
    _same_length(teacher_correct=t, initial_correct=b, final_correct=a)
    mask = t & ~b
    if classes is not None:
        if labels is None:
            raise ValueError("transfer_rate: restricting to classes needs labels")
        y = np.asarray(labels)
        _same_length(teacher_correct=t, labels=y)
        mask &= np.isin(y, np.fromiter(classes, dtype=np.int64))
    n = int(np.count_nonzero(mask))
    if n == 0:
        return None
    return float(np.count_nonzero(a & mask)) / n
