"""DuckDB views over a results root: the only way the analysis layer reads results.

Why views over Parquet globs instead of loading tables: the pipeline keeps adding files while a study
runs (one summary per transfer job, one prediction file per model). A view over
``read_parquet('<root>/transfers/*/summary.parquet', union_by_name=true)`` re-lists the folder on every
query, so a report or an ad-hoc ``zoo-study sql`` sees new jobs without any rebuild step, and files
written by an older schema (a missing nullable column) still line up by name.

There is one view per table of the catalogue :data:`zoo_study.store.TABLES` (its ``name``, over its
``glob`` under the root, with its ``schema``): models, predictions, pairs, pair_classes, transfers, epochs,
transfer_predictions, hparams, failures. A view whose files do not exist yet (a partial root) is still
created, empty, with the columns and types of its schema, so every query runs on any root and simply
returns no rows. :class:`ResultsDB` re-checks before each query whether such a folder gained files and
then swaps the empty view for the real one. A file that is not readable Parquet (truncated, foreign)
would make DuckDB reject the whole view; such files are left out, listed with the reason in
``ResultsDB.skipped`` / :meth:`ResultsDB.skipped_lines`, and named by ``zoo-study sql`` and the report.

Sandbox: the connection is a read-only window on one results root. DuckDB may read files under the root
only (``allowed_directories`` with ``enable_external_access = false``; no spill files, no extension
install or autoload), its configuration is then locked (``lock_configuration``), and :meth:`ResultsDB.query`
refuses, before anything runs, every statement that is not a read-only query (see :func:`check_read_only`):
no COPY, ATTACH, INSTALL/LOAD, SET, CREATE, INSERT ... Results are saved by our code (``--out``), never by SQL.

Macros available to every query:

``method_key(method, hparams_json)``
    The method name, with ``_unsup`` appended when the run is unsupervised (``hparams_json`` has
    ``"unsupervised": true`` or ``"supervised": false``) and the name does not already say so. Why: the
    paper reports supervised and unsupervised KL+DP separately (Tab 1 vs Tab 3), and the summary schema
    has no column for it.

95% intervals (generated from :mod:`zoo_study.stats`, see :func:`_stats_macros`):
``z975()``, ``t975(df)`` (t table for df 1..30, the normal quantile beyond); ``mean_ci_low/high(mean,
sd, n)`` (t interval of a mean over n independent units, NULL for n < 2); ``wilson_low/high(k, n)``
(Wilson interval of k / n); ``fisher_low/high(r, n)`` (Fisher-z interval of a Pearson r, NULL for
n < 4); ``tango_z(g, l, n, d)`` (the score statistic of ``paired_delta_ci``, for bisection in SQL);
``claim_verdict(value, lo, hi, threshold, side)``: 'holds' when the interval lies entirely on the claim's
side (``side`` '>' or '<') of the threshold, 'does not hold' when entirely on the other side, 'not enough
power to tell' when it spans the threshold (or has no width: one unit), 'no data' without a value.

Safety: user values are always bound as query parameters. The only strings formatted into SQL are the
file globs in ``CREATE VIEW`` and the root in ``allowed_directories`` (DuckDB cannot bind either); they are
built from the resolved root with glob metacharacters escaped and single quotes doubled.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from zoo_study.store import TABLES, ResultsLayout, TableSpec

QUERIES_DIR = Path(__file__).with_name("queries")

VIEW_SOURCES: tuple[TableSpec, ...] = tuple(TABLES.values())
VIEWS: dict[str, TableSpec] = TABLES

_MACROS = """
CREATE OR REPLACE MACRO method_key(m, hp) AS CASE
    WHEN m LIKE '%unsup%' THEN m
    WHEN json_valid(hp) AND (
        lower(coalesce(json_extract_string(hp, '$.unsupervised'), '')) IN ('true', '1')
        OR lower(coalesce(json_extract_string(hp, '$.supervised'), '')) IN ('false', '0')
    ) THEN m || '_unsup'
    ELSE m
END;
"""


def _stats_macros() -> str:
    """SQL macros for 95% intervals, generated from :mod:`zoo_study.stats` so its numbers (the normal
    quantile, the t table for df 1..30) live in one place; the queries and the Python agree by construction."""
    from zoo_study.stats import _T975, Z95

    z = repr(float(Z95))
    t_list = "[" + ", ".join(repr(float(v)) for v in _T975) + "]"
    return f"""
CREATE OR REPLACE MACRO z975() AS {z}::DOUBLE;
CREATE OR REPLACE MACRO t975(df) AS CASE
    WHEN df IS NULL OR df < 1 THEN NULL
    WHEN df <= {len(_T975)} THEN ({t_list}::DOUBLE[])[df::BIGINT]
    ELSE {z}::DOUBLE
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


