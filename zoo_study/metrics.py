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

Aggregates over transfers (success rate, transfer rate for the top-X% classes) are SQL
(``analysis/queries``); their Python twins live in ``tests/helpers/oracles.py`` as test oracles only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


__all__ = [
    "TransferMetrics",
    "correctness",
    "accuracy",
    "delta_transf",
    "knowledge_gain_loss",
    "rho",
    "transfer_metrics",
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
