"""The paper's tables as HTML, each from one named query in ``analysis/queries``.

Why presenters: the query returns plain numeric columns (easy to re-use, export and test); a presenter
only arranges them the way the paper prints them ("0.65 (±0.26)", method names, reference numbers).
Every number shown comes from the query row it sits in.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pyarrow as pa

from analysis.db import ResultsDB
from analysis.figures import Rendered, Section, method_label, method_sort_key, missing_message

Cell = str
Presented = tuple[list[str], list[list[Cell]]]  # headers, rows of already-formatted cells

# Paper (Roth et al. 2024), ImageNet 10 %, 400 pairs: share of teachers with a positive transfer.
PAPER_SUCCESS_RATE = {"kl": "~32.5%", "xe_kl": "~40%", "xe_kl_ls": "~54%", "xe_kl_mcl": "~80%", "kl_dp": "92.5%"}


# --------------------------------------------------------------------------------------- formatting
def num(value: Any, digits: int = 2, signed: bool = False) -> str:
    """A number for a table cell; '–' for NULL/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def mean_std(mean: Any, std: Any, n: Any = None) -> str:
    """Paper style 'mean (±std)', with the number of teachers when given."""
    if mean is None:
        return "–"
    s = f"{mean:+.2f}"
    s += " (±–)" if std is None else f" (±{std:.2f})"
    if n is not None:
        s += f" [n={n}]"
    return s


def mean_range(mean: Any, lo: Any, hi: Any) -> str:
    if mean is None:
        return "–"
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def pretty_header(name: str) -> str:
    """Column name to a header: units from the suffix (_pp = percentage points, _pct = %)."""
    unit = ""
    if name.endswith("_pp"):
        name, unit = name[:-3], " [pp]"
    elif name.endswith("_pct"):
        name, unit = name[:-4], " [%]"
    return name.replace("_", " ") + unit


def generic(table: pa.Table, drop: Sequence[str] = (), by_method: bool = False) -> Presented:
    """Every column, numbers with 2 decimals, methods by their paper names.

    ``by_method`` re-orders rows so methods follow the paper's order (a stable sort: the query's order
    is kept within a method).
    """
    names = [n for n in table.column_names if n not in drop]
    records = table.to_pylist()
    if by_method and "method" in table.column_names:
        records.sort(key=lambda r: method_sort_key(r["method"]))
    out = []
    for r in records:
        row = []
        for n in names:
            v = r[n]
            if n == "method" and isinstance(v, str):
                row.append(method_label(v))
            elif isinstance(v, (int, float)) or v is None:
                row.append(num(v, 2, signed=n.startswith(("delta", "mean_delta", "min_delta", "max_delta"))))
            else:
                row.append(str(v))
        out.append(row)
    return [pretty_header(n) for n in names], out


# --------------------------------------------------------------------------------------- presenters
def present_tab1(t: pa.Table) -> Presented:
    heads = ["student", "family", "Δ KL-Dist [pp], mean (±std)", "Δ KL+DP [pp], mean (±std)"]
    rows = [
        [r["student"], r["family"], mean_std(r["kl_mean_pp"], r["kl_std_pp"], r["kl_n"] or None),
         mean_std(r["kl_dp_mean_pp"], r["kl_dp_std_pp"], r["kl_dp_n"] or None)]
        for r in t.to_pylist()
    ]  # fmt: skip
    return heads, rows


def present_tab2(t: pa.Table) -> Presented:
    heads = [
        "method", "students", "pairs", "success rate, mean over students [%]", "median [%]", "pooled [%]",
        "paper success rate", "Δ last [pp], mean (±std)", "Δ best [pp]", "gain [%]", "loss [%]", "routed to teacher [%]",
    ]  # fmt: skip
    rs = sorted(t.to_pylist(), key=lambda r: method_sort_key(r["method"]))
    rows = [
        [method_label(r["method"]), num(r["n_students"]), num(r["n_pairs"]), num(r["success_rate_mean_pct"], 1),
         num(r["success_rate_median_pct"], 1), num(r["success_rate_pooled_pct"], 1),
         PAPER_SUCCESS_RATE.get(r["method"], "–"), mean_std(r["mean_delta_last_pp"], r["std_delta_last_pp"]),
         num(r["mean_delta_best_pp"], 2, signed=True), num(r["mean_gain_pct"]), num(r["mean_loss_pct"]),
         num(r["mean_teacher_share_pct"], 1)]
        for r in rs
    ]  # fmt: skip
    return heads, rows


