"""The paper's figures, each drawn from one named query in ``analysis/queries``: the registry and rendering.

Why this shape: a figure is (query, drawing). The query holds every number (and is what people read and
re-run with ``zoo-study sql``); the drawing only places those numbers on axes, so a figure never re-runs
a model and its CSV next to the PNG is exactly the query result. This module holds the registry
(:data:`FIGURES`: which query feeds which drawing, how to read it, what it needs) and rendering; the
drawings are in :mod:`analysis.figure_draw` and the shared colours, labels and canvas in
:mod:`analysis.figure_style`, all re-exported here so callers import from ``analysis.figures``.

A figure renders with whatever data exists. With no rows it returns a plain message naming what is
missing and which stage writes it, instead of an empty plot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import pyarrow as pa
from matplotlib.figure import Figure

from analysis.db import VIEWS, ResultsDB
from analysis.figure_draw import (
    draw_robustness,
    draw_fig1a,
    draw_fig1b,
    draw_fig2a,
    draw_fig2b,
    draw_fig4a,
    draw_fig4b,
    draw_fig5a,
    draw_fig5b,
    draw_fig7,
    draw_fig8,
    draw_fig9,
    draw_fig10,
    draw_fig11,
)
from analysis.figure_style import (  # noqa: F401  (re-exported: callers import these from analysis.figures)
    FAMILY_COLORS,
    column,
    family_color,
    figure_png,
    floats,
    method_color,
    methods_in,
    rows,
)
from pipelines.stages import table_stage
from zoo_study.methods import method_label, method_names, method_sort_key  # noqa: F401  (re-exported)

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
        ("pairs", "pair_classes"),
        "no trained (non-random) teacher has per-class flips for any student (the score stage keeps them only "
        "for the pairs score.pair_classes names: 'all' (default), 'transfer_pairs' or 'none')",
        draw_fig2a,
    ),
    FigureSpec(
        "fig2b", "Fig 2b — semantic similarity of a teacher's top-X% classes", "fig2b_semantic_similarity",
        "Left: how alike the classes holding X% of a pair's positive flips are (mean pairwise similarity of "
        "their names' text embeddings, averaged over trained pairs), against random class sets of the same "
        "size; above the grey band, a teacher's expertise clusters in related classes. Right, when the data "
        "has super-classes: the share of those classes' pairs in one super-class against chance (exact, no "
        "encoder). The default encoder is lexical (shared words and word pieces), not CLIP: see the docs.",
        ("pair_semantics",), "no pair has two or more top-X% classes: run the semantics stage after scoring",
        draw_fig2b,
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
        ("no single-teacher transfer has per-sample predictions, teacher predictions and per-class flips for its pair "
         "(per-class flips are kept for transfer pairs unless score.pair_classes = 'none')"),
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
        "fig9", "Fig 9 — transfer on other datasets", "fig9_other_datasets",
        "One panel per dataset the zoo was adapted to (zoo.adapt: each model's head replaced and the model "
        "fine-tuned on that data after training on another). Each point is a KL-Dist or KL+DP transfer, its Δ "
        "with the 95% interval against the pair's Δacc; the paper finds KL+DP's advantage carries over.",
        ("transfers", "pairs"), "no KL-Dist or KL+DP single-teacher transfers: run the transfer stage with them",
        draw_fig9,
    ),
    FigureSpec(
        "fig10", "Fig 10 — teachers from another domain", "fig10_cross_domain",
        "Teachers fine-tuned on another domain of the same classes (zoo.cross_domain) beside teachers of the "
        "students' own domain: each point a KL-Dist or KL+DP transfer, Δ with its 95% interval against Δacc "
        "on the students' data.",
        ("transfers", "pairs"), "no cross-domain teacher: add zoo.cross_domain models and transfers from them",
        draw_fig10,
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
    FigureSpec(
        "fig_robustness", "Robustness — clean vs FGSM vs I-FGSM accuracy per setting", "tab_robustness",
        "Per student, the zoo model before transfer and each transfer setting's last student (method, batch "
        "mixing, scratch): accuracy on clean inputs and under FGSM and I-FGSM at the largest eps of the study "
        "(pixel units, /255). Choi et al. report that mixup in distillation trades clean accuracy for robustness.",
        ("robustness",), "no robustness rows: enable the robustness stage ([robustness] enabled = true)",
        draw_robustness,
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
        by_stage.setdefault(table_stage(src.name), []).append(f"{src.what} ({src.pattern})")
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
