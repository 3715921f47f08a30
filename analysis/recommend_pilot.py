"""Which teacher, after a pilot? Re-rank a student's first k teachers with short pilot transfers, and
measure on the held-out students whether that helps and at what compute.

Why this shape:
- A pilot (pipelines/pilot.py: the study's transfer, shortened to about STEPS steps) is run for the k
  teachers the score-based model ranks first, and for every pair with a finished transfer of the method
  (the training set: a model that reads pilot features must learn from pairs whose pilot *and* full
  outcome are known).
- The pilot model is the same ridge regression with the pilot's early delta, gain and loss as three
  more features. For the student it re-orders the first k teachers by its prediction; the rest keep the
  score-based order (they had no pilot).
- Its value is measured as it is used, leaving whole students out: in each fold the score-based model
  ranks the held-out student's teachers, the pilot model re-orders the first k (``model + pilot``), and
  both are scored against the observed deltas, with the paired per-student difference and its 95%
  t interval; ``pilot delta`` ranks by the pilot's early delta alone. The compute is the pilots'
  steps and seconds, against the full transfers of the same pairs.
- With too few piloted transfers to fit a model, the k teachers are re-ordered by the pilot's early
  delta (the documented fallback) and no comparison is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analysis.db import ResultsDB
from analysis.recommend import (FEATURES, MIN_STUDENTS, MIN_TRANSFERS, Metric, Quality, Recommendation,
                                _conformal_quantile, _drivers, _matrix, _metric_mean, _pipeline, cross_validate, fit,
                                recommend, student_pairs, training_table)

__all__ = ["PILOT_FEATURES", "PilotOutcome", "candidates", "rerank", "cross_validate_pilot", "pilot_lines"]

PILOT_FEATURES: tuple[str, ...] = FEATURES + ("pilot_delta", "pilot_gain", "pilot_loss")

_FULL_SQL = """
SELECT teacher, student, avg(runtime_s) AS runtime_s,
       avg(epochs * CASE WHEN n_train > batch_size THEN n_train // batch_size ELSE 1 END) AS steps
FROM paper_transfers
WHERE study_part = 'transfer' AND mode = 'single' AND method_key(method, hparams_json) = $method
GROUP BY teacher, student
"""


@dataclass
class PilotOutcome:
    """The re-ranked recommendation, the held-out comparison (None without enough piloted transfers),
    and the compute the pilots took."""

    rec: Recommendation
    quality: Quality | None
    top_k: int
    compute: dict[str, float] = field(default_factory=dict)
    # model + pilot minus each ranker it is compared with ('model', 'score-only', 'most accurate'), paired
    # over held-out students: (Spearman r gain, top-1 gain); empty without a held-out comparison.
    # Why the baselines too: the score-based model may itself trail them, so a gain over it alone can
    # overstate what the pilot buys against the rule a user would otherwise follow.
    gains: dict[str, tuple[Metric, Metric]] = field(default_factory=dict)

    @property
    def spearman_gain(self) -> Metric | None:
        """Model + pilot minus model: Spearman r."""
        return self.gains["model"][0] if "model" in self.gains else None

    @property
    def top1_gain(self) -> Metric | None:
        """Model + pilot minus model: top-1 hit."""
        return self.gains["model"][1] if "model" in self.gains else None

    @property
    def baseline_gains(self) -> dict[str, tuple[Metric, Metric]]:
        """The gains over the baselines (every compared ranker but the model)."""
        return {k: v for k, v in self.gains.items() if k != "model"}


def candidates(db: ResultsDB, student: str, method: str, top_k: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(the student's first top_k teachers, the pairs with a finished transfer)`` as (teacher, student):
    the pairs a pilot runs for. Raises ValueError for an unknown student (like :func:`recommend`)."""
    base = recommend(db, student, method, top=top_k)
    first = [(t, student) for t in base.table.column("teacher").to_pylist()]
    train = training_table(db, method)
    finished = list(zip(train.column("teacher").to_pylist(), train.column("student").to_pylist()))
    return first, finished


def _join(table: pa.Table, pilots: pa.Table) -> pa.Table:
    """``table`` rows that have a pilot, with the pilot's columns."""
    cols = pilots.select(["teacher", "student", "pilot_delta", "pilot_gain", "pilot_loss"])
    return table.join(cols, keys=["teacher", "student"], join_type="inner").sort_by(
        [("student", "ascending"), ("teacher", "ascending")])


def cross_validate_pilot(train: pa.Table, top_k: int, alpha: float = 0.1) -> tuple[Quality, float]:
    """Leave-one-student-out quality of the score-based model, of it with its first ``top_k`` re-ordered by
    the pilot model (fitted in the same fold), of the pilot model alone and of the pilot's early delta;
    and the conformal half-width of the pilot model's predictions. ``train`` has the pilot columns."""
    x1 = _matrix(train, PILOT_FEATURES)
    y = np.asarray(train.column("delta").to_numpy(zero_copy_only=False), dtype=float)
    residuals: list[float] = []

    def pilot_orders(fit_rows: np.ndarray, test: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
        pilot_pred = _pipeline().fit(x1[fit_rows], y[fit_rows]).predict(x1[test])
        base = np.argsort(-pred, kind="stable")
        head = base[:top_k]
        head = head[np.argsort(-pilot_pred[head], kind="stable")]
        residuals.extend(np.abs(pilot_pred[base[:top_k]] - y[test][base[:top_k]]))
        early = x1[test][:, PILOT_FEATURES.index("pilot_delta")]
        return {f"model + pilot (top {top_k})": np.concatenate([head, base[top_k:]]),
                "pilot model (all)": np.argsort(-pilot_pred, kind="stable"),
                "pilot delta": np.argsort(-early, kind="stable")}

    quality = cross_validate(train, alpha, FEATURES, extra=pilot_orders)
    return quality, _conformal_quantile(np.asarray(residuals), alpha)


def _paired_gain(q: Quality, a: str, b: str, index: int) -> Metric:
    """Mean over held-out students of ranker ``a``'s Spearman r (index 0) or top-1 hit (1) minus ``b``'s."""
    diffs = [float(q.by_student[a][s][index]) - float(q.by_student[b][s][index])
             for s in q.by_student.get(a, {}) if s in q.by_student.get(b, {})]
    # a difference of two Spearman r lies in [-2, 2], of two top-1 hits (0 or 1) in [-1, 1]
    return _metric_mean([d for d in diffs if math.isfinite(d)], (-2.0, 2.0) if index == 0 else (-1.0, 1.0))


def _compute(db: ResultsDB, method: str, pilots: pa.Table, first: list[tuple[str, str]]) -> dict[str, float]:
    """Steps and seconds of the pilots, of the k pilots of one new student, and of the full transfers of
    the piloted pairs."""
    full = {(r["teacher"], r["student"]): r for r in db.query(_FULL_SQL, {"method": method}).to_pylist()}
    rows = pilots.to_pylist()
    both = [(r, full[(r["teacher"], r["student"])]) for r in rows if (r["teacher"], r["student"]) in full]
    mine = [r for r in rows if (r["teacher"], r["student"]) in set(first)]
    return {
        "pilots": len(rows), "steps_per_pilot": float(np.median([r["steps"] for r in rows])) if rows else math.nan,
        "pilot_s": float(sum(r["runtime_s"] for r in rows)),
        "student_s": float(sum(r["runtime_s"] for r in mine)), "student_pilots": len(mine),
        "matched": len(both),
        "matched_pilot_s": float(sum(p["runtime_s"] for p, _ in both)),
        "matched_full_s": float(sum(f["runtime_s"] for _, f in both)),
        "full_steps": float(np.median([f["steps"] for _, f in both])) if both else math.nan,
    }


def rerank(db: ResultsDB, student: str, method: str, pilots: pa.Table, top_k: int = 3, top: int | None = 10,
           alpha: float = 0.1) -> PilotOutcome:
    """The student's teachers with the first ``top_k`` re-ordered by their pilots (``pilots``: one row per
    piloted pair, pipelines/pilot.py's columns), and the held-out comparison with and without pilots."""
    base = recommend(db, student, method, top=None, alpha=alpha)
    rows = base.table.to_pylist()
    first = [(r["teacher"], student) for r in rows[:top_k]]
    mine = {p["teacher"]: p for p in pilots.to_pylist() if p["student"] == student}
    train = _join(training_table(db, method), pilots)
    n_students = len(set(train.column("student").to_pylist()))
    quality = None
    gains: dict[str, tuple[Metric, Metric]] = {}
    head = rows[:top_k]
    if base.basis == "model" and train.num_rows >= MIN_TRANSFERS and n_students >= MIN_STUDENTS:
        quality, q = cross_validate_pilot(train, top_k, alpha)
        name = f"model + pilot (top {top_k})"
        gains = {b: (_paired_gain(quality, name, b, 0), _paired_gain(quality, name, b, 1))
                 for b in ("model", "score-only", "most accurate")}
        model = fit(train, PILOT_FEATURES)
        pairs = student_pairs(db, student)
        piloted = _join(pairs.filter(pc.is_in(pairs.column("teacher"), value_set=pa.array([t for t, _ in first]))),
                        pilots)
        x = _matrix(piloted, PILOT_FEATURES)
        pred = dict(zip(piloted.column("teacher").to_pylist(), model.predict(x)))
        why = dict(zip(piloted.column("teacher").to_pylist(), _drivers(model, x, PILOT_FEATURES)))
        for r in head:
            if r["teacher"] in pred:
                p = 100 * pred[r["teacher"]]
                r.update(predicted_delta_pp=p, pi_low_pp=p - 100 * q, pi_high_pp=p + 100 * q, drivers=why[r["teacher"]])
        head.sort(key=lambda r: -r["predicted_delta_pp"] if r["teacher"] in pred else math.inf)
        base.notes.append(f"re-ranked: the first {top_k} teachers ran a pilot; ridge regression on the pair scores "
                          f"and the pilots' early delta, gain and loss over {train.num_rows} piloted finished "
                          f"transfer(s) of {n_students} student(s)")
    else:
        head.sort(key=lambda r: -mine[r["teacher"]]["pilot_delta"] if r["teacher"] in mine else math.inf)
        base.notes.append(f"re-ranked by the pilot's early delta (only {train.num_rows} piloted finished transfer(s) "
                          f"over {n_students} student(s): too few to fit a model with pilot features)")
    rows = head + rows[top_k:]
    for i, r in enumerate(rows):
        r["rank"] = i + 1
        r["pilot_delta_pp"] = 100 * mine[r["teacher"]]["pilot_delta"] if r["teacher"] in mine else None
    rows = rows[:top] if top else rows
    schema = base.table.schema.append(pa.field("pilot_delta_pp", pa.float64()))
    base.table = pa.Table.from_pylist(rows, schema=schema)
    base.quality = quality if quality is not None else base.quality
    return PilotOutcome(base, quality, top_k, _compute(db, method, pilots, first), gains)


def pilot_lines(out: PilotOutcome) -> list[str]:
    """Does the pilot help, and at what compute: the comparison and the compute as text lines."""
    c = out.compute
    lines = [f"pilot compute: {c['pilots']} pilot(s) of ~{c['steps_per_pilot']:.0f} step(s), {c['pilot_s']:.1f} s "
             f"in all; this student's {c['student_pilots']}: {c['student_s']:.1f} s"]
    if c["matched"]:
        share = c["matched_pilot_s"] / c["matched_full_s"] if c["matched_full_s"] > 0 else math.nan
        steps = c["steps_per_pilot"] / c["full_steps"] if c["full_steps"] > 0 else math.nan
        lines.append(f"  the {c['matched']} piloted pair(s) with a full transfer: ~{c['steps_per_pilot']:.0f} vs "
                     f"~{c['full_steps']:.0f} steps each ({100 * steps:.1f}% of their steps); {c['matched_pilot_s']:.1f} s vs "
                     f"{c['matched_full_s']:.1f} s ({100 * share:.1f}% of their compute; seconds compare only when both "
                     "ran on one machine under one load, and full transfers may have run in packs)")
    if out.quality is None:
        lines.append("  no held-out comparison: too few piloted finished transfers")
        return lines
    k_steps = out.top_k * c["steps_per_pilot"]  # what one new student's pilots cost
    full = k_steps / c["full_steps"] if c["full_steps"] > 0 else math.nan  # in full transfers' steps
    lines.append(f"  a new student's {out.top_k} pilots: ~{k_steps:.0f} steps"
                 + (f" = {full:.2f} full transfer(s) of steps" if math.isfinite(full) else ""))
    metrics = (("Spearman r", 1.0, ""), ("top-1 hit", 100.0, " pp"))
    for (label, scale, unit), g in zip(metrics, (out.spearman_gain, out.top1_gain)):
        if g is None or not math.isfinite(g.value):
            continue
        per = (f"{scale * g.value / full:+.2f}{unit} per full transfer's steps of pilots" if math.isfinite(full) and full > 0
               else f"{scale * g.value / (k_steps / 1000):+.3f}{unit} per 1,000 pilot steps")
        lines.append(f"  pilot effect on {label} (model + pilot (top {out.top_k}) minus model, paired over {g.n} held-out "
                     f"students): {_signed(g, scale, unit)}; {per}")
    for baseline, gains in out.baseline_gains.items():
        parts = [f"{label} {_signed(g, scale, unit)} (n={g.n})"
                 for (label, scale, unit), g in zip(metrics, gains) if math.isfinite(g.value)]
        if parts:
            lines.append(f"  model + pilot (top {out.top_k}) minus {baseline}, paired: " + "; ".join(parts))
    return lines


def _signed(g: Metric, scale: float, unit: str) -> str:
    """``+v unit [+low, +high]`` (the interval only where one exists)."""
    ci = f" [{scale * g.low:+.2f}, {scale * g.high:+.2f}]" if math.isfinite(g.low) else ""
    return f"{scale * g.value:+.2f}{unit}{ci}"
