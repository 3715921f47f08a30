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



def paper_success_rate(method: str) -> str | None:
    """Paper (Roth et al. 2024), ImageNet 10 %, 400 pairs: share of teachers with a positive transfer
    (kept with each method in the registry)."""
    from zoo_study.methods import get_method, method_names

    return get_method(method).paper_success_rate if method in method_names() else None


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


OPTIMISTIC = "optimistic (best epoch chosen on the eval split)"


def _ok(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def with_ci(mean: Any, lo: Any, hi: Any, digits: int = 2, signed: bool = True) -> str:
    """'mean [lo, hi]' (a 95% interval); '[no CI]' when the interval is undefined (one unit)."""
    if not _ok(mean):
        return "–"
    f = (lambda v: f"{v:+.{digits}f}") if signed else (lambda v: f"{v:.{digits}f}")
    ci = f"[{f(lo)}, {f(hi)}]" if _ok(lo) and _ok(hi) else "[no CI]"
    return f"{f(mean)} {ci}"


def delta_cell(mean: Any, lo: Any, hi: Any, std: Any = None, n: Any = None, n_sig: Any = None, seeds: Any = None) -> str:
    """A per-student (or per-method) delta: 'mean [95% CI] (±std) n=4, 2 sig., 3 seeds'."""
    if not _ok(mean):
        return "–"
    out = with_ci(mean, lo, hi)
    if std is not None or n is not None:
        out += " (±–)" if not _ok(std) else f" (±{std:.2f})"
    extra = []
    if n:
        extra.append(f"n={n}")
    if n_sig is not None:
        extra.append(f"{n_sig} sig.")
    if seeds and seeds > 1:
        extra.append(f"{seeds} seeds")
    return out + (" " + ", ".join(extra) if extra else "")


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
    label = name.replace("_", " ") + unit
    if "delta_best" in name:
        label += f", {OPTIMISTIC}"
    return label


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
    heads = ["student", "family", "Δ KL-Dist [pp], mean [95% CI] (±std)", "Δ KL+DP [pp], mean [95% CI] (±std)"]
    rows = [
        [r["student"], r["family"],
         delta_cell(r["kl_mean_pp"], r.get("kl_ci_low_pp"), r.get("kl_ci_high_pp"), r["kl_std_pp"], r["kl_n"] or None,
                    r.get("kl_n_sig"), r.get("kl_seeds")),
         delta_cell(r["kl_dp_mean_pp"], r.get("kl_dp_ci_low_pp"), r.get("kl_dp_ci_high_pp"), r["kl_dp_std_pp"],
                    r["kl_dp_n"] or None, r.get("kl_dp_n_sig"), r.get("kl_dp_seeds"))]
        for r in t.to_pylist()
    ]  # fmt: skip
    return heads, rows


def _pct_ci(value: Any, lo: Any, hi: Any) -> str:
    return with_ci(value, lo, hi, digits=1, signed=False)


def present_tab2(t: pa.Table) -> Presented:
    heads = [
        "method", "students", "pairs", "runs per pair (max)", "success Δ > 0, mean over students [%]", "median [%]",
        "success Δ > 0, pooled [%] [95% CI]", "significant Δ > 0, pooled [%] [95% CI]",
        "significant Δ > 0, mean over students [%]", "significantly harmed [%]", "paper success rate",
        "Δ last [pp], mean [95% CI over pairs] (±std)", f"Δ best [pp], {OPTIMISTIC}", "gain [%]", "loss [%]",
        "routed to teacher [%]", "sd across seeds [pp]",
    ]  # fmt: skip
    rs = sorted(t.to_pylist(), key=lambda r: method_sort_key(r["method"]))
    rows = [
        [method_label(r["method"]), num(r["n_students"]), num(r["n_pairs"]), num(r.get("max_seeds")),
         num(r["success_rate_mean_pct"], 1), num(r["success_rate_median_pct"], 1),
         _pct_ci(r["success_rate_pooled_pct"], r.get("success_rate_pooled_ci_low_pct"), r.get("success_rate_pooled_ci_high_pct")),
         _pct_ci(r.get("sig_success_rate_pooled_pct"), r.get("sig_success_rate_pooled_ci_low_pct"),
                 r.get("sig_success_rate_pooled_ci_high_pct")),
         num(r.get("sig_success_rate_mean_pct"), 1), num(r.get("harmed_pooled_pct"), 1),
         paper_success_rate(r["method"]) or "–",
         delta_cell(r["mean_delta_last_pp"], r.get("mean_delta_last_ci_low_pp"), r.get("mean_delta_last_ci_high_pp"),
                    r["std_delta_last_pp"]),
         num(r["mean_delta_best_pp"], 2, signed=True), num(r["mean_gain_pct"]), num(r["mean_loss_pct"]),
         num(r["mean_teacher_share_pct"], 1),
         num(r.get("mean_seed_sd_pp")) + (f" ({r['n_pairs_multi_seed']} pairs)" if r.get("n_pairs_multi_seed") else "")]
        for r in rs
    ]  # fmt: skip
    return heads, rows


def present_tab3(t: pa.Table) -> Presented:
    heads = [
        "student", "family", "Δ unsupervised KL+DP [pp], mean [95% CI] (±std)",
        "routed to teacher, unsupervised [%]: all / positive flips / negative flips",
        "Δ supervised KL+DP [pp], mean [95% CI]", "routed to teacher, supervised [%]: all / positive / negative",
    ]  # fmt: skip

    def routing(all_: Any, pos: Any, neg: Any) -> str:
        return " / ".join(num(v, 1) for v in (all_, pos, neg))

    rows = [
        [r["student"], r["family"],
         delta_cell(r["unsup_mean_pp"], r.get("unsup_ci_low_pp"), r.get("unsup_ci_high_pp"), r["unsup_std_pp"],
                    r["unsup_n"], r.get("unsup_n_sig")),
         routing(r["unsup_teacher_share_pct"], r.get("unsup_share_pos_pct"), r.get("unsup_share_neg_pct")),
         with_ci(r["sup_mean_pp"], r.get("sup_ci_low_pp"), r.get("sup_ci_high_pp")),
         routing(r["sup_teacher_share_pct"], r.get("sup_share_pos_pct"), r.get("sup_share_neg_pct"))]
        for r in t.to_pylist()
    ]  # fmt: skip
    return heads, rows


def present_tab4(t: pa.Table) -> Presented:
    heads = [
        "student", "method", "teachers", "single teachers [pp]: mean [95% CI] / min / max [95% CI]",
        "sequential [pp] [95% CI]", "parallel [pp] [95% CI]", "soup [pp] [95% CI]", "sequential beats best single",
    ]  # fmt: skip
    rows = []
    for r in t.to_pylist():
        single = "–" if not r["n_single"] else (
            f"{with_ci(r['single_mean_pp'], r.get('single_mean_ci_low_pp'), r.get('single_mean_ci_high_pp'))} / "
            f"{r['single_min_pp']:+.2f} / "
            f"{with_ci(r['single_max_pp'], r.get('single_max_ci_low_pp'), r.get('single_max_ci_high_pp'))} "
            f"(n={r['n_single']}{', ' + r['single_source'] + ' runs' if r.get('single_source') else ''})"
        )
        cells = [with_ci(r[f"{k}_pp"], r.get(f"{k}_ci_low_pp"), r.get(f"{k}_ci_high_pp"))
                 + (f" ({r[f'n_{k}']} runs)" if (r.get(f"n_{k}") or 0) > 1 else "")
                 for k in ("sequential", "parallel", "soup")]
        rows.append([r["student"], method_label(r["method"]), r["teachers"], single, *cells, num(r["beats_best_single"])])
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
        "Mean transfer delta of each student over its teachers with its 95% interval (t over teachers; one "
        "teacher: its run's paired score interval), ± the sample std, the number of teachers and how many of "
        "them are significantly positive (McNemar p < 0.05). Plain KL distillation often hurts; KL+DP should "
        "be positive for every student with a small spread.",
        ("transfers",), "no single-teacher transfers with method 'kl' or 'kl_dp' yet", present_tab1,
    ),
    TableSpec(
        "tab2", "Tab 2 — per-method summary", "tab2_method_summary",
        "Success rate two ways: the share of pairs with a positive delta (the paper's; mean and median over "
        "students, and pooled over all pairs with a 95% Wilson interval) and the share whose delta is "
        "significantly > 0 (exact McNemar p < 0.05), next to the paper's ImageNet-10% numbers; significantly "
        "harmed = significantly < 0. Then the mean delta with its 95% t interval over pairs, the best-epoch "
        "delta (optimistic: that epoch is chosen on the eval split), gain, loss, the share of training "
        "samples routed to the teacher, and for repeated seeds their spread.",
        ("transfers",), "no single-teacher transfers yet: run the transfer stage", present_tab2,
    ),
    TableSpec(
        "tab3", "Tab 3 — unsupervised KL+DP", "tab3_unsupervised",
        "KL+DP without labels (each sample goes to whichever model is more confident) per student, next to "
        "supervised KL+DP, each mean with its 95% interval over teachers, and the share of transfer samples "
        "routed to the teacher: all, positive flips (paper: 72%) and negative flips (paper: 9%).",
        ("transfers",),
        "no unsupervised KL+DP runs (kl_dp_unsup, or kl_dp with hparams \"unsupervised\": true) yet",
        present_tab3,
    ),
    TableSpec(
        "tab4", "Tab 4 — multi-teacher transfer", "tab4_multi_teacher",
        "For each student and teacher set: the single-teacher deltas of those teachers (mean / min / max), "
        "then sequential, parallel and soup transfer from all of them, each with its 95% interval (one run: "
        "its paired score interval; several: t over runs). Sequential should beat the best single teacher; "
        "soup is expected to be worst; the Claims section tests both with intervals.",
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
        "tab_mixup", "Mixup KD — objectives, batch mixing and student initialisation", "tab_mixup_kd",
        "Per objective (Std-KD: standardised logits, temperature-free; KL at its T), batch mixing (none, PMU "
        "with the share of each batch mixed, FMU), student initialisation and epochs: accuracy after transfer "
        "with its 95% t interval over runs (teachers x seeds) and the delta. vs none: the effect of mixing, "
        "paired per seed with the unmixed run that differs only in mixing, its mean and 95% t interval over "
        "the pairs. A scratch student starts from the untrained architecture, so its delta measures "
        "learning, not transfer without forgetting; compare accuracies within one initialisation. Choi et "
        "al.'s claims about mixing during distillation are tested only by scratch students trained to "
        "convergence (pipelines/configs/mixup_kd.toml); short runs of pretrained students are outside their "
        "regime.",
        ("transfers",), "no mixup, scratch-student or Std-KD transfers: set transfer.mixup / student_init or "
        "add std_kd to transfer.methods", present_by_method,
    ),
    TableSpec(
        "tab_amtml", "AMTML-KD — which teacher each class listens to", "tab_amtml_teacher_weights",
        "Per AMTML-KD run and teacher: the learned per-instance teacher weight averaged per class of the "
        "transfer set, then over classes (mean, range), and how many classes give that teacher the largest "
        "weight. An even split means the adaptive weighting learned no preference.",
        ("teacher_weights", "transfers"), "no AMTML-KD runs: add amtml_kd to multi_teacher.parallel_methods",
        generic,
    ),
    TableSpec(
        "tab_robustness", "Robustness — FGSM and I-FGSM accuracy, feature V-measure", "tab_robustness",
        "Per student: the zoo model before transfer, then each transfer setting's last student. Accuracy on "
        "clean inputs and under FGSM and I-FGSM attacks of budget eps (in 1/255 pixel steps; the attack acts "
        "on the model's input after resizing), and the V-measure of k-means clusters of penultimate "
        "features vs labels (1 = clusters are the classes).",
        ("robustness",), "no robustness rows: enable the robustness stage ([robustness] enabled = true)",
        generic,
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
