"""The read-only sandbox of ``zoo-study sql``: which statements may run, and how our strings enter SQL.

Why a module of its own: this is the safety boundary of the analysis layer, and it is easier to review
(and to keep tight) when nothing else sits beside it. :class:`analysis.db.ResultsDB` confines DuckDB to
one results root and locks its configuration; before anything runs, :func:`check_read_only` refuses every
statement that is not a read-only query (no COPY, ATTACH, INSTALL/LOAD, SET, CREATE, INSERT ...).
Results are saved by our code (``--out``), never by SQL.

Quoting: user values are always bound as query parameters (:func:`check_params`). The only strings
formatted into SQL are the file globs in ``CREATE VIEW`` and the root in ``allowed_directories`` (DuckDB
cannot bind either); they are built from the resolved root with glob metacharacters escaped
(:func:`duckdb_glob_escape`) and single quotes doubled (:func:`sql_string_literal`).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import duckdb

__all__ = ["RefusedQuery", "check_read_only", "ALLOWED", "Params", "check_params", "sql_string_literal",
           "duckdb_glob_escape", "identifier"]


# ------------------------------------------------------------------------------------------ SQL quoting
def sql_string_literal(text: str) -> str:
    """``text`` as a single-quoted SQL string literal (quotes doubled). Only for paths in DDL."""
    if "\x00" in text:
        raise ValueError(f"a NUL character cannot appear in a path used in SQL: {text!r}")
    return "'" + text.replace("'", "''") + "'"


_GLOB_ESCAPES = {"[": "[[]", "*": "[*]", "?": "[?]"}


def duckdb_glob_escape(text: str) -> str:
    """Escape DuckDB glob metacharacters so ``text`` matches only itself (``[`` -> ``[[]`` and so on).

    Why: a results root such as ``runs/ablation[lr]`` would otherwise be read as a character class and
    match nothing, and the view would silently be empty.
    """
    return "".join(_GLOB_ESCAPES.get(ch, ch) for ch in text)


def identifier(name: str) -> str:
    """A view or table name as a quoted SQL identifier; names are ours, but quote anyway."""
    return '"' + name.replace('"', '""') + '"'


# ------------------------------------------------------------------------------------------- parameters
Params = Mapping[str, Any] | Sequence[Any] | None


def check_params(params: Params) -> dict[str, Any] | list[Any] | None:
    """Normalise query parameters: a mapping binds ``$name``, a sequence binds ``?`` / ``$1`` in order."""
    if params is None:
        return None
    if isinstance(params, Mapping):
        bad = [k for k in params if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
        if bad:
            raise ValueError(f"invalid parameter names {bad!r}: use identifiers, bound as $name in the query")
        return dict(params)
    if isinstance(params, (str, bytes)):
        raise TypeError("params must be a mapping (for $name) or a list (for ?), not a string")
    if isinstance(params, Sequence):
        return list(params)
    raise TypeError(f"params must be a mapping, a sequence or None, not {type(params).__name__}")


# --------------------------------------------------------------------------------------------- sandbox
class RefusedQuery(ValueError):
    """A statement that is not a read-only query over the views; refused before anything runs."""


_T = duckdb.StatementType
_READ_ONLY_PRAGMAS = frozenset({"version", "platform", "show", "show_tables", "show_tables_expanded", "table_info",
                                "database_list", "functions", "collations", "user_agent"})  # fmt: skip
_WHY = {**dict.fromkeys(("COPY", "EXPORT"), "results are saved with --out, never by SQL"),
        **dict.fromkeys(("SET", "VARIABLE_SET"), "the settings of this connection are fixed"),
        **dict.fromkeys(("ATTACH", "DETACH"), "only the views of this results root can be read"),
        **dict.fromkeys(("LOAD", "EXTENSION"), "extensions cannot be installed or loaded here")}  # fmt: skip
_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)  # whitespace and comments
_EXPLAIN = re.compile(r"explain\s+(?:analy[sz]e\s+)?(?:\([^)]*\)\s*)?", re.I)
_PRAGMA = re.compile(r"pragma\s+(\w+)\s*(?:\([^;]*\))?\s*;?\s*", re.I)
ALLOWED = "read-only queries only: SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN, read-only PRAGMA"


def _refuse(i: int, n: int, kind: str, text: str, why: str = "") -> RefusedQuery:
    where = f"statement {i + 1} of {n}" if n > 1 else "the statement"
    head = " ".join(_LEADING.sub("", text, count=1).split())[:60]
    why = why or _WHY.get(kind, f"{kind} is not a read-only query")
    return RefusedQuery(f"refused {where} ({kind}: {head!r}): {why}; {ALLOWED}")


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise :class:`RefusedQuery` unless every statement of ``sql`` only reads.

    Why DuckDB's own parser: a regex on the text is fooled by comments, CTEs and quoting. A statement
    that does not parse is left to DuckDB, which reports the syntax error when the query runs.
    """
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error:
        return
    n = len(statements)
    for i, st in enumerate(statements):
        try:
            kind = st.type
        except ValueError:  # a statement type newer than this duckdb's Python enum (UPDATE EXTENSIONS ...)
            raise _refuse(i, n, "UNKNOWN", st.query) from None
        text = _LEADING.sub("", st.query, count=1)
        if kind == _T.SELECT:
            continue
        if kind == _T.EXPLAIN:  # EXPLAIN ANALYZE runs its statement: only a SELECT may follow
            m = _EXPLAIN.match(text)
            try:
                inner = con.extract_statements(text[m.end() :]) if m else []
                if len(inner) == 1 and inner[0].type == _T.SELECT:
                    continue
            except (duckdb.Error, ValueError):
                pass
            raise _refuse(i, n, "EXPLAIN", text, "only EXPLAIN of a SELECT is allowed")
        if kind == _T.PRAGMA:
            m = _PRAGMA.fullmatch(text)
            if m and m.group(1).lower() in _READ_ONLY_PRAGMAS:
                continue
            raise _refuse(i, n, "PRAGMA", text, f"read-only pragmas: {', '.join(sorted(_READ_ONLY_PRAGMAS))}")
        raise _refuse(i, n, kind.name, text)
