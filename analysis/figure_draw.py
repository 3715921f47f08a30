"""The drawings of the paper's figures: one ``draw_*`` function per figure, query result in, Figure out.

Why a module of its own: a drawing only places the numbers of its query on axes (it never computes a
statistic or re-runs a model), so the drawings change with the look of the figures while the registry in
:mod:`analysis.figures` (which query feeds which drawing, how to read it, what it needs) changes with
the study. Each function takes the Arrow table of its named query (``analysis/queries/<name>.sql``) and
returns an unsaved Agg figure (:mod:`analysis.figure_style`); :mod:`analysis.figures` re-exports them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from matplotlib.figure import Figure

from analysis.figure_style import (
    FAMILY_COLORS,
    PALETTE,
    column,
    family_color,
    floats,
    grid,
    method_color,
    methods_in,
    new_figure,
    rows,
    size_axis,
)
from zoo_study.methods import method_label  # labels: the registry

__all__ = ["draw_fig1a", "draw_fig1b", "draw_fig2a", "draw_fig4a", "draw_fig4b", "draw_fig5a", "draw_fig5b",
           "draw_fig7", "draw_fig8", "draw_fig11"]


def draw_fig1a(t: pa.Table) -> Figure:
    fig = new_figure()
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
    fig = new_figure()
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
    fig = new_figure(4.0 * len(roles), 3.8)
    axes = fig.subplots(1, len(roles), sharey=True, squeeze=False)[0]
    for ax, role in zip(axes, roles):
        rs = sorted(by_role[role], key=lambda r: r["rank"])
        head = rs[0]
        color = PALETTE[head["role_order"] % len(PALETTE)]
        ax.bar([r["rank"] for r in rs], [r["pos_flips"] for r in rs], width=1.0, color=color)
        ent = "n/a" if head["entropy"] is None else f"{head['entropy']:.2f}"
        title = f"{role} teacher: {head['teacher']}\nΔacc {head['delta_acc_pp']:+.1f} pp, entropy {ent}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("classes, sorted by positive flips")
    axes[0].set_ylabel("positive flips per class")
    fig.suptitle(f"Per-class positive flips into student {by_role[roles[0]][0]['student']}")
    return fig


def draw_fig2b(t: pa.Table) -> Figure:
    """Similarity of the top-X% classes vs same-size random sets (left) and the super-class share vs chance
    (right, when the dataset has super-classes), per X, with their intervals."""
    rs = sorted(rows(t), key=lambda r: r["x_pct"])
    has_super = any(r["same_super_pct"] is not None for r in rs)
    fig = new_figure(10.0 if has_super else 5.5, 4.0)
    axes = fig.subplots(1, 2 if has_super else 1, squeeze=False)[0]
    xs = np.arange(len(rs))
    labels = [f"top {r['x_pct']}%\n({r['mean_classes']:g} cl.)" for r in rs]
    ax = axes[0]
    top = np.array([r["sim_top"] for r in rs], dtype=float)
    lo = np.array([r["sim_top_ci_low"] if r["sim_top_ci_low"] is not None else np.nan for r in rs], dtype=float)
    hi = np.array([r["sim_top_ci_high"] if r["sim_top_ci_high"] is not None else np.nan for r in rs], dtype=float)
    ax.errorbar(xs, top, yerr=[np.nan_to_num(top - lo), np.nan_to_num(hi - top)], fmt="o-", color=PALETTE[0],
                capsize=3, label="top-X% classes (mean over pairs, 95% CI)")
    rnd = np.array([r["sim_random"] for r in rs], dtype=float)
    ax.fill_between(xs, [r["sim_random_low"] for r in rs], [r["sim_random_high"] for r in rs], color="0.85",
                    label="random class sets of the same size (2.5-97.5%)")
    ax.plot(xs, rnd, "--", color="0.4", label="random sets, mean")
    ax.axhline(rs[0]["sim_all"], color="0.6", lw=0.8, ls=":", label="all class pairs")
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel(f"mean pairwise similarity ({rs[0]['encoder']})")
    ax.set_title("Similarity of a teacher's expertise classes")
    ax.legend(fontsize=7)
    if has_super:
        ax = axes[1]
        sh = np.array([r["same_super_pct"] for r in rs], dtype=float)
        slo = np.array([r["same_super_ci_low_pct"] if r["same_super_ci_low_pct"] is not None else np.nan for r in rs])
        shi = np.array([r["same_super_ci_high_pct"] if r["same_super_ci_high_pct"] is not None else np.nan for r in rs])
        ax.errorbar(xs, sh, yerr=[np.nan_to_num(sh - slo), np.nan_to_num(shi - sh)], fmt="o-", color=PALETTE[1],
                    capsize=3, label="top-X% classes (95% CI)")
        ax.plot(xs, [r["same_super_chance_pct"] for r in rs], "--", color="0.4", label="chance")
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_ylabel("class pairs in one super-class [%]")
        ax.set_title("Exact measure: shared super-class")
        ax.legend(fontsize=7)
    return fig


def _delta_vs_dacc_panels(t: pa.Table, group: str, title: str) -> Figure:
    """One panel per value of ``group``: each transfer's delta (pp, with its 95% interval) against the
    pair's delta_acc, KL-Dist and KL+DP in their method colours."""
    groups = list(dict.fromkeys(r[group] for r in rows(t)))
    fig = new_figure(max(5.0, 4.6 * len(groups)), 4.2)
    axes = fig.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    for ax, g in zip(axes, groups):
        for m in methods_in(t):
            rs = [r for r in rows(t) if r[group] == g and r["method"] == m]
            if not rs:
                continue
            x = np.array([r["delta_acc_pp"] for r in rs], dtype=float)
            y = np.array([r["delta_pp"] for r in rs], dtype=float)
            lo = np.array([np.nan if r["delta_ci_low_pp"] is None else r["delta_ci_low_pp"] for r in rs], dtype=float)
            hi = np.array([np.nan if r["delta_ci_high_pp"] is None else r["delta_ci_high_pp"] for r in rs], dtype=float)
            yerr = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
            ax.errorbar(x, y, yerr=yerr, fmt="o", ms=4, capsize=2, color=method_color(m), label=method_label(m))
        ax.axhline(0, color="0.4", lw=0.8)
        ax.set_title(str(g), fontsize=9)
        ax.set_xlabel("Δacc (teacher − student) [pp]")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("Δtransf [pp], 95% paired score interval")
    fig.suptitle(title, fontsize=10)
    return fig


