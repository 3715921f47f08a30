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
refuses, before anything runs, every statement that is not a read-only query (:mod:`analysis.sandbox`,
which also holds the quoting rules for the few strings formatted into SQL). Every connection defines the
shared SQL macros of :mod:`analysis.macros` (``method_key``, 95% intervals, ``claim_verdict``) and its
``methods`` view (one row per registered method: label, order, capability flags, tables).

The sandbox checks, quoting helpers and parameter type (``RefusedQuery``, ``check_read_only``,
``check_params``, ``Params``, ``sql_string_literal``, ``duckdb_glob_escape``, ``identifier``) are
re-exported here, so callers import everything from ``analysis.db``.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.macros import method_macros, stats_macros

PAPER_TRANSFERS_VIEW = (
    "CREATE OR REPLACE VIEW paper_transfers AS SELECT * FROM transfers "
    "WHERE coalesce(student_init, 'pretrained') = 'pretrained' AND coalesce(mixup, 'none') = 'none' "
    "AND variant IS NULL"
)
# Survivorship: a transfer that failed or diverged writes no summary row, so a claim read from
# paper_transfers alone would silently drop the worst outcomes. paper_outcomes adds one row per failed
# paper transfer (a failure record of a transfer / multi_teacher job that ran, attempts > 0, and has no
# summary since), read from the failure's job spec, counted as harmed: its student is taken as broken to
# chance level (delta_last = 1/C - acc_before, loss = acc_before (1 - 1/C), gain = (1 - acc_before) / C,
# with acc_before the student's scored accuracy), never as successful. ``failed`` tells them apart.
FAILED_PAPER_TRANSFERS_VIEW = """
CREATE OR REPLACE VIEW failed_paper_transfers AS
WITH f AS (
    SELECT job_id, error,
           json_extract_string(spec_json, '$.config.method') AS method,
           coalesce(json_extract_string(spec_json, '$.config.mode'), 'single') AS mode,
           json_extract_string(spec_json, '$.student.model_id') AS student,
           array_to_string(json_extract_string(spec_json, '$.teachers[*].model_id'), '+') AS teacher,
           coalesce(json_extract(spec_json, '$.config.hparams')::VARCHAR, '{}') AS hparams_json,
           json_extract_string(spec_json, '$.config.study_part') AS study_part_given,
           coalesce(try_cast(json_extract_string(spec_json, '$.config.seed') AS BIGINT), 0) AS seed,
           json_extract_string(spec_json, '$.config.student_init') AS student_init,
           json_extract_string(spec_json, '$.config.mixup') AS mixup,
           json_extract_string(spec_json, '$.config.variant') AS variant
    FROM failures
    WHERE stage IN ('transfer', 'multi_teacher') AND attempts > 0 AND json_valid(spec_json)
      AND job_id NOT IN (SELECT job_id FROM transfers)
)
SELECT job_id, error, method, mode, student, teacher, hparams_json, seed,
       coalesce(study_part_given, CASE WHEN mode = 'single' THEN 'transfer' ELSE 'multi_teacher' END) AS study_part
FROM f
WHERE method IS NOT NULL AND student IS NOT NULL
  AND coalesce(student_init, 'pretrained') = 'pretrained' AND coalesce(mixup, 'none') = 'none'
  AND coalesce(variant, '') = ''
"""
PAPER_OUTCOMES_VIEW = """
CREATE OR REPLACE VIEW paper_outcomes AS
SELECT job_id, study_part, method, mode, student, teacher, hparams_json, seed,
       delta_last, gain, loss, teacher_share_pos, teacher_share_neg, false AS failed
FROM paper_transfers
UNION ALL
SELECT f.job_id, f.study_part, f.method, f.mode, f.student, f.teacher, f.hparams_json, f.seed,
       1.0 / s.num_classes - s.acc_s, (1.0 - s.acc_s) / s.num_classes, s.acc_s * (1.0 - 1.0 / s.num_classes),
       NULL, NULL, true
FROM failed_paper_transfers f
LEFT JOIN (SELECT student, any_value(acc_s) AS acc_s, any_value(num_classes) AS num_classes
           FROM pairs GROUP BY student) s ON s.student = f.student
"""
from analysis.sandbox import (  # noqa: F401  (re-exported: callers import these from analysis.db)
    ALLOWED,
    Params,
    RefusedQuery,
    check_params,
    check_read_only,
    duckdb_glob_escape,
    identifier,
    sql_string_literal,
)
from zoo_study.store import TABLES, ResultsLayout, TableSpec

QUERIES_DIR = Path(__file__).with_name("queries")

