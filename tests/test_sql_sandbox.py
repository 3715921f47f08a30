"""``zoo-study sql`` is a read-only window on one results root (analysis.db sandbox, analysis.sql_cli).

Why: a query is text a person pastes or a script builds; it must not read files beside the results
(``/etc/passwd``, a colleague's study), write anywhere (``COPY ... TO``), attach databases, load
extensions or change settings. Every attempt is refused with a one-line reason and writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from analysis.db import RefusedQuery, check_read_only, connect
from analysis.report import build_report
from analysis.sql_cli import QueryError, run_sql
from helpers.analysis_fixtures import RootBuilder, build_partial_root
from pipelines.cli import main


@pytest.fixture()
def world(tmp_path: Path) -> dict[str, Path]:
    """A results root, and beside it a folder of files a query must not reach."""
    root = tmp_path / "runs" / "study"
    build_partial_root(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("token\nhunter2\n")
    pq.write_table(pa.table({"token": ["hunter2"]}), outside / "secret.parquet")
    return {"tmp": tmp_path, "root": root, "outside": outside}


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code)
    out, err = capsys.readouterr()
    return code, out, err


def escapes(w: dict[str, Path]) -> list[tuple[str, str]]:
    """(SQL, a word the refusal must contain) for each way out of the root."""
    t, root, o = w["tmp"].as_posix(), w["root"].as_posix(), w["outside"].as_posix()
    return [
        (f"SELECT * FROM read_csv('{o}/secret.csv')", "results root"),
        (f"SELECT * FROM read_parquet('{o}/secret.parquet')", "results root"),
        (f"SELECT * FROM '{o}/secret.parquet'", "results root"),
        (f"SELECT * FROM read_text('{root}/../../outside/secret.csv')", "results root"),
        ("SELECT * FROM read_csv('/etc/passwd', sep = ':')", "results root"),
        ("SELECT * FROM glob('/*')", "results root"),
        (f"SELECT * FROM glob('{t}/*')", "results root"),
        (f"COPY (SELECT 42) TO '{t}/x.csv'", "COPY"),
        (f"COPY (SELECT 42) TO '{root}/x.csv'", "COPY"),  # DuckDB itself would allow this one
        (f"EXPLAIN ANALYZE COPY (SELECT 42) TO '{root}/x.csv'", "EXPLAIN"),
        (f"EXPORT DATABASE '{t}/export'", "EXPORT"),
        (f"ATTACH '{t}/x.duckdb' AS x", "ATTACH"),
        ("ATTACH ':memory:' AS m", "ATTACH"),
        ("DETACH memory", "DETACH"),
        ("INSTALL httpfs", "extensions"),
        ("LOAD httpfs", "extensions"),
        ("SET threads = 1", "settings"),
        ("SET enable_external_access = true", "settings"),
        ("RESET threads", "settings"),
        ("PRAGMA threads = 1", "settings"),
        ("PRAGMA enable_profiling", "PRAGMA"),
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
        ("CREATE OR REPLACE VIEW pairs AS SELECT 1", "CREATE"),
        ("DROP VIEW pairs", "DROP"),
        ("CALL checkpoint()", "CALL"),
        ("UPDATE EXTENSIONS", "refused"),
        (f"SELECT 1; COPY (SELECT 42) TO '{t}/x.csv'", "statement 2 of 2"),
    ]


# ------------------------------------------------------------------------------------------ refusals
def test_every_escape_is_refused_by_the_library_and_writes_nothing(world) -> None:
    before = listing(world["tmp"])
    for sql, word in escapes(world):
        with pytest.raises(QueryError) as err:
            run_sql(world["root"], sql, warn=None)
        msg = str(err.value)
        assert "refused" in msg and word in msg and "\n" not in msg, (sql, msg)
        assert "hunter2" not in msg
    assert listing(world["tmp"]) == before


def test_every_escape_is_refused_by_the_cli_with_exit_2_and_one_line(world, capsys) -> None:
    before = listing(world["tmp"])
    for sql, word in escapes(world):
        code, out, err = run_cli(["sql", str(world["root"]), sql], capsys)
        assert code == 2, (sql, out, err)
        assert out == "" and err.startswith("zoo-study: error: query SQL: refused"), (sql, err)
        assert len(err.strip().splitlines()) == 1 and word in err, (sql, err)
    assert listing(world["tmp"]) == before


def test_a_refused_batch_runs_none_of_its_statements(world) -> None:
    with connect(world["root"]) as db:
        with pytest.raises(RefusedQuery, match="statement 1 of 3"):
            db.query("CREATE TABLE t AS SELECT 1; SELECT * FROM t; ATTACH ':memory:' AS m")
        with pytest.raises(Exception, match="t does not exist"):
            db.query("SELECT * FROM t")
        assert db.query("SELECT count(*) AS n FROM pairs").column("n").to_pylist() == [6]  # still usable


def test_the_connection_is_locked_and_sees_only_the_root(world) -> None:
    with connect(world["root"]) as db:
        row = db.query(
            "SELECT current_setting('enable_external_access') AS ext, current_setting('lock_configuration') AS lock,"
            " current_setting('allowed_directories') AS dirs, current_setting('temp_directory') AS tmp,"
            " current_setting('autoload_known_extensions') AS autoload,"
            " current_setting('autoinstall_known_extensions') AS autoinstall"
        ).to_pylist()[0]
        assert row["ext"] is False and row["lock"] is True and row["tmp"] == ""
        assert row["autoload"] is False and row["autoinstall"] is False
        assert row["dirs"] == [db.root.as_posix() + "/"]
        # reading the root's own files directly is fine: that is what the window is for
        files = db.query(f"SELECT file FROM glob('{db.root.as_posix()}/**/*.parquet')").column("file").to_pylist()
        assert files and all(f.startswith(db.root.as_posix() + "/") for f in files)


def test_a_root_with_glob_characters_does_not_open_its_look_alike_siblings(tmp_path: Path) -> None:
    root = tmp_path / "runs [x]" / "study"
    RootBuilder(root).model("m1", "cnn", 1.0)
    sibling = tmp_path / "runs x" / "study"  # what 'runs [x]' matches as a glob
    sibling.mkdir(parents=True)
    pq.write_table(pa.table({"token": ["hunter2"]}), sibling / "secret.parquet")
    with connect(root) as db:
        assert db.query("SELECT model_id FROM models").column("model_id").to_pylist() == ["m1"]
        with pytest.raises(RefusedQuery, match="results root"):
            db.query(f"SELECT * FROM read_parquet('{root.as_posix()}/*.parquet')")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "-- a comment first\n/* and a block */ WITH a AS (SELECT 1 AS x) SELECT * FROM a",
        "FROM pairs LIMIT 1",
        "VALUES (1), (2)",
        "DESCRIBE pairs",
        "SHOW TABLES",
        "SUMMARIZE pairs",
        "EXPLAIN SELECT * FROM pairs",
        "EXPLAIN ANALYZE SELECT count(*) FROM pairs",
        "PRAGMA version",
        "PRAGMA table_info('pairs')",
        "SELECT 1; SELECT 2",
        "SELECT * FROM query('SELECT 1')",
    ],
)
def test_read_only_statements_pass_the_check(world, sql: str) -> None:
    with connect(world["root"]) as db:
        check_read_only(db.con, sql)
        assert db.query(sql).num_rows >= 1


# ------------------------------------------------------------------------------------ what still works
def test_select_named_query_and_bound_parameters_through_the_cli(world, capsys) -> None:
    root = str(world["root"])
    code, out, err = run_cli(["sql", root, "SELECT count(*) AS n FROM pairs"], capsys)
    assert code == 0 and err == "" and out.splitlines()[2].strip() == "6", out
    code, out, _ = run_cli(["sql", root, "overview"], capsys)
    assert code == 0 and "scored pairs" in out
    teacher = run_sql(world["root"], "SELECT teacher FROM pairs ORDER BY teacher LIMIT 1").column(0)[0].as_py()
    sql = "SELECT count(*) AS n FROM pairs WHERE teacher = $t AND n_samples > $k"
    code, out, _ = run_cli(["sql", root, sql, "--param", f"t={teacher}", "--param", "k=0"], capsys)
    assert code == 0 and out.splitlines()[2].strip() != "0", out
    # a parameter is a value, never SQL: a quote in it is just a character
    t = run_sql(world["root"], sql, {"t": "x' OR '1'='1", "k": 0})
    assert t.column("n").to_pylist() == [0]
    assert run_sql(world["root"], "SELECT ?::INT + ?::INT AS s", [2, 3]).column("s").to_pylist() == [5]


def test_out_is_written_by_our_code_atomically(world, capsys) -> None:
    before = listing(world["root"])
    for name in ("pairs.csv", "pairs.parquet"):
        target = world["tmp"] / "exports" / name
        code, out, _ = run_cli(["sql", str(world["root"]), "SELECT * FROM pairs", "--out", str(target)], capsys)
        assert code == 0 and out.strip() == f"wrote 6 row(s) to {target}"
        table = pq.read_table(target) if name.endswith(".parquet") else pacsv.read_csv(target)
        assert table.num_rows == 6
    assert listing(world["tmp"] / "exports") == ["pairs.csv", "pairs.parquet"]  # no temp files left
    assert listing(world["root"]) == before
    code, _, err = run_cli(["sql", str(world["root"]), "SELECT 1", "--out", str(world["tmp"] / "x.txt")], capsys)
    assert code == 2 and "unknown output format" in err


# ---------------------------------------------------------------------------------- unreadable files
def _broken_summary(root: Path) -> Path:
    bad = root / "transfers" / "abc" / "summary.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PAR1 not really")
    return bad


def test_unreadable_files_are_named_on_stderr(world, capsys) -> None:
    RootBuilder(world["root"]).transfer("s", "t1", "kl", 0.01)
    _broken_summary(world["root"])
    code, out, err = run_cli(["sql", str(world["root"]), "SELECT count(*) AS n FROM transfers"], capsys)
    assert code == 0 and out.splitlines()[2].strip() == "1"
    (line,) = err.strip().splitlines()
    assert line.startswith("zoo-study: warning: skipped unreadable file transfers/abc/summary.parquet: ")
    assert len(line) > len("zoo-study: warning: skipped unreadable file transfers/abc/summary.parquet: ") + 5
    seen: list[str] = []
    run_sql(world["root"], "SELECT 1", warn=seen.append)
    assert seen == [line.removeprefix("zoo-study: warning: ")]


def test_the_report_names_unreadable_files_with_the_reason(world) -> None:
    _broken_summary(world["root"])
    with connect(world["root"]) as db:
        (reason,) = db.skip_reasons.values()
    page = build_report(world["root"]).read_text()
    assert "transfers/abc/summary.parquet" in page and reason.split()[0] in page


# ----------------------------------------------------------------------------------- report command
def test_report_refuses_a_folder_that_is_not_a_results_root(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("my home folder")
    code, out, err = run_cli(["report", str(tmp_path)], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "not a results root" in err
    assert listing(tmp_path) == ["notes.txt"]


def test_report_runs_on_a_root_with_only_its_config(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.toml").write_text("[study]\nname = 'x'\n")
    code, out, _ = run_cli(["report", str(tmp_path)], capsys)
    assert code == 0 and out.strip() == str(tmp_path / "report" / "index.html")


# ------------------------------------------------------------------------ --out, --max-rows, messages
def test_out_inside_the_results_root_is_refused_and_changes_nothing(world, capsys) -> None:
    """Issue 22: ``--out R/scores/pairs.parquet`` with a filtered query replaced the pairs table."""
    root = world["root"]
    alias = world["tmp"] / "alias"
    alias.symlink_to(root)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for out in (root / "scores" / "pairs.parquet", root / "new.csv", alias / "scores" / "pairs.parquet"):
        code, stdout, err = run_cli(["sql", str(root), "SELECT * FROM pairs LIMIT 1", "--out", str(out)], capsys)
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1, err
        assert "inside the results root" in err
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_out_that_is_a_folder_is_refused_with_one_line(world, capsys) -> None:
    folder = world["tmp"] / "x.csv"
    folder.mkdir()
    for out in (folder, world["outside"], f"{world['tmp']}/new_dir/"):
        code, _, err = run_cli(["sql", str(world["root"]), "SELECT 1", "--out", str(out)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "is a folder" in err, err


@pytest.mark.parametrize("bad", ["-1", "-40"])
def test_negative_max_rows_is_refused_with_one_line(world, capsys, bad) -> None:
    code, out, err = run_cli(["sql", str(world["root"]), "SELECT 1", "--max-rows", bad], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"got {bad}" in err and "--max-rows" in err


def test_max_rows_zero_prints_every_row(world, capsys) -> None:
    code, out, _ = run_cli(["sql", str(world["root"]), "SELECT * FROM range(45)", "--max-rows", "0"], capsys)
    assert code == 0 and out.splitlines()[-1] == "(45 rows)" and out.splitlines()[-2].strip() == "44"


def test_a_misspelled_query_name_shows_the_hint_on_its_one_line(world, capsys) -> None:
    code, _, err = run_cli(["sql", str(world["root"]), "fig4a_sucess_rate"], capsys)
    (line,) = err.strip().splitlines()
    assert code == 2 and "not a shipped query name" in line and "did you mean fig4a_success_rate" in line


def test_a_file_or_missing_root_is_named_as_such(world, capsys) -> None:
    afile = world["outside"] / "secret.csv"
    code, _, err = run_cli(["sql", str(afile), "SELECT 1"], capsys)
    assert code == 2 and "is a file, not a results root folder" in err and "does not exist" not in err
    code, _, err = run_cli(["sql", str(world["tmp"] / "missing"), "SELECT 1"], capsys)
    assert code == 2 and "does not exist" in err


def test_ctrl_c_stops_a_long_query_with_exit_130(world) -> None:
    """DuckDB runs in C++: before, Ctrl-C waited for the whole query (here: hours) to end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    query = "SELECT sum(a.range * b.range) FROM range(100000) a, range(10000000) b"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "sql", str(world["root"]), query],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=repo)
    try:
        deadline = time.time() + 60  # wait until the query runs: the process is past its imports and busy
        while time.time() < deadline and _cpu_seconds(proc.pid) < 3.0:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and err.strip().splitlines() == ["zoo-study: interrupted"], err


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_symlink_leading_outside_that_appears_later_is_skipped_too(world) -> None:
    root = world["root"]
    RootBuilder(root).transfer("s", "t1", "kl", 0.01)
    (summary,) = root.glob("transfers/*/summary.parquet")
    elsewhere = world["tmp"] / "elsewhere"
    elsewhere.mkdir()
    pq.write_table(pq.read_table(summary), elsewhere / "summary.parquet")
    with connect(root) as db:
        assert db.query("SELECT count(*) AS n FROM transfers").to_pylist() == [{"n": 1}]
        (root / "transfers" / "evil").symlink_to(elsewhere)  # while the connection is open
        assert db.query("SELECT count(*) AS n FROM transfers").to_pylist() == [{"n": 1}]
        assert [line.split(":")[0] for line in db.skipped_lines()] == ["skipped transfers/evil/summary.parquet"]
        with pytest.raises(RefusedQuery):  # reading it by name stays refused
            db.query(f"SELECT * FROM read_parquet('{root.as_posix()}/transfers/evil/summary.parquet')")
