"""SQL macros defined on every results connection (:class:`analysis.db.ResultsDB`).

Why a module of its own: the macros are the statistics the shipped queries share, written once in SQL,
and they change with :mod:`zoo_study.stats` (the 95% interval rules), not with how views are built.
The 95% interval macros are generated from :mod:`zoo_study.stats` so the normal quantile and the t table
live in one place; the queries and the Python agree by construction.

Macros available to every query:

``method_key(method, hparams_json)``
    The method name, or its registered ``unsupervised_twin`` (``kl_dp`` -> ``kl_dp_unsup``) when the run's
    ``hparams_json`` says it ran without labels (``"unsupervised": true`` or ``"supervised": false``, as
    results of an older study do). Why: the paper reports supervised and unsupervised KL+DP separately
    (Tab 1 vs Tab 3), and the summary schema has no column for it. A method without a twin keeps its name.

The ``methods`` view (see :func:`method_macros`): one row per registered method, generated from the
registry (:mod:`zoo_study.methods`): ``name``, ``label``, ``sort_order`` (the report's order), the
capability flags (``needs_labels``, ``needs_frozen``, ``needs_features``, ``needs_maps``, ``needs_levels``,
``needs_index``, ``routes``, ``multi_teacher``), ``unsupervised_twin``, ``paper_success_rate`` and
``tables`` (the names of the tables the method writes). Queries join on it instead of matching names.

95% intervals (see :func:`stats_macros`):
``z975()``, ``t975(df)`` (exact t quantiles for df 1..100, a Cornish-Fisher expansion within 1e-10 beyond); ``mean_ci_low/high(mean,
sd, n)`` (t interval of a mean over n independent units, NULL for n < 2); ``wilson_low/high(k, n)``
(Wilson interval of k / n); ``fisher_low/high(r, n)`` (Fisher-z interval of a Pearson r, NULL for
n < 4); ``tango_z(g, l, n, d)`` (the score statistic of ``paired_delta_ci``, for bisection in SQL);
``claim_verdict(value, lo, hi, threshold, side)``: 'holds' when the interval lies entirely on the claim's
side (``side`` '>' or '<') of the threshold, 'does not hold' when entirely on the other side, 'not enough
power to tell' when it spans the threshold (or has no width: one unit), 'no data' without a value.
"""

from __future__ import annotations

from analysis.sandbox import sql_string_literal

__all__ = ["METHOD_FLAGS", "method_macros", "methods_view", "stats_macros"]

# the registry's capability flags the methods view carries, as boolean columns
METHOD_FLAGS = ("needs_labels", "needs_frozen", "needs_features", "needs_maps", "needs_levels", "needs_index",
                "routes", "multi_teacher")

METHOD_KEY_MACRO = """
CREATE OR REPLACE MACRO method_key(m, hp) AS CASE
    WHEN json_valid(hp) AND (
        lower(coalesce(json_extract_string(hp, '$.unsupervised'), '')) IN ('true', '1')
        OR lower(coalesce(json_extract_string(hp, '$.supervised'), '')) IN ('false', '0')
    ) THEN coalesce((SELECT unsupervised_twin FROM methods WHERE name = m), m)
    ELSE m
END;
"""


def _literal(value: object) -> str:
    """One SQL literal for the methods view: NULL, a boolean, an integer or a quoted string."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return sql_string_literal(str(value))


def methods_view() -> str:
    """``CREATE VIEW methods``: one row per registered method, from the registry (the values are the
    registry's own names and labels, quoted by :func:`~analysis.sandbox.sql_string_literal`)."""
    from zoo_study.methods import methods

    types = {"name": "VARCHAR", "label": "VARCHAR", "sort_order": "INTEGER", **{f: "BOOLEAN" for f in METHOD_FLAGS},
             "unsupervised_twin": "VARCHAR", "paper_success_rate": "VARCHAR", "tables": "VARCHAR[]"}
    rows = []
    for order, m in enumerate(methods()):
        values = [m.name, m.label, order, *(bool(getattr(m, f)) for f in METHOD_FLAGS), m.unsupervised_twin,
                  m.paper_success_rate]
        tables = "[" + ", ".join(_literal(t.name) for t in m.tables) + "]::VARCHAR[]"
        rows.append("(" + ", ".join([*(_literal(v) for v in values), tables]) + ")")
    typed = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in types.items())
    return f"CREATE OR REPLACE VIEW methods AS SELECT {typed} FROM (VALUES {', '.join(rows)}) AS t({', '.join(types)});"


def method_macros() -> str:
    """The ``methods`` view and the ``method_key`` macro that reads it (in this order)."""
    return methods_view() + "\n" + METHOD_KEY_MACRO


