"""One DuckDB view per result table of a results root, over the table's Parquet files.

Why views over Parquet globs instead of loading tables: the pipeline keeps adding files while a study
runs (one summary per transfer job, one prediction file per model). A view over
``read_parquet('<root>/transfers/*/summary.parquet', union_by_name=true)`` re-lists the folder on every
query, so a report or an ad-hoc ``zoo-study sql`` sees new jobs without any rebuild step, and files
written by an older schema (a missing nullable column) still line up by name.

A view whose files do not exist yet (a partial root) is still created, empty, with the columns and types
of its schema, so every query runs on any root and simply returns no rows; :meth:`FileViews.refresh`
swaps it for the real one once the folder gains files. A file that is not readable Parquet (truncated,
foreign), or a symlink leading outside the root, would make DuckDB reject the whole view: such files are
left out and listed with the reason (:attr:`FileViews.skipped`, :meth:`FileViews.skipped_lines`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.sandbox import duckdb_glob_escape, identifier, sql_string_literal
from zoo_study.store import TABLES, TableSpec

VIEW_SOURCES = TABLES.values()  # live: a method registered later (its own tables) is seen by the next connection
VIEWS: dict[str, TableSpec] = TABLES


class _LeftOut(Exception):
    """Some of a view's files must be left out before DuckDB sees the glob (links leading outside)."""


def _unreadable(path: Path) -> str | None:
    """Why ``path`` has no readable Parquet footer (a truncated or foreign file), or None when it has one."""
    try:
        pq.read_schema(path)
    except (OSError, pa.ArrowException, ValueError) as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


class FileViews:
    """The views of the catalogue's tables on one connection, kept in step with the files under ``root``."""

    def __init__(self, con: duckdb.DuckDBPyConnection, root: Path):
        self.con, self.root = con, root
        self._state: dict[str, tuple] = {}
        self.skipped: dict[str, list[Path]] = {}  # view -> files left out because they are not Parquet
        self.skip_reasons: dict[Path, str] = {}  # each such file -> why it could not be read
        self.outside: set[Path] = set()  # the skipped files that are links leading outside the root

    def create_empty(self) -> None:
        """One empty table per view with its schema's columns and types (before the sandbox locks DuckDB:
        registering an Arrow table is not possible afterwards), and every view over it for now.

        Why the empty views first: views derived from these (``per_pair``) are bound when created, so they
        are created over the declared types; a file with a clashing type then fails only the queries that
        read it, not the connection."""
        for src in VIEW_SOURCES:
            tmp = f"__arrow_empty_{src.name}"
            self.con.register(tmp, pa.Table.from_batches([], schema=src.schema))
            self.con.execute(f"CREATE TABLE {identifier('_empty_' + src.name)} AS SELECT * FROM {identifier(tmp)}")
            self.con.unregister(tmp)
            self.con.execute(self.view_sql(src.name, glob=False))

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

    def install(self, view: str) -> None:
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
                self.install(src.name)
            elif state[0] == "files":
                if tuple(self.files(src.name)) != state[1]:
                    self.install(src.name)
            elif (state[0] == "glob") != self.has_files(src.name):
                self.install(src.name)

    def reinstall_broken(self) -> bool:
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
                self.install(src.name)
                changed = True
        return changed
