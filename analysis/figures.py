"""The paper's figures, each drawn from one named query in ``analysis/queries``.

Why this shape: a figure is (query, drawing). The query holds every number (and is what people read and
re-run with ``zoo-study sql``); the drawing only places those numbers on axes, so a figure never re-runs
a model and its CSV next to the PNG is exactly the query result. Drawing uses ``matplotlib.figure.Figure``
with the Agg canvas directly (no pyplot): no global state, no display needed, safe in any process.

A figure renders with whatever data exists. With no rows it returns a plain message naming what is
missing and which stage writes it, instead of an empty plot.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from analysis.db import VIEWS, ResultsDB
from zoo_study.methods import method_label, method_names, method_sort_key  # labels and order: the registry

# ------------------------------------------------------------------------------------ names, colours
FAMILY_COLORS = {"cnn": "#1f77b4", "transformer": "#ff7f0e", "mlp": "#2ca02c"}
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def method_color(method: str) -> str:
    """A colour per method that is the same in every figure (registry order; unknown names by hash)."""
    order, _ = method_sort_key(method)
    if method in method_names():
        return _PALETTE[order % len(_PALETTE)]
    return _PALETTE[zlib.crc32(method.encode()) % len(_PALETTE)]


def family_color(family: str) -> str:
    return FAMILY_COLORS.get(family, "#7f7f7f")


# ------------------------------------------------------------------------------------------ helpers
def column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


def floats(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64, with NULL as NaN."""
    return np.array([np.nan if v is None else float(v) for v in column(table, name)], dtype=float)


def rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def methods_in(table: pa.Table) -> list[str]:
    return sorted(set(column(table, "method")), key=method_sort_key)


def _new_figure(width: float = 6.4, height: float = 4.4) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure (Agg), without timestamps in the metadata so rebuilds are byte-stable."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


# -------------------------------------------------------------------------------------------- figures
def draw_fig1a(t: pa.Table) -> Figure:
    fig = _new_figure()
    ax = fig.add_subplot()
    rand = np.array(column(t, "teacher_is_random"), dtype=bool)
    x, y = floats(t, "delta_acc_pp"), floats(t, "rho_pos_pct")
    ax.scatter(x[~rand], y[~rand], s=22, alpha=0.8, color="#1f77b4", label="trained teacher")
    if rand.any():
        ax.scatter(x[rand], y[rand], s=40, marker="x", color="#d62728", label="noise floor (random teacher)")
        ax.axhline(float(np.nanmax(y[rand])), color="#d62728", lw=0.8, ls=":", label="noise-floor level")
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel("performance difference Δacc = acc(teacher) − acc(student) [pp]")
    ax.set_ylabel("complementary knowledge ρ+ [% of samples]")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Complementary knowledge vs performance ({int((~rand).sum())} pairs)")
    ax.legend(fontsize=8)
    return fig


