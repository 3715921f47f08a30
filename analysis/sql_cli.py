"""What ``zoo-study sql`` calls: run a query over a results root, print it, save it.

Why a separate module: the CLI (``pipelines/cli.py``) stays a thin argument parser; everything that
touches DuckDB, parameter binding, output formats and atomic writes lives here and is tested here.
"""

from __future__ import annotations

import datetime as dt
import decimal
import difflib
import io
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv

from analysis.db import Params, RefusedQuery, ResultsDB, query_description, query_names, query_text
from zoo_study.store import write_bytes_atomic, write_parquet_atomic

OUTPUT_SUFFIXES = (".csv", ".parquet")


class QueryError(RuntimeError):
    """A query failed to prepare or run, or was refused (not read-only, or it reads outside the root);
    the message names the query and the reason, on its first line."""


def warn_stderr(message: str) -> None:
    """The default ``warn`` of :func:`run_sql`: one line on stderr."""
    print(f"zoo-study: warning: {message}", file=sys.stderr)


def resolve_query(query: str) -> tuple[str, str]:
    """Turn ``query`` into (label, SQL text).

    ``query`` may be the name of a shipped query (``fig4a_success_rate``, with or without ``.sql``), a
    path to a ``.sql`` file, or SQL text. Why all three: people start from the shipped queries, copy one
    to edit it, and type one-liners.
    """
    text = query.strip()
    if not text:
        raise ValueError("empty query: give SQL text, a query name or a .sql file")
    stem = text[:-4] if text.endswith(".sql") else text
    if re.fullmatch(r"[A-Za-z0-9_]+", stem) and stem in query_names():
        return stem, query_text(stem)
    if text.endswith(".sql") and "\n" not in text:
        path = Path(text).expanduser()
        if path.is_file():
            return str(path), path.read_text(encoding="utf-8")
        raise FileNotFoundError(
            f"no SQL file {text!r} and no shipped query of that name; shipped queries: {', '.join(query_names())}"
        )
    return "SQL", query


def list_queries() -> list[tuple[str, str]]:
    """(name, one-line description) of every shipped query, for ``zoo-study sql --list``."""
    return [(name, query_description(name)) for name in query_names()]


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings from the command line into query parameters.

    Values are read as JSON when they parse (``3`` -> int, ``0.5`` -> float, ``true``, ``null``,
    ``[1,2]``) and kept as strings otherwise, so ``student=vit_s`` needs no quoting.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"bad parameter {item!r}: expected name=value with an identifier name")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_sql(
    root: str | os.PathLike[str],
    query: str,
    params: Params = None,
    out: str | os.PathLike[str] | None = None,
    warn: Callable[[str], None] | None = warn_stderr,
) -> pa.Table:
    """Run ``query`` over the views of results root ``root`` and return the rows.

    ``params`` are bound, never formatted into the SQL: a mapping binds ``$name`` placeholders, a list
    binds ``?`` in order. ``out`` (optional) is a ``.csv`` or ``.parquet`` path, written atomically by
    this function (SQL itself can write nothing: see :func:`analysis.db.check_read_only`). Each result
    file that could not be read, and so is missing from the rows, is passed to ``warn`` as one line.
    """
    out_path = check_out(out, root)
    label, sql = resolve_query(query)
    with ResultsDB(root) as db:
        try:
            table = db.query(sql, params)
        except RefusedQuery as exc:
            raise QueryError(f"query {label}: {exc}") from exc
        except Exception as exc:  # duckdb raises many types; name the query and keep the cause
            if not _is_duckdb_error(exc):
                raise
            if label == "SQL" and re.fullmatch(r"[A-Za-z0-9_.]+", query.strip()):
                raise QueryError(_not_a_name(query.strip(), exc)) from exc
            raise QueryError(f"query {label} failed: {exc}") from exc
        finally:  # name the files the rows leave out, even when the query failed
            if warn is not None:
                for line in db.skipped_lines():
                    warn(line)
    if out_path is not None:
        write_table(table, out_path)
    return table


