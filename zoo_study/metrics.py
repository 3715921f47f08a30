"""Transfer metrics (METHOD.md section 4), all measured on the evaluation split.

Inputs are per-sample arrays over the same eval samples in the same order: labels, predictions or
boolean correctness of the teacher, of the student before transfer and of the student after it.

- ``delta_transf`` = acc(after) - acc(before).
- knowledge gain = share of samples the initial student got wrong and the final student gets right;
  knowledge loss = share it got right and now gets wrong. On counts ``n_after - n_before = n_gain -
  n_loss`` exactly, so :func:`transfer_metrics` defines ``delta = gain - loss`` (the float subtraction of
  the two shares) and ``gain - loss == delta`` holds bit for bit; it equals ``acc_after - acc_before`` up to
  float rounding.
- ``rho_pos`` / ``rho_neg`` of the teacher against the student before and after; their change says
  whether the teacher's complementary knowledge was absorbed (delta_rho_pos < 0) without losing the
  student's own (delta_rho_neg near 0).
- success rate of a student = share of its teachers with delta > 0, over the real number of teachers
  (the reference code divides by a hard-coded 20).
- transfer rate for the teacher's top-X% classes (Fig 5a): of the initial positive flips (teacher right,
  student wrong) whose label is in those classes, the share the final student gets right.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from zoo_study.scoring import top_x_counts

__all__ = [
    "TransferMetrics",
    "correctness",
    "accuracy",
    "delta_transf",
    "knowledge_gain_loss",
    "rho",
    "transfer_metrics",
    "success_rate",
    "success_rates",
    "positive_flip_counts",
    "top_x_classes",
    "transfer_rate",
]


def _bool(a: np.ndarray | Sequence[bool], name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one entry per eval sample), got shape {arr.shape}")
    if arr.dtype != np.bool_:
        raise ValueError(f"{name} must be boolean correctness, got dtype {arr.dtype}; use correctness(pred, labels)")
    return arr


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {k: int(v.shape[0]) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"per-sample arrays must have the same length, got {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("per-sample arrays are empty: no eval samples")
    return n


def correctness(pred: np.ndarray | Sequence[int], labels: np.ndarray | Sequence[int]) -> np.ndarray:
    """Boolean ``pred == labels`` per sample, with a length check."""
    p, y = np.asarray(pred), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"pred and labels must be 1-D of equal length, got {p.shape} and {y.shape}")
    return p == y


def accuracy(correct: np.ndarray) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    c = _bool(correct, "correct")
    _same_length(correct=c)
    return float(np.count_nonzero(c)) / c.size


def delta_transf(correct_before: np.ndarray, correct_after: np.ndarray) -> float:
    """acc(after) - acc(before), computed as gain - loss (see the module docstring)."""
    gain, loss = knowledge_gain_loss(correct_before, correct_after)
    return gain - loss


def knowledge_gain_loss(correct_before: np.ndarray, correct_after: np.ndarray) -> tuple[float, float]:
    """(gain, loss): shares of eval samples wrong -> right and right -> wrong."""
    b = _bool(correct_before, "correct_before")
    a = _bool(correct_after, "correct_after")
    n = _same_length(correct_before=b, correct_after=a)
    return float(np.count_nonzero(a & ~b)) / n, float(np.count_nonzero(b & ~a)) / n


def rho(teacher_correct: np.ndarray, student_correct: np.ndarray) -> tuple[float, float]:
    """(rho_pos, rho_neg) of a teacher w.r.t. a student: shares of positive / negative flips."""
    t = _bool(teacher_correct, "teacher_correct")
    s = _bool(student_correct, "student_correct")
    n = _same_length(teacher_correct=t, student_correct=s)
    return float(np.count_nonzero(t & ~s)) / n, float(np.count_nonzero(s & ~t)) / n


@dataclass(frozen=True)
class TransferMetrics:
    """Everything section 4 reports for one (student before, student after[, teacher]) triple."""

    n: int
    acc_before: float
    acc_after: float
    delta: float  # == gain - loss exactly
    gain: float
    loss: float
    rho_pos_before: float | None = None
    rho_pos_after: float | None = None
    rho_neg_before: float | None = None
    rho_neg_after: float | None = None

    @property
    def delta_rho_pos(self) -> float | None:
        """Should be < 0: the teacher's complementary knowledge has been absorbed."""
        if self.rho_pos_after is None or self.rho_pos_before is None:
            return None
        return self.rho_pos_after - self.rho_pos_before

    @property
    def delta_rho_neg(self) -> float | None:
        """Should stay near 0: the student kept what the teacher did not know."""
        if self.rho_neg_after is None or self.rho_neg_before is None:
            return None
        return self.rho_neg_after - self.rho_neg_before

    def as_dict(self) -> dict:
        d = asdict(self)
        d["delta_rho_pos"] = self.delta_rho_pos
        d["delta_rho_neg"] = self.delta_rho_neg
        return d


def transfer_metrics(
    correct_before: np.ndarray,
    correct_after: np.ndarray,
    teacher_correct: np.ndarray | None = None,
) -> TransferMetrics:
    """All transfer metrics from per-sample correctness; rho fields are None without a teacher."""
    b = _bool(correct_before, "correct_before")
    a = _bool(correct_after, "correct_after")
    n = _same_length(correct_before=b, correct_after=a)
    gain, loss = knowledge_gain_loss(b, a)
    kw: dict = {}
    if teacher_correct is not None:
        t = _bool(teacher_correct, "teacher_correct")
        _same_length(correct_before=b, teacher_correct=t)
        kw["rho_pos_before"], kw["rho_neg_before"] = rho(t, b)
        kw["rho_pos_after"], kw["rho_neg_after"] = rho(t, a)
    return TransferMetrics(
        n=n,
        acc_before=float(np.count_nonzero(b)) / n,
        acc_after=float(np.count_nonzero(a)) / n,
        delta=gain - loss,
        gain=gain,
        loss=loss,
        **kw,
    )


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