def present_tab3(t: pa.Table) -> Presented:
    heads = [
        "student", "family", "Δ unsupervised KL+DP [pp], mean (±std)", "routed to teacher, unsupervised [%]",
        "Δ supervised KL+DP [pp], mean", "routed to teacher, supervised [%]",
    ]  # fmt: skip
    rows = [
        [r["student"], r["family"], mean_std(r["unsup_mean_pp"], r["unsup_std_pp"], r["unsup_n"]),
         num(r["unsup_teacher_share_pct"], 1), num(r["sup_mean_pp"], 2, signed=True), num(r["sup_teacher_share_pct"], 1)]
        for r in t.to_pylist()
    ]  # fmt: skip
    return heads, rows


def present_tab4(t: pa.Table) -> Presented:
    heads = [
        "student", "method", "teachers", "single: mean / min / max [pp]", "sequential [pp]", "parallel [pp]",
        "soup [pp]", "sequential beats best single",
    ]  # fmt: skip
    rows = []
    for r in t.to_pylist():
        single = "–" if not r["n_single"] else (
            f"{r['single_mean_pp']:+.2f} / {r['single_min_pp']:+.2f} / {r['single_max_pp']:+.2f} (n={r['n_single']})"
        )
        rows.append(
            [r["student"], method_label(r["method"]), r["teachers"], single, num(r["sequential_pp"], 2, True),
             num(r["parallel_pp"], 2, True), num(r["soup_pp"], 2, True), num(r["beats_best_single"])]
        )  # fmt: skip
    return heads, rows


def present_tab7(t: pa.Table) -> Presented:
    heads = [
        "method", "student", "teachers", "ρ+ before [%]", "Δρ+ [pp], mean [min, max]", "ρ− before [%]",
        "Δρ− [pp], mean [min, max]",
    ]  # fmt: skip
    rs = sorted(t.to_pylist(), key=lambda r: (method_sort_key(r["method"]), r["student"]))
    rows = [
        [method_label(r["method"]), r["student"], num(r["n_teachers"]), num(r["rho_pos_before_pct"]),
         mean_range(r["delta_rho_pos_pp"], r["delta_rho_pos_min_pp"], r["delta_rho_pos_max_pp"]),
         num(r["rho_neg_before_pct"]),
         mean_range(r["delta_rho_neg_pp"], r["delta_rho_neg_min_pp"], r["delta_rho_neg_max_pp"])]
        for r in rs
    ]  # fmt: skip
    return heads, rows


def present_tab9(t: pa.Table) -> Presented:
    return generic(t)


def present_by_method(t: pa.Table) -> Presented:
    return generic(t, by_method=True)


@dataclass(frozen=True)
class TableSpec(Section):
    present: Callable[[pa.Table], Presented] = field(default=generic, repr=False)


TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        "tab1", "Tab 1 — KL-Dist vs KL+DP per student", "tab1_kl_vs_kldp",
        "Mean transfer delta of each student over its teachers (± sample std over teachers). Plain KL "
        "distillation often hurts; KL+DP should be positive for every student with a small spread.",
        ("transfers",), "no single-teacher transfers with method 'kl' or 'kl_dp' yet", present_tab1,
    ),
    TableSpec(
        "tab2", "Tab 2 — per-method summary", "tab2_method_summary",
        "Success rate = share of a student's teachers with a positive delta (mean and median over students, "
        "and pooled over all pairs), next to the paper's ImageNet-10% numbers; then the mean delta, gain, "
        "loss and the share of training samples the method routed to the teacher.",
        ("transfers",), "no single-teacher transfers yet: run the transfer stage", present_tab2,
    ),
    TableSpec(
        "tab3", "Tab 3 — unsupervised KL+DP", "tab3_unsupervised",
        "KL+DP without labels (each sample goes to whichever model is more confident) per student, next to "
        "supervised KL+DP, with the share of transfer samples routed to the teacher. The paper also splits "
        "routing by positive/negative flips; that split is not recorded in the results store.",
        ("transfers",),
        "no unsupervised KL+DP runs (a method containing 'unsup', or hparams \"unsupervised\": true) yet",
        present_tab3,
    ),
    TableSpec(
        "tab4", "Tab 4 — multi-teacher transfer", "tab4_multi_teacher",
        "For each student and teacher set: the single-teacher deltas of those teachers (mean / min / max), "
        "then sequential, parallel and soup transfer from all of them. Sequential should beat the best "
        "single teacher; soup is expected to be worst.",
        ("transfers",), "no multi-teacher runs (study_part 'multi_teacher') yet: run the multi-teacher stage",
        present_tab4,
    ),
    TableSpec(
        "tab7", "Tab 7 — change in complementarity after transfer", "tab7_rho_deltas",
        "Δρ+ < 0: the student now gets right samples only the teacher knew (knowledge absorbed). Δρ− near 0: "
        "it kept the samples it knew better than the teacher (nothing forgotten).",
        ("transfers",), "no single-teacher transfer recorded rho_pos/rho_neg before and after", present_tab7,
    ),
    TableSpec(
        "tab8", "Tab 8 — transfer by architecture family", "tab8_family_summary",
        "Per method, student family and teacher family: how many pairs, the share with a positive delta, and "
        "the mean / min / max delta. Shows whether some families absorb knowledge more easily.",
        ("transfers", "models"), "no single-teacher transfers yet: run the transfer stage", present_by_method,
    ),
    TableSpec(
        "tab9", "Tab 9 — multi-teacher runs in detail", "tab9_multi_teacher_runs",
        "Every multi-teacher run with its mode and teacher order; for sequential runs, the delta reached "
        "after each teacher's stage, in order.",
        ("transfers",), "no multi-teacher runs yet: run the multi-teacher stage", present_tab9,
    ),
    TableSpec(
        "tab_hparams", "Hyper-parameter grid", "tab_hparam_grid",
        "Each row is one setting of a method's grid search, aggregated over the pairs it was tried on; rank 1 "
        "is the setting with the best mean delta within its method.",
        ("hparams",), "no hyper-parameter grid rows yet", present_by_method,
    ),
)  # fmt: skip
TABLES_BY_KEY = {t.key: t for t in TABLES}


# ---------------------------------------------------------------------------------------------- HTML
def table_html(heads: Sequence[str], rows: Sequence[Sequence[Cell]], css_class: str = "data") -> str:
    """An escaped HTML table; numeric-looking cells are right-aligned by CSS class."""
    out = [f'<table class="{css_class}">', "<thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in heads]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        for cell in row:
            cls = ' class="n"' if _looks_numeric(cell) else ""
            out.append(f"<td{cls}>{html.escape(str(cell))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _looks_numeric(cell: str) -> bool:
    c = str(cell).strip()
    return bool(c) and (c[0].isdigit() or c[0] in "+-–" or c.startswith("~")) and not c.startswith("-->")


@dataclass
class RenderedTable(Rendered):
    html: str | None = None


def render_table(db: ResultsDB, spec: TableSpec, counts: dict[str, int] | None = None) -> RenderedTable:
    """Run the table's query and present it as HTML; never raises for missing data or a failing query."""
    counts = db.counts() if counts is None else counts
    try:
        table = db.named(spec.query)
    except Exception as exc:
        return RenderedTable(spec, error=f"query {spec.query} failed: {exc}")
    if table.num_rows == 0:
        return RenderedTable(spec, table=table, message=missing_message(spec, counts))
    try:
        heads, rows = spec.present(table)
    except Exception as exc:
        return RenderedTable(spec, table=table, error=f"presenting {spec.key} failed: {type(exc).__name__}: {exc}")
    return RenderedTable(spec, table=table, html=table_html(heads, rows))


def render_all(db: ResultsDB, keys: Sequence[str] | None = None) -> list[RenderedTable]:
    counts = db.counts()
    specs = TABLES if keys is None else [TABLES_BY_KEY[k] for k in keys]
    return [render_table(db, s, counts) for s in specs]