def draw_fig1b(t: pa.Table) -> Figure:
    fig = _new_figure()
    ax = fig.add_subplot()
    rand = np.array(column(t, "teacher_is_random"), dtype=bool)
    x, y, c = floats(t, "rho_pos_pct"), floats(t, "entropy"), floats(t, "delta_acc_pp")
    lim = float(np.nanmax(np.abs(c))) if len(c) else 1.0
    sc = ax.scatter(x[~rand], y[~rand], c=c[~rand], cmap="coolwarm", vmin=-lim, vmax=lim, s=24, edgecolor="0.3", lw=0.3)
    if rand.any():
        ax.scatter(x[rand], y[rand], marker="x", color="black", s=36, label="random teacher")
    fig.colorbar(sc, ax=ax, label="Δacc (teacher − student) [pp]")
    uniform = float(np.nanmax(floats(t, "entropy_uniform")))
    ax.axhline(uniform, color="0.4", ls="--", lw=0.8, label=f"uniform over classes (ln C = {uniform:.2f})")
    ax.set_xlabel("complementary knowledge ρ+ [% of samples]")
    ax.set_ylabel("entropy of positive flips over classes [nats]")
    ax.set_title("Concentration of complementary knowledge")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def draw_fig2a(t: pa.Table) -> Figure:
    by_role: dict[str, list[dict]] = {}
    for r in rows(t):
        by_role.setdefault(r["role"], []).append(r)
    roles = sorted(by_role, key=lambda k: by_role[k][0]["role_order"])
    fig = _new_figure(4.0 * len(roles), 3.8)
    axes = fig.subplots(1, len(roles), sharey=True, squeeze=False)[0]
    for ax, role in zip(axes, roles):
        rs = sorted(by_role[role], key=lambda r: r["rank"])
        head = rs[0]
        color = _PALETTE[head["role_order"] % len(_PALETTE)]
        ax.bar([r["rank"] for r in rs], [r["pos_flips"] for r in rs], width=1.0, color=color)
        ent = "n/a" if head["entropy"] is None else f"{head['entropy']:.2f}"
        title = f"{role} teacher: {head['teacher']}\nΔacc {head['delta_acc_pp']:+.1f} pp, entropy {ent}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("classes, sorted by positive flips")
    axes[0].set_ylabel("positive flips per class")
    fig.suptitle(f"Per-class positive flips into student {by_role[roles[0]][0]['student']}")
    return fig


def draw_fig4a(t: pa.Table) -> Figure:
    """Two success rates per method side by side: Δ > 0 (the paper's) and Δ significantly > 0."""
    methods = methods_in(t)
    kinds = (
        ("success_rate_pct", "Δ > 0", 0.35),
        ("sig_success_rate_pct", "Δ significantly > 0 (McNemar p < 0.05)", 0.95),
    )
    fig = _new_figure(max(6.0, 1.6 * len(methods) + 2), 4.6)
    ax = fig.add_subplot()
    pos = np.arange(1, len(methods) + 1)
    for k, (col, label, alpha) in enumerate(kinds):
        offset = -0.19 + 0.38 * k
        data = [[r[col] for r in rows(t) if r["method"] == m and r[col] is not None] for m in methods]
        bp = ax.boxplot([d if d else [np.nan] for d in data], positions=pos + offset, widths=0.3, showmeans=True,
                        patch_artist=True, manage_ticks=False)
        for box, m in zip(bp["boxes"], methods):
            box.set_facecolor(method_color(m))
            box.set_alpha(alpha)
        for p, m, vals in zip(pos, methods, data):
            v = np.asarray(vals, dtype=float)
            jitter = np.linspace(-0.06, 0.06, len(v)) if len(v) > 1 else np.zeros(len(v))
            ax.scatter(p + offset + jitter, v, s=12, color=method_color(m), alpha=alpha, zorder=3,
                       edgecolor="0.2", lw=0.3)
        ax.bar([np.nan], [np.nan], color="0.5", alpha=alpha, label=label)  # legend entry
    for p, m in zip(pos, methods):
        n = sum(1 for r in rows(t) if r["method"] == m)
        harmed = [r.get("harmed_pct") for r in rows(t) if r["method"] == m and r.get("harmed_pct") is not None]
        note = f"n={n}" + (f", harmed {np.mean(harmed):.0f}%" if harmed else "")
        ax.annotate(note, (p, -3), ha="center", va="top", fontsize=7, color="0.3")
    ax.set_xticks(pos, [method_label(m) for m in methods], rotation=20, ha="right")
    ax.set_ylim(-12, 105)
    ax.set_ylabel("success rate [% of a student's teachers]")
    ax.set_title("Transfer success rate per method (one point per student)")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def draw_fig4b(t: pa.Table) -> Figure:
    fig = _new_figure()
    ax = fig.add_subplot()
    ms = methods_in(t)
    spans = floats(t, "bin_hi_pp") - floats(t, "bin_lo_pp")
    width = 0.25 * (float(np.nanmax(spans)) if len(spans) and np.isfinite(spans).any() else 1.0)
    for i, m in enumerate(ms):
        rs = sorted((r for r in rows(t) if r["method"] == m), key=lambda r: r["bin"])
        shift = (i - (len(ms) - 1) / 2) * width / max(1, len(ms))  # keep error bars of methods apart
        x = np.array([r["bin_mid_pp"] for r in rs], dtype=float) + shift
        y = np.array([r["top25_mean_delta_pp"] for r in rs], dtype=float)
        lo = np.array([np.nan if r.get("top25_ci_low_pp") is None else r["top25_ci_low_pp"] for r in rs], dtype=float)
        hi = np.array([np.nan if r.get("top25_ci_high_pp") is None else r["top25_ci_high_pp"] for r in rs], dtype=float)
        yerr = np.vstack([np.where(np.isnan(lo), 0, y - lo), np.where(np.isnan(hi), 0, hi - y)])
        ax.errorbar(x, y, yerr=yerr, marker="o", ms=4, capsize=2, lw=1.0, elinewidth=0.7,
                    color=method_color(m), label=method_label(m))
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("Δacc bin centre (teacher − student) [pp]")
    ax.set_ylabel("mean of top-25% Δtransf [pp] (bars: 95% CI)")
    ax.set_title("Transfer delta vs performance difference")
    ax.legend(fontsize=8)
    return fig