def draw_fig9(t: pa.Table) -> Figure:
    return _delta_vs_dacc_panels(t, "dataset", "Transfer on the data the zoo was adapted to")


def draw_fig10(t: pa.Table) -> Figure:
    return _delta_vs_dacc_panels(t, "teacher_domain", "Teachers from another domain vs the students' own")


def draw_fig4a(t: pa.Table) -> Figure:
    """Two success rates per method side by side: Δ > 0 (the paper's) and Δ significantly > 0."""
    methods = methods_in(t)
    kinds = (
        ("success_rate_pct", "Δ > 0", 0.35),
        ("sig_success_rate_pct", "Δ significantly > 0 (McNemar p < 0.05)", 0.95),
    )
    fig = new_figure(max(6.0, 1.6 * len(methods) + 2), 4.6)
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
    fig = new_figure()
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
    fig = new_figure()
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


def draw_fig5b(t: pa.Table) -> Figure:
    methods = methods_in(t)
    nr, nc = grid(len(methods))
    fig = new_figure(4.2 * nc, 3.6 * nr)
    axes = fig.subplots(nr, nc, squeeze=False, sharey=True).ravel()
    for ax, m in zip(axes, methods):
        rs = [r for r in rows(t) if r["method"] == m and r["params_m"] is not None]
        for fam in sorted({r["family"] for r in rs}):
            fr = sorted((r for r in rs if r["family"] == fam), key=lambda r: r["params_m"])
            x, y = [r["params_m"] for r in fr], [r["mean_rate_pct"] for r in fr]
            ax.plot(x, y, marker="o", color=family_color(fam), label=fam)
        if rs:
            size_axis(ax, [r["params_m"] for r in rs])
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
    fig = new_figure(11.5, 5.0)
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
    fig = new_figure(13.0, 4.2)
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
    size_axis(ax_size, [r["params_m"] for r in rows(t)])
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
    nr, nc = grid(len(shown), 2)
    fig = new_figure(6.0 * nc, 3.8 * nr)
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


def draw_robustness(t: pa.Table) -> Figure:
    """Clean, FGSM and I-FGSM accuracy per setting at the largest eps, one panel per student."""
    rs = rows(t)
    eps = max(r["eps_255"] for r in rs)
    rs = [r for r in rs if r["eps_255"] == eps]
    students = list(dict.fromkeys(r["student"] for r in rs))
    fig = new_figure(max(6.0, 4.5 * len(students)), 4.4)
    kinds = (("clean_pct", "clean", 1.0), ("fgsm_pct", "FGSM", 0.65), ("ifgsm_pct", "I-FGSM", 0.35))
    for i, student in enumerate(students):
        ax = fig.add_subplot(1, len(students), i + 1)
        mine = [r for r in rs if r["student"] == student]
        labels = [r["setting"] if r["setting"] == "before transfer" else
                  " ".join(str(x) for x in (method_label(r["setting"]), r["mixup"] if r["mixup"] != "none" else "",
                                            f"{r['mixed_pct']}%" if r["mixup"] == "pmu" else "",
                                            "scratch" if r["student_init"] == "scratch" else "") if x)
                  for r in mine]
        pos = np.arange(len(mine))
        for k, (col, name, alpha) in enumerate(kinds):
            ax.bar(pos + (k - 1) * 0.27, [r[col] for r in mine], width=0.27, alpha=alpha, color="C0", label=name)
        ax.set_xticks(pos, labels, rotation=35, ha="right", fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_title(f"{student} (eps = {eps:g}/255)", fontsize=9)
        if i == 0:
            ax.set_ylabel("accuracy [%]")
            ax.legend(fontsize=7)
    return fig