def _not_a_name(word: str, exc: BaseException) -> str:
    """The one line for a bare word that is neither a shipped query nor SQL that runs: the hint first,
    since the CLI shows only the first line and DuckDB's message spans several."""
    stem = word[:-4] if word.endswith(".sql") else word
    close = difflib.get_close_matches(stem, query_names(), n=3)
    guess = f"did you mean {' or '.join(close)}? " if close else ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"{word!r} is not a shipped query name ({guess}`zoo-study sql --list` shows them) and does not run "
            f"as SQL either ({first})")


def _is_duckdb_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in ("duckdb", "_duckdb")


def _check_out(out: str | os.PathLike[str] | None) -> Path | None:
    if out is None:
        return None
    path = Path(out).expanduser()
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(
            f"cannot write {str(path)!r}: unknown output format {path.suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(OUTPUT_SUFFIXES)}"
        )
    return path


def check_out(out: str | os.PathLike[str] | None, root: str | os.PathLike[str]) -> Path | None:
    """``out`` as a path once it is known to be a writable kind of file outside results root ``root``.

    Why: ``sql`` is a read-only window on the root. An ``--out`` inside it would replace result files behind
    the lock's back (``--out R/scores/pairs.parquet`` with a filtered query shrank the pairs table, and the
    score stage then looked done). Links are resolved, so a path that reaches the root through a symlink
    is refused too. Raises ValueError with one line.
    """
    if out is None:
        return None
    text = os.fspath(out)
    if Path(text).expanduser().is_dir() or text.endswith(("/", os.sep)):
        raise ValueError(f"--out {text!r} is a folder; give a file name ending in {' or '.join(OUTPUT_SUFFIXES)}")
    path = _check_out(out)
    assert path is not None
    real_root = Path(root).expanduser().resolve()
    real = path.resolve()
    if real == real_root or real_root in real.parents:
        raise ValueError(f"--out {text!r} is inside the results root {real_root}, which sql only reads; "
                         "write the result elsewhere")
    return path


def write_table(table: pa.Table, out: str | os.PathLike[str]) -> Path:
    """Write ``table`` to a ``.csv`` or ``.parquet`` file atomically (temp file + rename), with the mode
    of a new file under this umask like every file the store writes (0644 under the usual 022)."""
    path = _check_out(out)
    assert path is not None
    if path.suffix.lower() == ".parquet":
        return write_parquet_atomic(table, path)
    return write_bytes_atomic(table_to_csv_bytes(table), path)


def table_to_csv_bytes(table: pa.Table) -> bytes:
    """CSV bytes of ``table``; nested columns (lists, structs) become JSON text, which CSV can hold."""
    cols = []
    for name, col in zip(table.column_names, table.columns):
        if pa.types.is_nested(col.type):
            col = pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()], pa.string())
        cols.append(col)
    flat = pa.table(cols, names=table.column_names) if cols else table
    buf = io.BytesIO()
    pacsv.write_csv(flat, buf)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- formatting
def format_value(value: Any) -> str:
    """One cell as text: NULL for missing, 6 significant digits for floats, JSON-like for lists."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.6g}"
    if isinstance(value, decimal.Decimal):
        return f"{float(value):.6g}"
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value).replace("\n", "\\n")


def check_max_rows(max_rows: object) -> int:
    """``max_rows`` once it is a whole number >= 0 (0: every row); else ValueError with one line."""
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 0:
        raise ValueError(f"max_rows (--max-rows) must be a whole number >= 1, or 0 for every row; got {max_rows!r}")
    return max_rows


def format_table(table: pa.Table, max_rows: int = 50) -> str:
    """A plain-text, column-aligned rendering of ``table`` for the terminal.

    Shows at most ``max_rows`` rows (numbers right-aligned; 0 shows every row) and says how many were
    left out.
    """
    check_max_rows(max_rows)
    names = table.column_names
    if not names:
        return "(no columns)"
    shown = table.slice(0, max_rows or table.num_rows)
    numeric = [
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) for t in table.schema.types
    ]
    cells = [[format_value(v) for v in col.to_pylist()] for col in shown.columns]
    widths = [max([len(n)] + [len(c) for c in col]) for n, col in zip(names, cells)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)]
    for i in range(shown.num_rows):
        out.append(line([col[i] for col in cells]))
    n = table.num_rows
    if n > shown.num_rows:
        out.append(f"({shown.num_rows} of {n} rows shown; {n - shown.num_rows} more)")
    else:
        out.append(f"({n} row{'s' if n != 1 else ''})")
    return "\n".join(out)