VIEW_SOURCES = TABLES.values()  # live: a method registered later (its own tables) is seen by the next connection
VIEWS: dict[str, TableSpec] = TABLES


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
        self.outside: set[Path] = set()  # the skipped files that are links leading outside the root
        self.con.execute(method_macros())
        self.con.execute(stats_macros())
        for src in VIEW_SOURCES:
            empty = pa.Table.from_batches([], schema=src.schema)
            tmp = f"__arrow_empty_{src.name}"
            self.con.register(tmp, empty)
            self.con.execute(f"CREATE TABLE {identifier('_empty_' + src.name)} AS SELECT * FROM {identifier(tmp)}")
            self.con.unregister(tmp)
        self._sandbox()
        self.refresh(force=True)
        # The paper's analyses read pretrained students without batch mixing; mixup and scratch variants
        # (transfer.variants) are their own experiment (the Mixup-KD table), never pooled as extra seeds.
        self.con.execute(PAPER_TRANSFERS_VIEW)
        self.con.execute(FAILED_PAPER_TRANSFERS_VIEW)
        self.con.execute(PAPER_OUTCOMES_VIEW)

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
        """(Re)create one view from the files present now, leaving out files that are not Parquet and
        files reached through a symlink that leads outside the root (DuckDB may not read those)."""
        files = self.files(view)
        for f in self.skipped.pop(view, []):
            self.skip_reasons.pop(f, None)
            self.outside.discard(f)
        if not files:
            self.con.execute(self.view_sql(view, glob=False))
            self._state[view] = ("empty",)
            return
        reasons = {f: why for f in files if (why := self._leads_outside(f)) is not None}
        self.outside.update(reasons)
        try:
            if reasons:  # the glob would reach them: go straight to the list of the others
                raise _LeftOut
            self.con.execute(self.view_sql(view))
            self._state[view] = ("glob",)
            return
        except (duckdb.Error, _LeftOut):
            reasons.update({f: why for f in files if f not in reasons and (why := _unreadable(f)) is not None})
            if not reasons:
                raise  # not a broken file (say, clashing column types): let the caller see it
        good = [f for f in files if f not in reasons]
        # An explicit list of the readable files; re-listed before every query, so it still follows
        # new files, and goes back to the glob once the broken file is replaced.
        self.con.execute(self.view_sql(view, good, glob=False))
        self._state[view] = ("files", tuple(files))
        self.skipped[view] = list(reasons)
        self.skip_reasons.update(reasons)

    def _leads_outside(self, path: Path) -> str | None:
        """Why ``path`` (under the root by name) may not be read: a symlink on its way leads outside the
        root; None when its real location is inside."""
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:  # a dangling or looping link
            return f"a broken symlink ({type(exc).__name__})"
        if real == self.root or self.root in real.parents:
            return None
        return f"a symlink that leads outside the results root (to {real})"

    def skipped_lines(self) -> list[str]:
        """One line per file left out: 'skipped unreadable file transfers/ab/summary.parquet: <reason>', or
        'skipped transfers/evil/summary.parquet: a symlink that leads outside the results root (to ...)'."""
        return [f"skipped {'' if f in self.outside else 'unreadable file '}{f.relative_to(self.root).as_posix()}: "
                f"{self.skip_reasons.get(f, '?')}" for files in self.skipped.values() for f in files]

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
        except (duckdb.Error, RefusedQuery):
            # A broken file, or a symlink leading outside, may have appeared under a glob view since it
            # was created: leave it out and try once more; any other error is the query's own.
            if not self._reinstall_broken_views():
                raise
            return self._run(sql, bound)

    def _run(self, sql: str, bound: dict[str, Any] | list[Any] | None) -> pa.Table:
        def run() -> pa.Table:
            rel = self.con.sql(sql, params=bound)
            return pa.table({}) if rel is None else _to_arrow(rel)  # None: no statement (only comments)

        try:
            return _interruptible(self.con, run)
        except duckdb.InterruptException:
            raise KeyboardInterrupt from None
        except duckdb.PermissionException as exc:  # the sandbox said no (a file outside the root ...)
            why = str(exc).splitlines()[0].removeprefix("Permission Error: ")
            raise RefusedQuery(f"refused: only files under the results root {self.root} can be read ({why})") from exc

    def _reinstall_broken_views(self) -> bool:
        """Re-create the glob views that now fail or reach a link leading outside; whether any did."""
        changed = False
        for src in VIEW_SOURCES:
            if self._state.get(src.name, ("",))[0] != "glob":
                continue
            try:
                self.con.execute(f"SELECT * FROM {identifier(src.name)} LIMIT 0")
                broken = any(self._leads_outside(f) for f in self.files(src.name))
            except duckdb.Error:
                broken = True
            if broken:
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


class _LeftOut(Exception):
    """Some of a view's files must be left out before DuckDB sees the glob (links leading outside)."""


def _interruptible(con: duckdb.DuckDBPyConnection, fn: Callable[[], pa.Table]) -> pa.Table:
    """``fn()`` in a helper thread, so that Ctrl-C in the main thread stops the query.

    Why: while DuckDB executes, the main thread is inside C++ and Python's SIGINT handler cannot run, so
    Ctrl-C did nothing until the query ended. Waiting in the main thread keeps Ctrl-C deliverable; it
    interrupts the connection and raises KeyboardInterrupt (the CLI exits 130).
    """
    if threading.current_thread() is not threading.main_thread():
        return fn()
    box: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: an interrupted join can mark a running thread as ended

    def work() -> None:
        try:
            box["out"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            box["exc"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="duckdb-query", daemon=True).start()
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        con.interrupt()
        done.wait(10)  # the query stops at its next check; the connection can then be closed
        raise
    if "exc" in box:
        raise box["exc"]
    return box["out"]


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