def draw_fig5a(t: pa.Table) -> Figure:
    fig = _new_figure()
    ax = fig.add_subplot()
    xs = sorted(set(column(t, "x_pct")))
    pos = np.arange(len(xs))
    for m in methods_in(t):
        rs = [r for r in rows(t) if r["method"] == m]
        mean, lo, hi = [], [], []
        for x in xs:
            v = np.array([r["transfer_rate_pct"] for r in rs if r["x_pct"] == x], dtype=float)
            mean.append(v.mean() if len(v) else np.nan)
            lo.append(v.min() if len(v) else np.nan)
            hi.append(v.max() if len(v) else np.nan)
        n_jobs = len({r["job_id"] for r in rs})
        ax.plot(pos, mean, marker="o", color=method_color(m), label=f"{method_label(m)} ({n_jobs} runs)")
        ax.fill_between(pos, lo, hi, color=method_color(m), alpha=0.12)
    ax.set_xticks(pos, [f"top-{x}%" for x in xs])
    ax.set_xlabel("teacher's top-X% classes (by share of positive flips)")
    ax.set_ylabel("transfer rate [% of positive flips now correct]")
    ax.set_ylim(0, 100)
    ax.set_title("Transfer rate within the teacher's areas of expertise (mean, min–max band)")
    ax.legend(fontsize=8)
    return fig


def _size_axis(ax, values: Sequence[float]) -> None:
    """Log scale for parameter counts only when they span more than 10x; plain numbers on the ticks."""
    v = [x for x in values if x is not None and x > 0]
    if v and max(v) / min(v) > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def _grid(n: int, ncols: int = 3) -> tuple[int, int]:
    ncols = max(1, min(ncols, n))
    return (n + ncols - 1) // ncols, ncols


def draw_fig5b(t: pa.Table) -> Figure:
    methods = methods_in(t)
    nr, nc = _grid(len(methods))
    fig = _new_figure(4.2 * nc, 3.6 * nr)
    axes = fig.subplots(nr, nc, squeeze=False, sharey=True).ravel()
    for ax, m in zip(axes, methods):
        rs = [r for r in rows(t) if r["method"] == m and r["params_m"] is not None]
        for fam in sorted({r["family"] for r in rs}):
            fr = sorted((r for r in rs if r["family"] == fam), key=lambda r: r["params_m"])
            x, y = [r["params_m"] for r in fr], [r["mean_rate_pct"] for r in fr]
            ax.plot(x, y, marker="o", color=family_color(fam), label=fam)
        if rs:
            _size_axis(ax, [r["params_m"] for r in rs])
            ax.legend(fontsize=7)
        else:
            msg = "students missing from the model catalog"
            ax.text(0.5, 0.5, msg, ha="center", transform=ax.transAxes, fontsize=8)
        ax.set_title(method_label(m), fontsize=10)
        ax.set_xlabel("student parameters [M]")
    for ax in axes[len(methods) :]:
        ax.set_visible(False)
    for r in range(nr):
        axes[r * nc].set_ylabel("overall transfer rate [%]")
    fig.suptitle("Overall transfer rate (top-100%) vs student size, by family")
    return fig


