"""The report's "Which teacher?" section: how well the pair scores predict a transfer, per method.

For every method with enough finished transfers (analysis.recommend.MIN_TRANSFERS over MIN_STUDENTS
students): the held-out ranking quality against both baselines, predicted vs observed delta of every pair
while its student was held out (a figure), and each student's top-3 teachers by the model fitted on all
transfers. Also a figure of agreement beyond chance (Cohen's kappa) against rho_pos over all scored pairs.
Everything comes from the results root through DuckDB, like the rest of the report.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from analysis.db import ResultsDB
from analysis.recommend import (
    MIN_STUDENTS, MIN_TRANSFERS, SCORE_ONLY_RULE, cross_validate, quality_lines, recommend, training_table,
)

__all__ = ["which_teacher_html"]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _scatter(x, y, xlabel: str, ylabel: str, title: str, diagonal: bool) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    ax.scatter(x, y, s=14, alpha=0.7)
    if diagonal and len(x):
        lo, hi = float(min(np.min(x), np.min(y))), float(max(np.max(x), np.max(y)))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    uri = _png(fig)
    plt.close(fig)
    return uri


def _methods(db: ResultsDB) -> list[str]:
    rows = db.query("SELECT method_key(method, hparams_json) AS m, count(*) AS n FROM paper_transfers "
                    "WHERE study_part = 'transfer' AND mode = 'single' GROUP BY ALL ORDER BY m").to_pylist()
    return [r["m"] for r in rows if r["n"] >= MIN_TRANSFERS]


def _kappa_figure(db: ResultsDB) -> str:
    t = db.query("SELECT rho_pos, kappa FROM pairs WHERE NOT teacher_is_random AND teacher <> student "
                 "AND kappa IS NOT NULL")
    if t.num_rows == 0:
        return ""
    x = 100 * np.asarray(t.column("rho_pos").to_numpy(zero_copy_only=False), float)
    y = np.asarray(t.column("kappa").to_numpy(zero_copy_only=False), float)
    uri = _scatter(x, y, "rho_pos [% of eval samples]", "Cohen's kappa of correctness",
                   "Agreement beyond chance vs complementary knowledge", False)
    return (f'<figure><img data-figure="which_teacher_kappa" alt="kappa vs rho_pos" src="{uri}"><figcaption>Each scored pair: how much the two '
            f"models agree beyond chance on which samples they get right, against the share the teacher gets "
            f"right and the student wrong ({t.num_rows} pairs).</figcaption></figure>")


def which_teacher_html(db: ResultsDB) -> str:
    """The section body (HTML fragment); never raises for missing data, says what is missing instead."""
    parts = [_kappa_figure(db)]
    try:
        methods = _methods(db)
    except Exception as exc:  # no transfers table yet
        methods = []
        parts.append(f"<p>No transfers to learn from yet ({html.escape(type(exc).__name__)}).</p>")
    if not methods:
        parts.append(f"<p>No method has {MIN_TRANSFERS} finished single-teacher transfers over {MIN_STUDENTS} "
                     f"students yet; <code>zoo-study recommend</code> then ranks by the {html.escape(SCORE_ONLY_RULE)}.</p>")
    for method in methods:
        train = training_table(db, method)
        if len(set(train.column("student").to_pylist())) < MIN_STUDENTS:
            continue
        q = cross_validate(train)
        parts.append(f"<h3>{html.escape(method)}</h3><pre>{html.escape(chr(10).join(quality_lines(q)))}</pre>")
        if q.held_out:
            pred = np.array([100 * p for _, _, p, _ in q.held_out])
            obs = np.array([100 * o for _, _, _, o in q.held_out])
            uri = _scatter(pred, obs, "predicted delta [pp] (student held out)", "observed delta [pp]",
                           f"{method}: held-out predictions", True)
            parts.append(f'<figure><img data-figure="which_teacher_{html.escape(method)}" '
                         f'alt="{html.escape(method)} predicted vs observed" src="{uri}"><figcaption>'
                         f"Every finished pair predicted by a model that never saw its student "
                         f"({len(q.held_out)} pairs); the dashed line is perfect prediction.</figcaption></figure>")
        rows = []
        for s in sorted(set(train.column("student").to_pylist())):
            rec = recommend(db, s, method, top=3)
            top3 = ", ".join(f"{r['teacher']} ({r['predicted_delta_pp']:+.2f} pp)" for r in rec.table.to_pylist())
            rows.append(f"<tr><td>{html.escape(s)}</td><td>{html.escape(top3)}</td></tr>")
        parts.append('<table class="data"><thead><tr><th>student</th><th>top-3 teachers (predicted delta)</th>'
                     f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return "\n".join(p for p in parts if p)
