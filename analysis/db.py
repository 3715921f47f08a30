"""DuckDB views over a results root: the only way the analysis layer reads results.

There is one view per table of the catalogue :data:`zoo_study.store.TABLES` (its ``name``, over its
``glob`` under the root, with its ``schema``): models, predictions, pairs, pair_classes, transfers, epochs,
transfer_predictions, hparams, failures, ... They follow the files as the pipeline writes them, exist
(empty, typed) before their first file, and leave out unreadable files, named with the reason in
``ResultsDB.skipped`` / :meth:`ResultsDB.skipped_lines` (:mod:`analysis.file_views`).

Derived views, defined here once so the queries do not repeat them: ``paper_transfers`` (pretrained
students, no batch mixing, no variant), ``paper_outcomes`` (those plus the failed paper transfers, counted
as harmed), ``per_pair`` and ``per_pair_outcomes`` (one row per (method key, student, teacher) of the
single-teacher paper transfers: the runs (seeds) of a pair averaged, see :data:`PER_PAIR_VIEW`).

Sandbox: the connection is a read-only window on one results root. DuckDB may read files under the root
only (``allowed_directories`` with ``enable_external_access = false``; no spill files, no extension
install or autoload), its configuration is then locked (``lock_configuration``), and :meth:`ResultsDB.query`
refuses, before anything runs, every statement that is not a read-only query (:mod:`analysis.sandbox`,
which also holds the quoting rules for the few strings formatted into SQL). Every connection defines the
shared SQL macros of :mod:`analysis.macros` (``method_key``, 95% intervals, ``claim_verdict``).

The sandbox checks, quoting helpers and parameter type (``RefusedQuery``, ``check_read_only``,
``check_params``, ``Params``, ``sql_string_literal``, ``duckdb_glob_escape``, ``identifier``) are
re-exported here, so callers import everything from ``analysis.db``.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any, Callable

import duckdb
import pyarrow as pa

from analysis.file_views import VIEW_SOURCES, VIEWS, FileViews  # noqa: F401  (VIEWS, VIEW_SOURCES re-exported)
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
# One row per (method key, student, teacher) of the single-teacher paper transfers: the runs of a pair (its
# seeds) averaged first, so that each pair counts once in a figure, table or claim. sig_pos / sig_neg: every
# run significantly above / below the student's start (exact McNemar p < 0.05 and more gains than losses, or
# the reverse; zoo_study/stats.py); run_ci_low/high: the paired score interval of the pair's run (the
# lowest, with several runs); pair_ci_low/high: that interval with one run, else the 95% t interval over the
# runs; seed_sd: the sample sd of delta_last over the runs.
PER_PAIR_VIEW = """
CREATE OR REPLACE VIEW per_pair AS
SELECT method_key(method, hparams_json) AS method, student, teacher,
       count(*)                AS n_runs,
       avg(delta_last)         AS delta_last,
       avg(delta_best)         AS delta_best,
       stddev_samp(delta_last) AS seed_sd,
       avg(acc_before)         AS acc_before,
       avg(gain)               AS gain,
       avg(loss)               AS loss,
       avg(teacher_share)      AS teacher_share,
       avg(teacher_share_pos)  AS teacher_share_pos,
       avg(teacher_share_neg)  AS teacher_share_neg,
       coalesce(bool_and(p_mcnemar < 0.05 AND n_gain > n_loss), false) AS sig_pos,
       coalesce(bool_and(p_mcnemar < 0.05 AND n_loss > n_gain), false) AS sig_neg,
       min(delta_ci_low)       AS run_ci_low,
       min(delta_ci_high)      AS run_ci_high,
       CASE WHEN count(*) = 1 THEN min(delta_ci_low)
            ELSE mean_ci_low(avg(delta_last), stddev_samp(delta_last), count(*)) END  AS pair_ci_low,
       CASE WHEN count(*) = 1 THEN min(delta_ci_high)
            ELSE mean_ci_high(avg(delta_last), stddev_samp(delta_last), count(*)) END AS pair_ci_high
FROM paper_transfers
WHERE study_part = 'transfer' AND mode = 'single'
GROUP BY method_key(method, hparams_json), student, teacher
"""
# The same pairs for the claims, with no survivorship (paper_outcomes): a failed run counts as harmed;
# n_failed says how many of a pair's runs did. share_pos / share_neg: its mean teacher routing shares.
PER_PAIR_OUTCOMES_VIEW = """
CREATE OR REPLACE VIEW per_pair_outcomes AS
SELECT method_key(method, hparams_json) AS method, student, teacher,
       avg(delta_last)                  AS delta_last,
       avg(loss)                        AS loss,
       avg(teacher_share_pos)           AS share_pos,
       avg(teacher_share_neg)           AS share_neg,
       count(*) FILTER (WHERE failed)   AS n_failed
FROM paper_outcomes
WHERE study_part = 'transfer' AND mode = 'single'
GROUP BY method_key(method, hparams_json), student, teacher
"""
# In dependency order. The paper's analyses read pretrained students without batch mixing; mixup and
# scratch variants (transfer.variants) are their own experiment (the Mixup-KD table), never pooled as seeds.
DERIVED_VIEWS = (PAPER_TRANSFERS_VIEW, FAILED_PAPER_TRANSFERS_VIEW, PAPER_OUTCOMES_VIEW, PER_PAIR_VIEW,
                 PER_PAIR_OUTCOMES_VIEW)
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
from zoo_study.store import ResultsLayout

QUERIES_DIR = Path(__file__).with_name("queries")


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
        self.views = FileViews(self.con, self.root)
        self.con.execute(method_macros())
        self.con.execute(stats_macros())
        self.views.create_empty()
        self._sandbox()
        for sql in DERIVED_VIEWS:
            self.con.execute(sql)
        self.views.refresh(force=True)

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

    # -- the file views (analysis.file_views)
    @property
    def skipped(self) -> dict[str, list[Path]]:
        """View -> its files left out because they are not readable Parquet (or lead outside the root)."""
        return self.views.skipped

    @property
    def skip_reasons(self) -> dict[Path, str]:
        """Each left-out file -> why it could not be read."""
        return self.views.skip_reasons

    def skipped_lines(self) -> list[str]:
        """One line per file left out, with the reason (see :meth:`FileViews.skipped_lines`)."""
        return self.views.skipped_lines()

    def refresh(self, force: bool = False) -> None:
        """Point each view at its files (cheap when nothing changed: one listing per view)."""
        self.views.refresh(force)

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
            if not self.views.reinstall_broken():
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


def connect(root: str | os.PathLike[str], *, threads: int | None = None) -> ResultsDB:
    """Open a :class:`ResultsDB` over ``root`` (which must exist; it may be empty)."""
    return ResultsDB(root, threads=threads)