def draw_fig7(t: pa.Table) -> Figure:
    """Left: gain vs loss (filled = significant, McNemar p < 0.05). Right: every transfer's Δ with its
    95% paired score interval, sorted within each method."""
    fig = _new_figure(11.5, 5.0)
    ax, ax_ci = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.25]})
    methods = methods_in(t)
    for m in methods:
        rs = [r for r in rows(t) if r["method"] == m]
        sig = np.array([bool(r.get("significant")) for r in rs], dtype=bool)
        x = np.array([r["loss_pct"] for r in rs], dtype=float)
        y = np.array([r["gain_pct"] for r in rs], dtype=float)
        c = method_color(m)
        ax.scatter(x[sig], y[sig], s=20, alpha=0.85, color=c, label=f"{method_label(m)} ({int(sig.sum())}/{len(rs)} sig.)")
        ax.scatter(x[~sig], y[~sig], s=20, alpha=0.85, facecolors="none", edgecolors=c)
    hi = float(np.nanmax(np.concatenate([floats(t, "loss_pct"), floats(t, "gain_pct")]))) * 1.08 or 1.0
    ax.plot([0, hi], [0, hi], color="0.4", ls="--", lw=0.8, label="gain = loss")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("knowledge loss [% of samples]")
    ax.set_ylabel("knowledge gain [% of samples]")
    ax.set_title("Gain vs loss (filled: significant, p < 0.05; hollow: not)", fontsize=9)
    ax.legend(fontsize=7)
    start = 0
    ticks, labels = [], []
    for m in methods:
        rs = sorted((r for r in rows(t) if r["method"] == m), key=lambda r: r["delta_last_pp"])
        x = np.arange(start, start + len(rs))
        y = np.array([r["delta_last_pp"] for r in rs], dtype=float)
        lo = np.array([np.nan if r.get("delta_ci_low_pp") is None else r["delta_ci_low_pp"] for r in rs], dtype=float)
        hi_ = np.array([np.nan if r.get("delta_ci_high_pp") is None else r["delta_ci_high_pp"] for r in rs], dtype=float)
        yerr = np.vstack([np.where(np.isnan(lo), 0, y - lo), np.where(np.isnan(hi_), 0, hi_ - y)])
        ax_ci.errorbar(x, y, yerr=yerr, fmt="o", ms=3, elinewidth=0.8, capsize=0, color=method_color(m))
        ticks.append(start + (len(rs) - 1) / 2)
        labels.append(method_label(m))
        start += len(rs) + 2
    ax_ci.axhline(0, color="0.4", lw=0.8)
    ax_ci.set_xticks(ticks, labels, rotation=20, ha="right", fontsize=8)
    ax_ci.set_ylabel("Δtransf per transfer [pp], 95% paired score interval")
    ax_ci.set_title("Each transfer's Δ with its 95% interval (sorted within method)", fontsize=9)
    fig.suptitle("Knowledge gain vs loss (above the diagonal = positive transfer)", fontsize=10)
    return fig


