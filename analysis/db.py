"""DuckDB views over a results root: the only way the analysis layer reads results.

Why views over Parquet globs instead of loading tables: the pipeline keeps adding files while a study
runs (one summary per transfer job, one prediction file per model). A view over
``read_parquet('<root>/transfers/*/summary.parquet', union_by_name=true)`` re-lists the folder on every
query, so a report or an ad-hoc ``zoo-study sql`` sees new jobs without any rebuild step, and files
written by an older schema (a missing nullable column) still line up by name.

A view whose files do not exist yet (a partial root) is still created, empty, with the columns and types
of its schema in :mod:`zoo_study.store`, so every query runs on any root and simply returns no rows.
:class:`ResultsDB` re-checks before each query whether such a folder gained files and then swaps the
empty view for the real one. A file that is not readable Parquet (truncated, foreign) would make DuckDB
reject the whole view; such files are left out, listed in ``ResultsDB.skipped``, and named in the report.

Views (name: files under the root, schema):

=====================  ===================================  ============================
models                 zoo/models/*.parquet                 MODEL_SCHEMA
predictions            predictions/*.parquet                PREDICTION_SCHEMA
pairs                  scores/pairs.parquet                 PAIR_SCHEMA
pair_classes           scores/pair_classes.parquet          PAIR_CLASS_SCHEMA
transfers              transfers/*/summary.parquet          TRANSFER_SUMMARY_SCHEMA
epochs                 transfers/*/epochs.parquet           TRANSFER_EPOCH_SCHEMA
transfer_predictions   transfers/*/predictions.parquet      TRANSFER_PREDICTION_SCHEMA
hparams                hparams/*.parquet                    TRANSFER_SUMMARY_SCHEMA
failures               failures/*.parquet                   FAILURE_SCHEMA
=====================  ===================================  ============================

Macros available to every query:

``method_key(method, hparams_json)``
    The method name, with ``_unsup`` appended when the run is unsupervised (``hparams_json`` has
    ``"unsupervised": true`` or ``"supervised": false``) and the name does not already say so. Why: the
    paper reports supervised and unsupervised KL+DP separately (Tab 1 vs Tab 3), and the summary schema
    has no column for it.

Safety: user values are always bound as query parameters. The only strings formatted into SQL are the
file globs in ``CREATE VIEW`` (DuckDB cannot bind a table-function path there); they are built from the
resolved root with glob metacharacters escaped and single quotes doubled.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from zoo_study.store import (
    FAILURE_SCHEMA,
    MODEL_SCHEMA,
    PAIR_CLASS_SCHEMA,
    PAIR_SCHEMA,
    PREDICTION_SCHEMA,
    TRANSFER_EPOCH_SCHEMA,
    TRANSFER_PREDICTION_SCHEMA,
    TRANSFER_SUMMARY_SCHEMA,
    ResultsLayout,
)

QUERIES_DIR = Path(__file__).with_name("queries")


@dataclass(frozen=True)
class ViewSource:
    """Where one view's files live (a glob relative to the root) and the schema they follow."""

    name: str
    pattern: str  # relative to the results root, '/'-separated, may contain '*'
    schema: pa.Schema
    stage: str  # the pipeline stage that writes these files, for "missing" messages
    what: str  # human name of the rows, for "missing" messages


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _view_sources() -> tuple[ViewSource, ...]:
    """Derive every glob from :class:`ResultsLayout`, so a path change in the store reaches us."""
    root = Path("/__root__")
    lay = ResultsLayout(root)
    return (
        ViewSource("models", f"{_rel(lay.models_dir, root)}/*.parquet", MODEL_SCHEMA, "zoo", "model catalog rows"),
        ViewSource(
            "predictions",
            f"{_rel(lay.predictions_dir, root)}/*.parquet",
            PREDICTION_SCHEMA,
            "predict",
            "model predictions",
        ),
        ViewSource("pairs", _rel(lay.pairs, root), PAIR_SCHEMA, "score", "pair scores"),
        ViewSource("pair_classes", _rel(lay.pair_classes, root), PAIR_CLASS_SCHEMA, "score", "per-class pair flips"),
        ViewSource(
            "transfers",
            f"{_rel(lay.transfers_dir, root)}/*/{lay.transfer_summary('x').name}",
            TRANSFER_SUMMARY_SCHEMA,
            "transfer",
            "transfer results",
        ),
        ViewSource(
            "epochs",
            f"{_rel(lay.transfers_dir, root)}/*/{lay.transfer_epochs('x').name}",
            TRANSFER_EPOCH_SCHEMA,
            "transfer",
            "per-epoch transfer curves",
        ),
        ViewSource(
            "transfer_predictions",
            f"{_rel(lay.transfers_dir, root)}/*/{lay.transfer_predictions('x').name}",
            TRANSFER_PREDICTION_SCHEMA,
            "transfer",
            "per-sample transfer predictions",
        ),
        ViewSource(
            "hparams",
            f"{_rel(lay.hparams_dir, root)}/*.parquet",
            TRANSFER_SUMMARY_SCHEMA,
            "hyper-parameter grid",
            "hyper-parameter grid results",
        ),
        ViewSource("failures", f"{_rel(lay.failures_dir, root)}/*.parquet", FAILURE_SCHEMA, "any", "failed jobs"),
    )


