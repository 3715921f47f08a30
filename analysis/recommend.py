"""Which teacher? Rank every scored teacher of a student by the transfer delta a method is predicted to give.

Why this shape:
- The inputs are what a study already has for every pair at almost no cost (the pair scores: rho_pos,
  rho_neg, delta_acc, the accuracies, the bias-corrected flip entropy, Cohen's kappa of the two models'
  correctness) and the transfers that finished. A small, well-kept model (scikit-learn's ridge regression
  on standardised features, median-imputed) maps the first to the second, one model per method: with the
  tens to hundreds of transfers a study runs, anything larger would fit noise.
- Its quality is measured the way it is used, on a *new* student: cross-validation leaves whole students
  out. Per held-out student it reports the rank correlation of predicted and observed deltas over that
  student's teachers and whether the observed best teacher is the predicted first (top-1) or among the
  first three (top-3), against two baselines: the score-only rule and "pick the most accurate teacher".
  Means come with 95% t intervals over students, hit rates with Wilson intervals.
- Prediction intervals are split-conformal: the (1 - alpha) quantile of the held-out absolute residuals,
  so they hold for a new student as often as the folds say, whatever the model gets wrong.
- Without enough finished transfers there is nothing to learn from: the ranking then follows the
  documented score-only rule (most positive flips first, rho_pos, ties by teacher accuracy) and says so.

Reads only the results root through DuckDB (pairs, models, transfers), like every analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from analysis.db import ResultsDB
from zoo_study.stats import t_quantile_975, wilson_interval

__all__ = ["FEATURES", "MIN_TRANSFERS", "MIN_STUDENTS", "Quality", "Recommendation", "recommend",
           "cross_validate", "fit", "score_only_order", "student_pairs", "training_table", "quality_lines",
           "render_text"]

FEATURES: tuple[str, ...] = ("rho_pos", "rho_neg", "delta_acc", "acc_t", "acc_s", "entropy_corrected", "kappa")
#: a method needs this many finished transfers over this many students before a model is fitted
MIN_TRANSFERS = 8
MIN_STUDENTS = 3
SCORE_ONLY_RULE = ("score-only rule: teachers with the most complementary knowledge first (rho_pos, the share of "
                   "eval samples the teacher gets right and the student wrong), ties by teacher accuracy")

_PAIRS_SQL = f"""
SELECT teacher, student, {', '.join(FEATURES)}
FROM pairs
WHERE NOT teacher_is_random AND teacher <> student
"""
_TRAIN_SQL = f"""
WITH runs AS (
    SELECT student, teacher, avg(delta_last) AS delta, count(*) AS n_runs
    FROM paper_transfers
    WHERE study_part = 'transfer' AND mode = 'single' AND method_key(method, hparams_json) = $method
    GROUP BY student, teacher
)
SELECT p.teacher, p.student, {', '.join('p.' + f for f in FEATURES)}, r.delta, r.n_runs
FROM runs r JOIN pairs p ON p.teacher = r.teacher AND p.student = r.student AND NOT p.teacher_is_random
ORDER BY p.student, p.teacher
"""


@dataclass
class Metric:
    """A ranking-quality number over held-out students: mean (or rate) with its 95% interval."""

    value: float
    low: float
    high: float
    n: int


@dataclass
class Quality:
    """Held-out ranking quality of the model and of the two baselines (leave-one-student-out)."""

    n_students: int
    n_transfers: int
    rows: dict[str, dict[str, Metric]]  # ranker -> metric name ('spearman', 'top1', 'top3') -> Metric
    conformal_q: float  # half-width of the (1 - alpha) prediction interval, delta units
    alpha: float
    # (student, teacher, predicted, observed) of every held-out pair, delta units
    held_out: list[tuple[str, str, float, float]] = field(default_factory=list)
    # ranker -> held-out student -> (its Spearman r, top-1 hit): for paired comparisons of two models
    by_student: dict[str, dict[str, tuple[float, bool]]] = field(default_factory=dict)


@dataclass
class Recommendation:
    """The ranked teachers of one student for one method, and how the ranking was made."""

    student: str
    method: str
    basis: str  # 'model' or 'score-only'
    table: pa.Table
    quality: Quality | None = None
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ features
def _matrix(table: pa.Table, features: tuple[str, ...] = FEATURES) -> np.ndarray:
    cols = []
    for f in features:
        col = table.column(f).to_numpy(zero_copy_only=False)
        cols.append(np.asarray(col, dtype=np.float64))
    return np.stack(cols, axis=1) if cols else np.zeros((table.num_rows, 0))


def fit(train: pa.Table, features: tuple[str, ...] = FEATURES):
    """The ranking model fitted on every finished transfer of ``train`` (its ``delta`` column)."""
    y = np.asarray(train.column("delta").to_numpy(zero_copy_only=False), dtype=float)
    return _pipeline().fit(_matrix(train, features), y)


def _pipeline():
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(), Ridge(alpha=1.0))


def score_only_order(rho_pos: np.ndarray, acc_t: np.ndarray) -> np.ndarray:
    """Teacher indices in the score-only order: rho_pos descending, then teacher accuracy descending."""
    return np.lexsort((-np.asarray(acc_t, dtype=float), -np.asarray(rho_pos, dtype=float)))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def _metric_mean(values: list[float], bounds: tuple[float, float] = (-1.0, 1.0)) -> Metric:
    """Mean over held-out students with its 95% t interval, clipped to ``bounds`` (what the metric can
    take: a Spearman r lies in [-1, 1], a difference of two in [-2, 2]); a t interval from few students
    would otherwise claim values no ranking can have."""
    xs = [v for v in values if math.isfinite(v)]
    if not xs:
        return Metric(math.nan, math.nan, math.nan, 0)
    m = float(np.mean(xs))
    if len(xs) < 2:
        return Metric(m, math.nan, math.nan, len(xs))
    half = t_quantile_975(len(xs) - 1) * float(np.std(xs, ddof=1)) / math.sqrt(len(xs))
    return Metric(m, max(bounds[0], m - half), min(bounds[1], m + half), len(xs))


def _metric_rate(hits: list[bool]) -> Metric:
    if not hits:
        return Metric(math.nan, math.nan, math.nan, 0)
    k, n = sum(hits), len(hits)
    lo, hi = wilson_interval(k, n)
    return Metric(k / n, lo, hi, n)


# ---------------------------------------------------------------------------------- cross-validation
def cross_validate(train: pa.Table, alpha: float = 0.1, features: tuple[str, ...] = FEATURES,
                   extra: Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]] | None = None) -> Quality:
    """Leave-one-student-out ranking quality of the model and of both baselines, and the conformal width.

    A held-out student counts for ranking when it has at least 2 teachers (top-1 / top-3) and 3 with
    distinct deltas (rank correlation). ``extra(train_rows, test_rows, predicted)`` adds rankers fitted
    in the same fold (the pilot's re-ranking, analysis/recommend_pilot.py): name -> order of the test rows."""
    students = np.asarray(train.column("student").to_pylist())
    teachers = np.asarray(train.column("teacher").to_pylist())
    held_out: list[tuple[str, str, float, float]] = []
    x, y = _matrix(train, features), np.asarray(train.column("delta").to_numpy(zero_copy_only=False), dtype=float)
    acc_t = x[:, features.index("acc_t")]
    rho_pos = x[:, features.index("rho_pos")]
    per: dict[str, dict[str, list]] = {}
    by_student: dict[str, dict[str, tuple[float, bool]]] = {}
    residuals: list[float] = []
    for s in sorted(set(students)):
        test = students == s
        if test.all():
            continue
        model = _pipeline().fit(x[~test], y[~test])
        pred = model.predict(x[test])
        residuals += list(np.abs(pred - y[test]))
        held_out += [(str(s), str(t), float(p), float(o)) for t, p, o in zip(teachers[test], pred, y[test])]
        if test.sum() < 2:
            continue
        orders = {
            "model": np.argsort(-pred, kind="stable"),
            "score-only": score_only_order(rho_pos[test], acc_t[test]),
            "most accurate": np.argsort(-acc_t[test], kind="stable"),
        }
        if extra is not None:
            orders.update(extra(~test, test, pred))
        _tally(per, by_student, str(s), orders, y[test])
    rows = {name: {"spearman": _metric_mean(m["spearman"]), "top1": _metric_rate(m["top1"]),
                   "top3": _metric_rate(m["top3"])} for name, m in per.items()}
    q = _conformal_quantile(np.asarray(residuals), alpha)
    return Quality(len(set(students)), train.num_rows, rows, q, alpha, held_out, by_student)


def _tally(per: dict, by_student: dict, student: str, orders: dict[str, np.ndarray], observed: np.ndarray) -> None:
    """Score each ranker's order of one held-out student's teachers against the observed deltas."""
    best = int(np.argmax(observed))
    for name, order in orders.items():
        ranks = np.empty(len(order))
        ranks[order] = -np.arange(len(order))  # higher = ranked earlier
        m = per.setdefault(name, {"spearman": [], "top1": [], "top3": []})
        m["spearman"].append(_spearman(ranks, observed))
        m["top1"].append(bool(order[0] == best))
        m["top3"].append(bool(best in order[:3]))
        by_student.setdefault(name, {})[student] = (m["spearman"][-1], m["top1"][-1])


def _conformal_quantile(residuals: np.ndarray, alpha: float) -> float:
    """Split-conformal half-width: the ceil((n + 1)(1 - alpha))-th smallest residual (inf if n is too small)."""
    n = residuals.size
    k = math.ceil((n + 1) * (1 - alpha))
    if n == 0 or k > n:
        return math.inf
    return float(np.sort(residuals)[k - 1])


# ------------------------------------------------------------------------------------------ ranking
def _drivers(model, x: np.ndarray, features: tuple[str, ...] = FEATURES) -> list[str]:
    """The two features that moved each prediction most from the average (coefficient x standardised
    value, in pp)."""
    imputer, scaler, ridge = model.named_steps.values()
    z = scaler.transform(imputer.transform(x))
    contrib = z * ridge.coef_[None, :]
    out = []
    for row in contrib:
        top = np.argsort(-np.abs(row))[:2]
        out.append(", ".join(f"{features[j]} {100 * row[j]:+.2f} pp" for j in top))
    return out


def student_pairs(db: ResultsDB, student: str) -> pa.Table:
    """The scored pairs of ``student`` with a trained teacher, with their features, by teacher."""
    return db.query(_PAIRS_SQL + " AND student = $student ORDER BY teacher", {"student": student})


def training_table(db: ResultsDB, method: str) -> pa.Table:
    """Finished single-teacher transfers of ``method`` (runs of a pair averaged) with their pair scores."""
    return db.query(_TRAIN_SQL, {"method": method})


def recommend(db: ResultsDB, student: str, method: str = "kl_dp", top: int | None = 10,
              alpha: float = 0.1) -> Recommendation:
    """Every scored teacher of ``student`` ranked for ``method``; raises ValueError for an unknown student."""
    mine = student_pairs(db, student)
    if mine.num_rows == 0:
        students = [r["student"] for r in db.query(
            "SELECT DISTINCT student FROM pairs WHERE NOT teacher_is_random ORDER BY student LIMIT 21").to_pylist()]
        shown = ", ".join(students[:20]) + (" ..." if len(students) > 20 else "")
        raise ValueError(f"student {student!r} has no scored pairs in this root; scored students: {shown or 'none'}")
    x = _matrix(mine)
    teachers = mine.column("teacher").to_pylist()
    train = training_table(db, method)
    n_students = len(set(train.column("student").to_pylist()))
    rec = Recommendation(student, method, "score-only", mine)
    if train.num_rows < MIN_TRANSFERS or n_students < MIN_STUDENTS:
        order = score_only_order(x[:, FEATURES.index("rho_pos")], x[:, FEATURES.index("acc_t")])
        rec.notes.append(f"{train.num_rows} finished {method} transfer(s) over {n_students} student(s): fewer than "
                         f"{MIN_TRANSFERS} over {MIN_STUDENTS}, so no model is fitted; {SCORE_ONLY_RULE}")
        predicted = lo = hi = np.full(len(teachers), np.nan)
        drivers = ["rho_pos"] * len(teachers)
    else:
        rec.basis = "model"
        rec.quality = cross_validate(train, alpha)
        model = fit(train)
        predicted = model.predict(x)
        q = rec.quality.conformal_q
        lo, hi = predicted - q, predicted + q
        order = np.argsort(-predicted, kind="stable")
        drivers = _drivers(model, x)
        rec.notes.append(f"ridge regression on {train.num_rows} finished {method} transfer(s) over {n_students} "
                         f"student(s); {100 * (1 - alpha):.0f}% split-conformal prediction intervals")
    order = order[: top] if top else order
    rec.table = pa.table({
        "rank": pa.array(np.arange(1, len(order) + 1), pa.int32()),
        "teacher": pa.array([teachers[i] for i in order], pa.string()),
        "predicted_delta_pp": pa.array([100 * predicted[i] for i in order], pa.float64()),
        "pi_low_pp": pa.array([100 * lo[i] for i in order], pa.float64()),
        "pi_high_pp": pa.array([100 * hi[i] for i in order], pa.float64()),
        "acc_t": pa.array([x[i, FEATURES.index("acc_t")] for i in order], pa.float64()),
        "rho_pos": pa.array([x[i, FEATURES.index("rho_pos")] for i in order], pa.float64()),
        "kappa": pa.array([x[i, FEATURES.index("kappa")] for i in order], pa.float64()),
        "drivers": pa.array([drivers[i] for i in order], pa.string()),
    })
    return rec


def _fmt(m: Metric, pct: bool) -> str:
    if not math.isfinite(m.value):
        return "–"
    scale = 100 if pct else 1
    body = f"{scale * m.value:.0f}%" if pct else f"{m.value:+.2f}"
    if math.isfinite(m.low):
        body += f" [{scale * m.low:.0f}, {scale * m.high:.0f}]" if pct else f" [{m.low:+.2f}, {m.high:+.2f}]"
    return body + f" (n={m.n})"


def quality_lines(q: Quality) -> list[str]:
    """The ranking-quality table as text lines (held-out students, 95% intervals)."""
    w = max([15, *(len(name) for name in q.rows)])
    lines = [f"held-out ranking quality (leave one student out: {q.n_students} students, {q.n_transfers} pairs):",
             f"{'ranker':<{w}} {'Spearman r':<26} {'top-1 hit':<24} {'top-3 hit':<24}"]
    for name, m in q.rows.items():
        lines.append(f"{name:<{w}} {_fmt(m['spearman'], False):<26} {_fmt(m['top1'], True):<24} {_fmt(m['top3'], True):<24}")
    return lines


def render_text(rec: Recommendation) -> str:
    """The recommendation as a plain-text table with its notes and, when a model was fitted, its quality."""
    lines = [f"teachers for {rec.student} ({rec.method}; basis: {rec.basis})"]
    lines += [f"  {n}" for n in rec.notes]
    piloted = "pilot_delta_pp" in rec.table.column_names
    lines.append(f"{'#':>3} {'teacher':<28} {'predicted delta [PI]':<28} {'acc_t':>6} {'rho_pos':>8} {'kappa':>6}"
                 + (f" {'pilot':>9}" if piloted else "") + "  drivers")
    for r in rec.table.to_pylist():
        if math.isnan(r["predicted_delta_pp"]):
            pred = "–"
        else:
            pred = f"{r['predicted_delta_pp']:+.2f} pp [{r['pi_low_pp']:+.2f}, {r['pi_high_pp']:+.2f}]"
        kappa = "–" if r["kappa"] is None or math.isnan(r["kappa"]) else f"{r['kappa']:.2f}"
        pilot = ""
        if piloted:
            pilot = " " + (f"{r['pilot_delta_pp']:+.2f} pp" if r["pilot_delta_pp"] is not None else "–").rjust(9)
        lines.append(f"{r['rank']:>3} {r['teacher']:<28} {pred:<28} {100 * r['acc_t']:>5.1f}% "
                     f"{100 * r['rho_pos']:>7.2f}% {kappa:>6}{pilot}  {r['drivers']}")
    if rec.quality is not None:
        lines.append("")
        lines += quality_lines(rec.quality)
    return "\n".join(lines)


def as_dict(rec: Recommendation) -> dict[str, Any]:
    """For tests and JSON output."""
    return {"student": rec.student, "method": rec.method, "basis": rec.basis, "rows": rec.table.to_pylist(),
            "notes": list(rec.notes)}