def draw_fig8(t: pa.Table) -> Figure:
    methods = methods_in(t)
    fig = _new_figure(13.0, 4.2)
    ax_acc, ax_size, ax_fam = fig.subplots(1, 3, sharey=True)
    families = sorted({r["family"] for r in rows(t)}, key=lambda f: (f not in FAMILY_COLORS, f))
    width = 0.7 / max(1, len(methods))
    for i, m in enumerate(methods):
        rs = [r for r in rows(t) if r["method"] == m]
        y = np.array([r["mean_delta_pp"] for r in rs], dtype=float)
        lo = np.array([np.nan if r.get("ci_low_pp") is None else r["ci_low_pp"] for r in rs], dtype=float)
        hi = np.array([np.nan if r.get("ci_high_pp") is None else r["ci_high_pp"] for r in rs], dtype=float)
        yerr = np.vstack([np.where(np.isnan(lo), 0, y - lo), np.where(np.isnan(hi), 0, hi - y)])
        kw = dict(fmt="o", ms=4, capsize=2, lw=0.7, alpha=0.85, color=method_color(m))
        ax_acc.errorbar([r["student_acc_pct"] for r in rs], y, yerr=yerr, label=method_label(m), **kw)
        sized = [k for k, r in enumerate(rs) if r["params_m"] is not None]
        if sized:
            ax_size.errorbar([rs[k]["params_m"] for k in sized], y[sized], yerr=yerr[:, sized], **kw)
        xf = [families.index(r["family"]) - 0.35 + width * (i + 0.5) for r in rs]
        ax_fam.errorbar(xf, y, yerr=yerr, **kw)
    for ax in (ax_acc, ax_size, ax_fam):
        ax.axhline(0, color="0.6", lw=0.8)
    _size_axis(ax_size, [r["params_m"] for r in rows(t)])
    ax_acc.set_xlabel("student accuracy before transfer [%]")
    ax_size.set_xlabel("student parameters [M]")
    ax_fam.set_xticks(range(len(families)), families)
    ax_fam.set_xlabel("student family")
    ax_acc.set_ylabel("Δtransf, mean over teachers (bars: 95% CI) [pp]")
    ax_acc.legend(fontsize=7)
    fig.suptitle("Transfer delta vs student accuracy, size and family")
    return fig


def draw_fig11(t: pa.Table, max_jobs: int = 6) -> Figure:
    jobs: list[str] = []
    for j in column(t, "job_id"):
        if j not in jobs:
            jobs.append(j)
    shown = jobs[:max_jobs]
    nr, nc = _grid(len(shown), 2)
    fig = _new_figure(6.0 * nc, 3.8 * nr)
    axes = fig.subplots(nr, nc, squeeze=False).ravel()
    for ax, job in zip(axes, shown):
        rs = sorted((r for r in rows(t) if r["job_id"] == job), key=lambda r: r["step"])
        steps = [r["step"] for r in rs]
        curves = (("gain_pct", "gain", "#2ca02c"), ("loss_pct", "loss", "#d62728"), ("delta_pp", "Δ", "#1f77b4"))
        for key, label, color in curves:
            ax.plot(steps, [r[key] for r in rs], marker=".", color=color, label=label)
        seen: set[int] = set()
        for r in rs:
            if r["stage"] not in seen:
                seen.add(r["stage"])
                if r["stage"] > 0:
                    ax.axvline(r["step"] - 0.5, color="0.5", ls=":", lw=0.8)
                ax.annotate(
                    str(r["stage_teacher"] or f"stage {r['stage']}"), (r["step"], 1.0), xycoords=("data", "axes fraction"),
                    fontsize=7, va="top", color="0.3",
                )  # fmt: skip
        last = rs[-1]
        if last.get("final_ci_low_pp") is not None and last.get("final_ci_high_pp") is not None:
            d = last["final_delta_pp"]
            ax.errorbar([last["step"] + 0.15], [d], yerr=[[d - last["final_ci_low_pp"]], [last["final_ci_high_pp"] - d]],
                        fmt="s", ms=4, capsize=3, color="#1f77b4", label="final Δ, 95% CI")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(f"{rs[0]['student']} ← {rs[0]['teacher_chain']} ({method_label(rs[0]['method'])})", fontsize=9)
        ax.set_xlabel("epoch, across stages")
        ax.set_ylabel("% of eval samples")
        ax.legend(fontsize=7, loc="center right")
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    more = f" (first {max_jobs} of {len(jobs)} runs)" if len(jobs) > max_jobs else ""
    fig.suptitle("Sequential multi-teacher transfer: gain, loss and delta per epoch" + more)
    return fig


