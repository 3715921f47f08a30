"""The Claims section: the paper's headline claims, each checked against this study's 95% intervals.

Why a section of its own: on a small evaluation split a transfer moves a handful of samples, so a method
ranking or a success rate can be noise. Each claim is one named query ``analysis/queries/claim_*.sql``
that returns rows with the columns of :data:`CLAIM_COLUMNS`: the study's value, its 95% interval, the
threshold the claim is about and the verdict. The verdict is computed in SQL (the ``claim_verdict``
macro of :mod:`analysis.db`: the interval against the threshold), never here; this module only runs the
queries, puts the rows together and presents them (method keys in a claim's text, ``{kl_dp}``, become
the registry's labels).
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from analysis.db import ResultsDB, query_names
from zoo_study.methods import method_label, method_names

CLAIM_COLUMNS: tuple[str, ...] = (
    "claim_id", "claim", "paper_ref", "paper_value", "value", "ci_low", "ci_high", "unit", "n", "n_unit",
    "threshold", "direction", "verdict", "note",
)  # fmt: skip
VERDICTS: tuple[str, ...] = ("holds", "does not hold", "not enough power to tell", "no data")
VERDICT_CSS = {
    "holds": "v-holds", "does not hold": "v-fails", "not enough power to tell": "v-power", "no data": "v-nodata",
}  # fmt: skip

CSS = """
table.claims td.verdict { font-weight: 600; white-space: nowrap; }
table.claims td.v-holds { background: #e6f4ea; color: #137333; }
table.claims td.v-fails { background: #fce8e6; color: #a50e0e; }
table.claims td.v-power { background: #fef7e0; color: #8a5a00; }
table.claims td.v-nodata { background: #f1f3f4; color: #5f6368; }
table.claims .note { color: #666; font-size: 0.85em; }
"""

#: claims whose content is the budget-selection criterion itself (KL-Dist forgets from weaker teachers,
#: pipelines/select_budget.py): where the budget was chosen by that criterion, they hold partly by choice
CONDITIONAL_ON_BUDGET: frozenset[str] = frozenset({"3a", "3b", "4c", "6a"})
CONDITIONAL_NOTE = ("conditional on the budget selection: its criterion (KL-Dist forgets from weaker teachers, "
                    "judged on pairs disjoint from these) is part of what this claim says")

HOW_VERDICTS = (
    "Each claim is tested with a 95% interval against the claim's threshold: it holds when the whole "
    "interval lies on the claim's side, does not hold when the whole interval lies on the other side, and "
    "there is not enough power to tell when the interval spans the threshold (or there is a single unit, "
    "so no interval); no data when the rows the claim needs do not exist yet. A transfer that failed or "
    "diverged is counted, never dropped: as unsuccessful, with its student taken as broken to chance level."
)


def claim_queries() -> list[str]:
    """The shipped claim queries (``claim_*.sql``), in claim order."""
    return [q for q in query_names() if q.startswith("claim_")]


_METHOD_REF = re.compile(r"\{([A-Za-z0-9_]+)\}")


def claim_text(text: str) -> str:
    """A claim's text with ``{method}`` keys replaced by the registry's labels ('{kl_dp}' -> 'KL+DP')."""
    known = set(method_names())
    return _METHOD_REF.sub(lambda m: method_label(m.group(1)) if m.group(1) in known else m.group(0), text)


@dataclass
class Claims:
    """The rows of every claim query (one table), the study size, and the queries that failed."""

    table: pa.Table
    size: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # query -> error

    def rows(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {r["claim_id"]: r for r in self.rows()}


def _empty() -> pa.Table:
    return pa.table({c: pa.array([], type=pa.int64() if c == "n_failed" else pa.string())
                     for c in CLAIM_COLUMNS + ("n_failed", "query")})


def collect_claims(db: ResultsDB) -> Claims:
    """Run every claim query; a failing query is recorded in ``errors`` and the others still run."""
    parts: list[pa.Table] = []
    errors: dict[str, str] = {}
    for name in claim_queries():
        try:
            t = db.named(name)
            missing = [c for c in CLAIM_COLUMNS if c not in t.column_names]
            if missing:
                raise ValueError(f"missing columns {missing}")
        except Exception as exc:  # a broken file or query: report it, keep the rest of the section
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        cols = {c: t.column(c).cast(_TYPES[c]) for c in CLAIM_COLUMNS}
        # failed transfers counted as harmed (survivorship): only claims over transfers report them
        cols["n_failed"] = (t.column("n_failed").cast(pa.int64()) if "n_failed" in t.column_names
                            else pa.array([0] * t.num_rows, type=pa.int64()))
        cols["query"] = pa.array([name] * t.num_rows, type=pa.string())
        parts.append(pa.table(cols))
    table = pa.concat_tables(parts) if parts else _empty()
    size: dict[str, Any] = {}
    try:
        rows = db.named("study_size").to_pylist()
        size = rows[0] if rows else {}
    except Exception as exc:
        errors["study_size"] = f"{type(exc).__name__}: {exc}"
    return Claims(table, size, errors)


_TYPES: dict[str, pa.DataType] = {
    **{c: pa.string() for c in CLAIM_COLUMNS},
    **{c: pa.float64() for c in ("value", "ci_low", "ci_high", "threshold")},
    "n": pa.int64(),
}


# --------------------------------------------------------------------------------------------- format
def _finite(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def fmt_value(value: Any, unit: str | None, signed: bool | None = None) -> str:
    """One number with its unit: '16.25%', '+5.42 pp', 'r = 0.50'; '–' for no value."""
    if not _finite(value):
        return "–"
    if unit == "r":
        return f"r = {value:.2f}"
    if unit == "pp":
        return f"{value:+.2f} pp"
    if unit == "%":
        return f"{value:.1f}%"
    return f"{value:+.2f}" if signed else f"{value:.3g}"


def fmt_interval(lo: Any, hi: Any, unit: str | None) -> str:
    if not (_finite(lo) and _finite(hi)):
        return "[no interval]"
    if unit == "pp":
        return f"[{lo:+.2f}, {hi:+.2f}]"
    if unit == "%":
        return f"[{lo:.1f}, {hi:.1f}]"
    return f"[{lo:.2f}, {hi:.2f}]"


def fmt_test(direction: str | None, threshold: Any, unit: str | None) -> str:
    """The claim's side of its threshold: '> 0 pp', '< 50%', '> 15.4% (noise floor)'."""
    if not _finite(threshold):
        return f"{direction or '?'} –"
    if unit == "r":
        return f"r {direction} {threshold:g}"
    if unit == "pp":
        return f"{direction} {threshold:g} pp"
    if unit == "%":
        return f"{direction} {threshold:.3g}%"
    return f"{direction} {threshold:g}"


def size_sentence(size: dict[str, Any]) -> str:
    """How much the study stands on: eval samples, pairs, transfers and seeds, in one sentence."""
    if not size:
        return "The size of the study could not be read."

    def span(lo: Any, hi: Any, what: str) -> str | None:
        if lo is None:
            return None
        return f"{lo:,} {what}" if lo == hi else f"{lo:,}–{hi:,} {what}"

    parts = []
    ev = span(size.get("n_eval_min"), size.get("n_eval_max"), "eval samples per transfer")
    ev = ev or span(size.get("n_samples_min"), size.get("n_samples_max"), "eval samples per pair")
    if ev:
        parts.append(ev)
    parts.append(f"{size.get('n_trained_pairs') or 0} scored trained pairs "
                 f"(+{size.get('n_random_pairs') or 0} random-teacher rows)")
    parts.append(f"{size.get('n_single_transfers') or 0} single-teacher transfers over "
                 f"{size.get('n_transfer_pairs') or 0} (student, teacher) pairs and {size.get('n_methods') or 0} methods")
    seeds = span(size.get("seeds_min"), size.get("seeds_max"), "")
    if seeds:
        s_lo, s_hi = size.get("seeds_min"), size.get("seeds_max")
        word = "seed" if s_lo == s_hi == 1 else "seeds"
        parts.append(f"{seeds.strip()} {word} per (method, pair)")
    parts.append(f"{size.get('n_multi_teacher') or 0} multi-teacher runs")
    return "This study has " + ", ".join(parts) + "."


def family_error(claims: Claims) -> tuple[int, float, float]:
    """(m, Bonferroni bound, independent-tests value) of the chance of at least one false verdict.

    The family is every claim row of this table that was tested (a verdict other than 'no data'). A
    verdict errs when its claim's truth sits at the threshold and the 95% interval falls wholly on one
    side: at most 2.5% per claim (one side of a two-sided interval). Over m claims the chance of one or
    more false verdicts is at most m x 2.5% whatever their dependence (Bonferroni), and 1 - 0.975^m if
    they were independent (13 claims: 28%). Why it is stated rather than corrected: the verdicts come
    from intervals of different kinds (Wilson, t, bootstrap, score), so a Holm step-down would need a
    p-value per claim that not every interval has; the reader sees the family's error instead."""
    m = sum(1 for r in claims.rows() if (r["verdict"] or "no data") != "no data")
    return m, min(1.0, 0.025 * m), 1.0 - 0.975**m


def family_sentence(claims: Claims) -> str:
    m, bonferroni, independent = family_error(claims)
    if m == 0:
        return "No claim was tested, so no verdict can be wrong."
    return (f"Multiplicity: this table tests {m} claim(s), each at 95%. If every claim sat exactly at its "
            f"threshold, the chance of at least one false verdict would be {100 * independent:.0f}% for "
            f"independent claims and at most {100 * bonferroni:.1f}% whatever their dependence (Bonferroni); "
            f"read single verdicts with that in mind.")


def claims_html(claims: Claims) -> str:
    """The Claims table (verdict cells coloured by class) and its explanation, as an HTML fragment."""
    out = [f'<p class="how"><b>How verdicts are made.</b> {html.escape(HOW_VERDICTS)} '
           f"{html.escape(size_sentence(claims.size))}</p>"]
    for name, err in claims.errors.items():
        out.append(f'<p class="error">{html.escape(f"query {name} failed: {err}")}</p>')
    heads = ["#", "claim", "paper", "paper value", "this study [95% CI]", "tested", "n", "verdict"]
    out.append('<table class="data claims"><thead><tr>')
    out += [f"<th>{html.escape(h)}</th>" for h in heads]
    out.append("</tr></thead><tbody>")
    for r in claims.rows():
        verdict = r["verdict"] or "no data"
        value = f"{fmt_value(r['value'], r['unit'])} {fmt_interval(r['ci_low'], r['ci_high'], r['unit'])}"
        if not _finite(r["value"]):
            value = "–"
        n = "–" if r["n"] is None else f"{r['n']:,} {r['n_unit'] or ''}".strip()
        if r.get("n_failed"):
            n += f" ({r['n_failed']:,} failed run(s) counted as harmed)"
        note = f'<div class="note">{html.escape(r["note"])}</div>' if r.get("note") else ""
        if r["claim_id"] in CONDITIONAL_ON_BUDGET:
            note += f'<div class="note conditional">† {html.escape(CONDITIONAL_NOTE)}</div>' 
        cells = [
            f'<td>{html.escape(r["claim_id"] or "")}</td>',
            f"<td>{html.escape(claim_text(r['claim'] or ''))}{note}</td>",
            f"<td>{html.escape(r['paper_ref'] or '')}</td>",
            f"<td>{html.escape(r['paper_value'] or '')}</td>",
            f'<td class="n">{html.escape(value)}</td>',
            f'<td class="n">{html.escape(fmt_test(r["direction"], r["threshold"], r["unit"]))}</td>',
            f'<td class="n">{html.escape(n)}</td>',
            f'<td class="verdict {VERDICT_CSS.get(verdict, "v-nodata")}" data-verdict="{html.escape(verdict)}">'
            f"{html.escape(verdict)}</td>",
        ]
        out.append(f'<tr data-claim="{html.escape(r["claim_id"] or "")}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    out.append(f'<p class="family">{html.escape(family_sentence(claims))}</p>')
    return "".join(out)


def render_claims(db: ResultsDB) -> tuple[Claims, str]:
    """Run the claim queries and return them with their HTML fragment; never raises for a bad query."""
    claims = collect_claims(db)
    return claims, claims_html(claims)