def stats_macros() -> str:
    """SQL macros for 95% intervals, generated from :mod:`zoo_study.stats` so its numbers (the normal
    quantile, the t table for df 1..30) live in one place; the queries and the Python agree by construction."""
    from zoo_study.stats import T_TABLE_MAX, Z95, t_quantile_975

    z = repr(float(Z95))
    t_list = "[" + ", ".join(repr(t_quantile_975(d)) for d in range(1, T_TABLE_MAX + 1)) + "]"
    # beyond the table: the Cornish-Fisher expansion of zoo_study.stats.t_975_expansion, term by term
    zz = float(Z95)
    g = [(zz**3 + zz) / 4, (5 * zz**5 + 16 * zz**3 + 3 * zz) / 96,
         (3 * zz**7 + 19 * zz**5 + 17 * zz**3 - 15 * zz) / 384,
         (79 * zz**9 + 776 * zz**7 + 1482 * zz**5 - 1920 * zz**3 - 945 * zz) / 92160]
    return f"""
CREATE OR REPLACE MACRO z975() AS {z}::DOUBLE;
CREATE OR REPLACE MACRO t975(df) AS CASE
    WHEN df IS NULL OR df < 1 THEN NULL
    WHEN df <= {T_TABLE_MAX} THEN ({t_list}::DOUBLE[])[df::BIGINT]
    ELSE {z} + {g[0]!r} / df + {g[1]!r} / df ^ 2 + {g[2]!r} / df ^ 3 + {g[3]!r} / df ^ 4
END;
CREATE OR REPLACE MACRO mean_ci_low(m, sd, n) AS CASE WHEN n >= 2 THEN m - t975(n - 1) * sd / sqrt(n) END;
CREATE OR REPLACE MACRO mean_ci_high(m, sd, n) AS CASE WHEN n >= 2 THEN m + t975(n - 1) * sd / sqrt(n) END;
CREATE OR REPLACE MACRO wilson_low(k, n) AS CASE WHEN n > 0 THEN greatest(0.0,
    ((k::DOUBLE / n) + {z} * {z} / (2.0 * n)) / (1 + {z} * {z} / n)
    - {z} * sqrt((k::DOUBLE / n) * (1 - k::DOUBLE / n) / n + {z} * {z} / (4.0 * n * n)) / (1 + {z} * {z} / n)) END;
CREATE OR REPLACE MACRO wilson_high(k, n) AS CASE WHEN n > 0 THEN least(1.0,
    ((k::DOUBLE / n) + {z} * {z} / (2.0 * n)) / (1 + {z} * {z} / n)
    + {z} * sqrt((k::DOUBLE / n) * (1 - k::DOUBLE / n) / n + {z} * {z} / (4.0 * n * n)) / (1 + {z} * {z} / n)) END;
CREATE OR REPLACE MACRO fisher_low(r, n) AS CASE WHEN n >= 4 AND r IS NOT NULL AND NOT isnan(r)
    THEN tanh(atanh(greatest(-0.999999999999, least(0.999999999999, r))) - {z} / sqrt(n - 3)) END;
CREATE OR REPLACE MACRO fisher_high(r, n) AS CASE WHEN n >= 4 AND r IS NOT NULL AND NOT isnan(r)
    THEN tanh(atanh(greatest(-0.999999999999, least(0.999999999999, r))) + {z} / sqrt(n - 3)) END;
CREATE OR REPLACE MACRO tango_b(g, l, n, d) AS -g - l + (2.0 * n - g + l) * d;
CREATE OR REPLACE MACRO tango_var(g, l, n, d) AS n * (2.0 * ((sqrt(greatest(tango_b(g, l, n, d) ^ 2
    + 8.0 * n * l * d * (1.0 - d), 0.0)) - tango_b(g, l, n, d)) / (4.0 * n)) + d * (1.0 - d));
CREATE OR REPLACE MACRO tango_z(g, l, n, d) AS CASE
    WHEN tango_var(g, l, n, d) > 0 THEN (g - l - n * d) / sqrt(tango_var(g, l, n, d))
    WHEN g - l - n * d = 0 THEN 0.0
    ELSE sign(g - l - n * d) * 'inf'::DOUBLE
END;
CREATE OR REPLACE MACRO claim_verdict(value, lo, hi, threshold, side) AS CASE
    WHEN value IS NULL OR isnan(value) OR threshold IS NULL THEN 'no data'
    WHEN lo IS NULL OR hi IS NULL OR isnan(lo) OR isnan(hi) THEN 'not enough power to tell'
    WHEN side = '>' AND lo > threshold THEN 'holds'
    WHEN side = '>' AND hi <= threshold THEN 'does not hold'
    WHEN side = '<' AND hi < threshold THEN 'holds'
    WHEN side = '<' AND lo >= threshold THEN 'does not hold'
    ELSE 'not enough power to tell'
END;
"""