# ------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Section:
    """One figure or table of the report: its query, how to read it, and what it needs."""

    key: str
    title: str
    query: str
    how_to_read: str
    needs: tuple[str, ...]  # views the query reads; an empty one is named in the "missing" message
    empty_hint: str  # shown when every needed view has rows but the query still returns none


@dataclass(frozen=True)
class FigureSpec(Section):
    draw: Callable[[pa.Table], Figure] = field(default=draw_fig1a, repr=False)


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "fig1a", "Fig 1a — complementary knowledge vs performance difference", "fig1a_rho_pos_vs_delta_acc",
        "Each point is a (teacher, student) pair. Points well above the noise floor (red crosses: randomly "
        "initialised teachers) show that even much weaker teachers know samples the student gets wrong.",
        ("pairs",), "no pairs with distinct teacher and student: run the score stage with at least two models",
        draw_fig1a,
    ),
    FigureSpec(
        "fig1b", "Fig 1b — entropy of complementary knowledge vs its amount", "fig1b_entropy_vs_rho_pos",
        "Lower entropy means the teacher's extra knowledge sits in a few classes (relative areas of expertise); "
        "the dashed line is the entropy of flips spread evenly over all classes. Colour: Δacc.",
        ("pairs",), "no scored pair has a positive flip, so no entropy is defined",
        draw_fig1b,
    ),
    FigureSpec(
        "fig2a", "Fig 2a — per-class positive flips for a weak, an equal and a strong teacher", "fig2a_class_histograms",
        "Bars are classes sorted by how many samples the teacher gets right and the student wrong. A steep "
        "drop means complementary knowledge concentrated in few classes.",
        ("pairs", "pair_classes"), "no trained (non-random) teacher has per-class flips for any student",
        draw_fig2a,
    ),
    FigureSpec(
        "fig4a", "Fig 4a — transfer success rate per method", "fig4a_success_rate",
        "Each point is a student; two success rates per method: the share of its teachers whose transfer ended "
        "with a positive Δ (last epoch; light boxes, the paper's definition) and the share whose Δ is "
        "significantly > 0 (exact McNemar test on the eval samples, p < 0.05; dark boxes). On a small eval "
        "split the light box counts noise; below the boxes, the share of transfers significantly harmed.",
        ("transfers",), "no single-teacher transfers (study_part 'transfer', mode 'single') yet: run the transfer stage",
        draw_fig4a,
    ),
    FigureSpec(
        "fig4b", "Fig 4b — best transfer deltas per performance-difference bin", "fig4b_top25_by_delta_acc_bin",
        "Pairs are binned by Δacc (teacher − student); each point is the mean of the top 25% transfer deltas "
        "in a bin, with its 95% interval (t over the top pairs, or the one top transfer's own interval). "
        "Rising lines mean stronger teachers allow bigger gains; lines above 0 on the left mean even weaker "
        "teachers help. Picking the top quarter favours lucky draws: read it as optimistic.",
        ("transfers", "pairs"), "no single-teacher transfer has a scored pair (teacher, student) to take Δacc from",
        draw_fig4b,
    ),
    FigureSpec(
        "fig5a", "Fig 5a — transfer rate for the teacher's top-X% classes", "fig5a_transfer_rate_topx",
        "Of the samples the teacher got right and the student wrong before transfer, restricted to the "
        "teacher's top-X% classes, the share the student gets right afterwards. Higher at small X means "
        "knowledge moves first where the teacher's expertise is concentrated.",
        ("transfers", "transfer_predictions", "predictions", "pair_classes"),
        "no single-teacher transfer has per-sample predictions, teacher predictions and per-class flips for its pair",
        draw_fig5a,
    ),
    FigureSpec(
        "fig5b", "Fig 5b — overall transfer rate vs student size", "fig5b_transfer_rate_vs_size",
        "Each point is a student (mean over its teachers): the share of the teachers' positive flips it "
        "absorbed, against its parameter count, one line per architecture family.",
        ("transfers", "transfer_predictions", "predictions"),
        "no single-teacher transfer has both per-sample predictions and its teacher's predictions",
        draw_fig5b,
    ),
    FigureSpec(
        "fig7", "Fig 7 — knowledge gain vs knowledge loss", "fig7_gain_vs_loss",
        "Left: each point is a transfer, share of samples newly right (gain) against share newly wrong (loss); "
        "above the dashed diagonal the student improved; filled points are significant (exact McNemar "
        "p < 0.05), hollow ones are not. Right: each transfer's Δ with its 95% paired score interval.",
        ("transfers",), "no single-teacher transfers yet: run the transfer stage",
        draw_fig7,
    ),
    FigureSpec(
        "fig8", "Fig 8 — transfer delta vs student accuracy, size and family", "fig8_delta_vs_student",
        "Each point is a student's mean Δ over its teachers (bars: 95% t interval over the teachers; none "
        "with one teacher), against its accuracy before transfer, its size and its family.",
        ("transfers",), "no single-teacher transfers yet: run the transfer stage",
        draw_fig8,
    ),
    FigureSpec(
        "fig11", "Fig 11 — sequential multi-teacher transfer per epoch", "fig11_sequential",
        "Each panel is one sequential run: gain, loss and Δ against the original student, epoch by epoch; "
        "dotted lines mark where the next teacher takes over; the square is the final Δ with its 95% "
        "paired score interval.",
        ("transfers", "epochs"),
        "no sequential multi-teacher runs (mode 'sequential') with epoch rows yet: run the multi-teacher stage",
        draw_fig11,
    ),
)  # fmt: skip
FIGURES_BY_KEY = {f.key: f for f in FIGURES}