VIEW_SOURCES: tuple[ViewSource, ...] = _view_sources()
VIEWS: dict[str, ViewSource] = {v.name: v for v in VIEW_SOURCES}

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
        config: dict[str, Any] = {}
        if threads is not None:
            config["threads"] = int(threads)
        self.con = duckdb.connect(database=":memory:", config=config)
        self._state: dict[str, tuple] = {}
        self.skipped: dict[str, list[Path]] = {}  # view -> files left out because they are not Parquet
        self.con.execute(_MACROS)
        for src in VIEW_SOURCES:
            empty = pa.Table.from_batches([], schema=src.schema)
            tmp = f"__arrow_empty_{src.name}"
            self.con.register(tmp, empty)
            self.con.execute(f"CREATE TABLE {identifier('_empty_' + src.name)} AS SELECT * FROM {identifier(tmp)}")
            self.con.unregister(tmp)
        self.refresh(force=True)

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
        self.skipped.pop(view, None)
        if not files:
            self.con.execute(self.view_sql(view, glob=False))
            self._state[view] = ("empty",)
            return
        try:
            self.con.execute(self.view_sql(view))
            self._state[view] = ("glob",)
            return
        except duckdb.Error:
            bad = [f for f in files if not _readable_parquet(f)]
            if not bad:
                raise  # not a broken file (say, clashing column types): let the caller see it
        good = [f for f in files if f not in bad]
        # An explicit list of the readable files; re-listed before every query, so it still follows
        # new files, and goes back to the glob once the broken file is replaced.
        self.con.execute(self.view_sql(view, good, glob=False))
        self._state[view] = ("files", tuple(files))
        self.skipped[view] = bad

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
        try:
            rel = self.con.sql(sql, params=bound)
        except duckdb.Error:
            # A broken file may have appeared under a glob view since it was created: leave it out
            # and try once more; any other error is the query's own and is raised unchanged.
            if not self._reinstall_broken_views():
                raise
            rel = self.con.sql(sql, params=bound)
        if rel is None:  # a statement without a result (SET, CREATE ...)
            return pa.table({})
        return _to_arrow(rel)

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


def _readable_parquet(path: Path) -> bool:
    """Whether ``path`` has a readable Parquet footer (a truncated or foreign file does not)."""
    try:
        pq.read_schema(path)
    except (OSError, pa.ArrowException, ValueError):
        return False
    return True


def connect(root: str | os.PathLike[str], *, threads: int | None = None) -> ResultsDB:
    """Open a :class:`ResultsDB` over ``root`` (which must exist; it may be empty)."""
    return ResultsDB(root, threads=threads)