def _to_arrow(rel: Any) -> pa.Table:
    """Materialise a DuckDB relation as an Arrow table across DuckDB versions (1.x and 2.x)."""
    for attr in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        fn = getattr(rel, attr, None)
        if fn is not None:
            out = fn()
            if isinstance(out, pa.RecordBatchReader):
                out = out.read_all()
            return out
    raise RuntimeError("this DuckDB version offers no Arrow export on relations")


# ---------------------------------------------------------------------------------------------- queries
def query_names() -> list[str]:
    """Names of the shipped queries (files ``analysis/queries/<name>.sql``), sorted."""
    return sorted(p.stem for p in QUERIES_DIR.glob("*.sql"))


def query_text(name: str) -> str:
    """The SQL of a shipped query, by name (with or without ``.sql``)."""
    stem = name[:-4] if name.endswith(".sql") else name
    if not re.fullmatch(r"[A-Za-z0-9_]+", stem):
        raise ValueError(f"invalid query name {name!r}: use letters, digits and '_' (see {QUERIES_DIR})")
    path = QUERIES_DIR / f"{stem}.sql"
    if not path.is_file():
        raise KeyError(f"no query named {stem!r}; shipped queries are: {', '.join(query_names())}")
    return path.read_text(encoding="utf-8")


def query_description(name: str) -> str:
    """The first line of a query's comment header, for listings."""
    for line in query_text(name).splitlines():
        line = line.strip()
        if line.startswith("--"):
            return line.lstrip("-").strip()
        if line:
            break
    return ""


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