def missing_message(spec: Section, counts: dict[str, int]) -> str:
    """A plain sentence on why ``spec`` has no rows: which inputs are empty and which stage writes them."""
    empty = [v for v in spec.needs if counts.get(v, 0) == 0]
    if not empty:
        return f"No rows yet: {spec.empty_hint}."
    by_stage: dict[str, list[str]] = {}
    for v in empty:
        src = VIEWS[v]
        by_stage.setdefault(src.stage, []).append(f"{src.what} ({src.pattern})")
    parts = [
        f"no {', no '.join(items)} yet: run the {stage} stage" if stage != "any" else f"no {', no '.join(items)} yet"
        for stage, items in by_stage.items()
    ]
    return "No data yet: " + "; ".join(parts) + "."


@dataclass
class Rendered:
    """The outcome of one figure or table: its data and either a result or a message saying why not."""

    spec: Section
    table: pa.Table | None = None
    png: bytes | None = None
    message: str | None = None  # nothing to show yet (missing data)
    error: str | None = None  # the query or the drawing failed


def render_figure(db: ResultsDB, spec: FigureSpec, counts: dict[str, int] | None = None) -> Rendered:
    """Run the figure's query and draw it; never raises for missing data or a failing query."""
    counts = db.counts() if counts is None else counts
    try:
        table = db.named(spec.query)
    except Exception as exc:  # a corrupt file, a schema drift: report it, keep building
        return Rendered(spec, error=f"query {spec.query} failed: {exc}")
    if table.num_rows == 0:
        return Rendered(spec, table=table, message=missing_message(spec, counts))
    try:
        fig = spec.draw(table)
        png = figure_png(fig)
    except Exception as exc:
        return Rendered(spec, table=table, error=f"drawing {spec.key} failed: {type(exc).__name__}: {exc}")
    return Rendered(spec, table=table, png=png)


def render_all(db: ResultsDB, keys: Sequence[str] | None = None) -> list[Rendered]:
    """Render every figure (or those in ``keys``)."""
    counts = db.counts()
    specs = FIGURES if keys is None else [FIGURES_BY_KEY[k] for k in keys]
    return [render_figure(db, s, counts) for s in specs]