# ------------------------------------------------------------------------------------------- connection
class ResultsDB:
    """An in-memory DuckDB connection with one view per result table of a results root.

    Use :meth:`query` (or :meth:`named`) rather than the raw ``con``: it first refreshes views whose
    folders gained their first file since the last query. Views over folders that already had files
    follow new files by themselves (the glob is re-listed by DuckDB on every scan).
    """

    def __init__(self, root: str | os.PathLike[str], *, threads: int | None = None):
        root_path = Path(root).expanduser()
        if not root_path.exists():
            raise FileNotFoundError(f"results root {str(root_path)!r} does not exist")
        if not root_path.is_dir():
            raise NotADirectoryError(f"results root {str(root_path)!r} is not a directory")
        self.root = root_path.resolve()
        self.layout = ResultsLayout(self.root)
        config: dict[str, Any] = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
        if threads is not None:
            config["threads"] = int(threads)
        self.con = duckdb.connect(database=":memory:", config=config)
        self._state: dict[str, tuple] = {}
        self.skipped: dict[str, list[Path]] = {}  # view -> files left out because they are not Parquet
        self.skip_reasons: dict[Path, str] = {}  # each such file -> why it could not be read
        self.con.execute(_MACROS)
        self.con.execute(_stats_macros())
        for src in VIEW_SOURCES:
            empty = pa.Table.from_batches([], schema=src.schema)
            tmp = f"__arrow_empty_{src.name}"
            self.con.register(tmp, empty)
            self.con.execute(f"CREATE TABLE {identifier('_empty_' + src.name)} AS SELECT * FROM {identifier(tmp)}")
            self.con.unregister(tmp)
        self._sandbox()
        self.refresh(force=True)

    def _sandbox(self) -> None:
        """Let DuckDB read files under the root and nothing else, then lock every setting.

        Both spellings of the root are allowed: DuckDB checks the glob pattern of a view (with ``[``, ``*``
        and ``?`` escaped) as well as each file it expands to. No temp directory: a spill file would be a
        write outside the root (and DuckDB would allow reads there too).
        """
        root = self.root.as_posix().rstrip("/")
        dirs = ", ".join(sql_string_literal(d + "/") for d in dict.fromkeys([root, duckdb_glob_escape(root)]))
        try:
            self.con.execute("SET temp_directory = ''")
            self.con.execute(f"SET allowed_directories = [{dirs}]")
        except duckdb.Error as exc:
            raise RuntimeError(f"DuckDB {duckdb.__version__} cannot confine queries to the results root "
                               f"(allowed_directories needs DuckDB 1.2 or newer): {exc}") from exc
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")

    # -- views
    def files(self, view: str) -> list[Path]:
        """The files of ``view`` that exist right now, sorted."""
        return sorted(self.root.glob(VIEWS[view].pattern))

    def has_files(self, view: str) -> bool:
        """Whether at least one file of ``view`` exists right now."""
        return next(iter(self.root.glob(VIEWS[view].pattern)), None) is not None

    def view_sql(self, view: str, files: Sequence[Path] | None = None, *, glob: bool = True) -> str:
        """The ``CREATE VIEW`` statement for ``view``: over its glob, over an explicit file list, or
        (no glob, no files) over the empty typed table."""
        src = VIEWS[view]
        empty = f"SELECT * FROM {identifier('_empty_' + src.name)}"
        if glob:
            source = sql_string_literal(duckdb_glob_escape(self.root.as_posix()) + "/" + src.pattern)
        elif files:
            source = "[" + ", ".join(sql_string_literal(duckdb_glob_escape(Path(f).as_posix())) for f in files) + "]"
        else:
            return f"CREATE OR REPLACE VIEW {identifier(src.name)} AS {empty}"
        # The empty typed table first: every schema column exists with its declared type even when all
        # files predate a column; hive_partitioning off so a root like runs/lr=0.1/ adds no column.
        return (
            f"CREATE OR REPLACE VIEW {identifier(src.name)} AS {empty} UNION ALL BY NAME "
            f"SELECT * FROM read_parquet({source}, union_by_name = true, hive_partitioning = false)"
        )

    def _install(self, view: str) -> None:
        """(Re)create one view from the files present now, leaving out files that are not Parquet."""
        files = self.files(view)
        for f in self.skipped.pop(view, []):
            self.skip_reasons.pop(f, None)
        if not files:
            self.con.execute(self.view_sql(view, glob=False))
            self._state[view] = ("empty",)
            return
        try:
            self.con.execute(self.view_sql(view))
            self._state[view] = ("glob",)
            return
        except duckdb.Error:
            reasons = {f: why for f in files if (why := _unreadable(f)) is not None}
            if not reasons:
                raise  # not a broken file (say, clashing column types): let the caller see it
        good = [f for f in files if f not in reasons]
        # An explicit list of the readable files; re-listed before every query, so it still follows
        # new files, and goes back to the glob once the broken file is replaced.
        self.con.execute(self.view_sql(view, good, glob=False))
        self._state[view] = ("files", tuple(files))
        self.skipped[view] = list(reasons)
        self.skip_reasons.update(reasons)

    def skipped_lines(self) -> list[str]:
        """One line per file left out: 'skipped unreadable file transfers/ab/summary.parquet: <reason>'."""
        return [f"skipped unreadable file {f.relative_to(self.root).as_posix()}: {self.skip_reasons.get(f, '?')}"
                for files in self.skipped.values() for f in files]

    def refresh(self, force: bool = False) -> None:
        """Point each view at its files, or at the empty typed table while it has none.

        Cheap when nothing changed: one directory listing per view.
        """
        for src in VIEW_SOURCES:
            state = self._state.get(src.name)
            if force or state is None:
                self._install(src.name)
            elif state[0] == "files":
                if tuple(self.files(src.name)) != state[1]:
                    self._install(src.name)
            elif (state[0] == "glob") != self.has_files(src.name):
                self._install(src.name)

    # -- queries
    def query(self, sql: str, params: Params = None) -> pa.Table:
        """Run ``sql`` with bound ``params`` and return the result as an Arrow table."""
        self.refresh()
        bound = check_params(params)
        check_read_only(self.con, sql)
        try:
            return self._run(sql, bound)
        except duckdb.Error:
            # A broken file may have appeared under a glob view since it was created: leave it out
            # and try once more; any other error is the query's own and is raised unchanged.
            if not self._reinstall_broken_views():
                raise
            return self._run(sql, bound)

    def _run(self, sql: str, bound: dict[str, Any] | list[Any] | None) -> pa.Table:
        try:
            rel = self.con.sql(sql, params=bound)
            return pa.table({}) if rel is None else _to_arrow(rel)  # None: no statement (only comments)
        except duckdb.PermissionException as exc:  # the sandbox said no (a file outside the root ...)
            why = str(exc).splitlines()[0].removeprefix("Permission Error: ")
            raise RefusedQuery(f"refused: only files under the results root {self.root} can be read ({why})") from exc

    def _reinstall_broken_views(self) -> bool:
        changed = False
        for src in VIEW_SOURCES:
            if self._state.get(src.name, ("",))[0] != "glob":
                continue
            try:
                self.con.execute(f"SELECT * FROM {identifier(src.name)} LIMIT 0")
            except duckdb.Error:
                self._install(src.name)
                changed = True
        return changed

    def named(self, name: str, params: Params = None) -> pa.Table:
        """Run a shipped query from ``analysis/queries/<name>.sql``."""
        return self.query(query_text(name), params)

    def counts(self) -> dict[str, int]:
        """Rows per view: what exists in this root right now."""
        self.refresh()
        out: dict[str, int] = {}
        for src in VIEW_SOURCES:
            out[src.name] = int(self.con.sql(f"SELECT count(*) FROM {identifier(src.name)}").fetchall()[0][0])
        return out

    # -- lifetime
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "ResultsDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unreadable(path: Path) -> str | None:
    """Why ``path`` has no readable Parquet footer (a truncated or foreign file), or None when it has one."""
    try:
        pq.read_schema(path)
    except (OSError, pa.ArrowException, ValueError) as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def connect(root: str | os.PathLike[str], *, threads: int | None = None) -> ResultsDB:
    """Open a :class:`ResultsDB` over ``root`` (which must exist; it may be empty)."""
    return ResultsDB(root, threads=threads)
