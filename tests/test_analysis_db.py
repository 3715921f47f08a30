"""DuckDB views over results roots, and the functions behind ``zoo-study sql``."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from analysis.db import VIEW_SOURCES, connect, duckdb_glob_escape, query_names, sql_string_literal
from analysis.sql_cli import QueryError, format_table, list_queries, parse_params, run_sql
from helpers.analysis_fixtures import RootBuilder, build_partial_root
from zoo_study.store import MODEL_SCHEMA, SCHEMAS, TRANSFER_SUMMARY_SCHEMA


def _same_type(got: pa.DataType, want: pa.DataType) -> bool:
    """Arrow types equal up to list child-field names and timestamp unit/zone (DuckDB normalises those)."""
    if pa.types.is_list(want):
        return pa.types.is_list(got) and _same_type(got.value_type, want.value_type)
    if pa.types.is_timestamp(want):
        return pa.types.is_timestamp(got)
    return got == want


# ------------------------------------------------------------------------------------------- views
def test_every_view_exists_on_an_empty_root_with_the_schema_columns(tmp_path: Path) -> None:
    with connect(tmp_path) as db:
        assert db.counts() == {v.name: 0 for v in VIEW_SOURCES}
        for src in VIEW_SOURCES:
            t = db.query(f"SELECT * FROM {src.name}")
            assert t.num_rows == 0
            assert t.column_names == src.schema.names, src.name
            for f in src.schema:
                assert _same_type(t.schema.field(f.name).type, f.type), (src.name, f.name, t.schema.field(f.name).type)
    # every store schema has its view, and hparams reuse the summary schema
    assert {v.name for v in VIEW_SOURCES} == set(SCHEMAS) | {"hparams"}
    assert next(v for v in VIEW_SOURCES if v.name == "hparams").schema == TRANSFER_SUMMARY_SCHEMA


def test_every_shipped_query_runs_on_an_empty_root(tmp_path: Path) -> None:
    with connect(tmp_path) as db:
        for name in query_names():
            t = db.named(name)
            # overview counts and study_size always have their row(s); a claim says 'no data' in its rows
            expected = 7 if name == "overview" else 1 if name == "study_size" else None if name.startswith("claim_") else 0
            if expected is None:
                assert t.num_rows >= 1 and set(t.column("verdict").to_pylist()) == {"no data"}, name
            else:
                assert t.num_rows == expected, name


def test_every_shipped_query_has_a_comment_header() -> None:
    listing = dict(list_queries())
    assert len(listing) >= 20
    for name, description in listing.items():
        assert description, f"{name}.sql needs a '-- what it computes' header"


def test_partial_root_has_data_in_some_views_and_empty_typed_views_elsewhere(tmp_path: Path) -> None:
    build_partial_root(tmp_path)
    with connect(tmp_path) as db:
        counts = db.counts()
        assert counts["models"] == 5 and counts["pairs"] == 6 and counts["pair_classes"] == 30
        assert counts["transfers"] == counts["epochs"] == counts["failures"] == 0
        # a query joining a filled view with an empty one runs and returns nothing
        t = db.query("SELECT p.teacher, t.delta_last FROM pairs p JOIN transfers t USING (teacher, student)")
        assert t.num_rows == 0


def test_new_files_show_up_without_reconnecting(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    with connect(tmp_path) as db:
        assert db.query("SELECT count(*) AS n FROM transfers").column("n")[0].as_py() == 0
        b.transfer("s", "t1", "kl", 0.01)  # first file: the empty view must be swapped for the glob
        assert db.query("SELECT count(*) AS n FROM transfers").column("n")[0].as_py() == 1
        b.transfer("s", "t2", "kl", 0.02)  # second file: the glob itself picks it up
        assert db.query("SELECT count(*) AS n FROM transfers").column("n")[0].as_py() == 2
        assert db.counts()["transfers"] == 2


def test_unreadable_files_are_left_out_and_listed(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    b.transfer("s", "t1", "kl", 0.01)
    bad = b.layout.transfer_summary("broken")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PAR1 truncated")
    with connect(tmp_path) as db:
        assert db.counts()["transfers"] == 1
        assert db.skipped == {"transfers": [bad]}
        b.transfer("s", "t2", "kl", 0.02)  # still follows new files while one is broken
        assert db.counts()["transfers"] == 2
        bad.unlink()  # gone: back to the plain glob
        assert db.counts()["transfers"] == 2 and db.skipped == {}
        # a broken file that appears under a working glob view is left out on the next query
        bad.write_bytes(b"garbage")
        t = db.query("SELECT count(*) AS n FROM transfers")
        assert t.column("n").to_pylist() == [2] and db.skipped == {"transfers": [bad]}


def test_files_missing_a_nullable_column_line_up_by_name(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    b.model("full", "cnn", 5.0)
    old = pq.read_table(b.layout.model_row("full")).drop_columns(["train_seconds", "recipe_json"])
    pq.write_table(old, b.layout.models_dir / "old.parquet")  # an older writer without two columns
    with connect(tmp_path) as db:
        t = db.query("SELECT model_id, train_seconds, recipe_json FROM models ORDER BY model_id")
        assert t.column("model_id").to_pylist() == ["full", "full"]
        assert t.column("train_seconds").to_pylist() == [None, None]
        assert db.query("SELECT * FROM models").column_names == MODEL_SCHEMA.names


@pytest.mark.parametrize("dirname", ["it's a=b", "runs [x] *star? 'q'", "lr=0.1"])
def test_awkward_root_paths_are_escaped_and_add_no_hive_columns(tmp_path: Path, dirname: str) -> None:
    root = tmp_path / dirname / "study"
    b = RootBuilder(root)
    b.model("m1", "cnn", 1.0)
    b.model("m2", "mlp", 2.0)
    b.pair_row("m1", "m2", acc_t=0.6, acc_s=0.5, rho_pos=0.1)
    b.write_scores()
    with connect(root) as db:
        t = db.query("SELECT * FROM models ORDER BY model_id")
        assert t.column("model_id").to_pylist() == ["m1", "m2"]
        assert t.column_names == MODEL_SCHEMA.names  # no 'a' or 'lr' column from key=value folders
        assert db.counts()["pairs"] == 1


def test_sql_quoting_helpers() -> None:
    assert sql_string_literal("it's") == "'it''s'"
    assert duckdb_glob_escape("/a[b]/c*d?e") == "/a[[]b]/c[*]d[?]e"
    with pytest.raises(ValueError, match="NUL"):
        sql_string_literal("a\x00b")


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        connect(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        connect(tmp_path / "file")


def test_per_pair_view_averages_the_runs_of_a_pair_by_hand(tmp_path: Path) -> None:
    """The one per-pair aggregation the figures, tables and claims read (issue 23): two seeds of (s, t1) become
    one row, mixup variants and multi-teacher runs stay out, and per_pair_outcomes counts a failed run."""
    b = RootBuilder(tmp_path)
    # McNemar by hand (two-sided exact binomial): 30 vs 10 -> p = 0.0022; 12 vs 2 -> p = 2 (1 + 14 + 91) / 2^14
    # = 0.0129; 5 vs 10 -> p = 2 (1 + 15 + 105 + 455 + 1365 + 3003) / 2^15 = 0.302
    b.transfer("s", "t1", "kl", 0.20, seed=0, n_eval=100, n_gain=30, n_loss=10)
    b.transfer("s", "t1", "kl", 0.10, seed=1, n_eval=100, n_gain=12, n_loss=2)
    one = b.transfer("s", "t2", "kl", -0.05, n_eval=100, n_gain=5, n_loss=10)
    b.transfer("s", "t1", "kl", 0.90, mixup="pmu", n_eval=100, n_gain=90, n_loss=0)  # a variant: not pooled
    b.transfer("s", ["t1", "t2"], "kl", 0.50, mode="sequential", n_eval=100, n_gain=50, n_loss=0)
    b.failed_transfer("s", "t2", "kl", seed=1)
    run = pq.read_table(b.layout.transfer_summary(one)).to_pylist()[0]
    with connect(tmp_path, threads=1) as db:
        rows = db.query("SELECT * FROM per_pair ORDER BY teacher").to_pylist()
        outcomes = db.query("SELECT teacher, n_failed FROM per_pair_outcomes ORDER BY teacher").to_pylist()
    assert [(r["method"], r["student"], r["teacher"], r["n_runs"]) for r in rows] == [("kl", "s", "t1", 2),
                                                                                     ("kl", "s", "t2", 1)]
    two, single = rows
    assert two["delta_last"] == pytest.approx(0.15)
    assert two["seed_sd"] == pytest.approx(0.05 * 2**0.5)  # sqrt(((0.2 - 0.15)^2 + (0.1 - 0.15)^2) / 1)
    # two runs: the t interval over them, 0.15 -/+ t(0.975, 1 df) * sd / sqrt(2) = 0.15 -/+ 12.7062 * 0.05
    assert (two["pair_ci_low"], two["pair_ci_high"]) == (pytest.approx(0.15 - 0.635310, abs=1e-5),
                                                         pytest.approx(0.15 + 0.635310, abs=1e-5))
    assert (two["sig_pos"], two["sig_neg"]) == (True, False)  # both runs significant
    assert (single["sig_pos"], single["sig_neg"], single["seed_sd"]) == (False, False, None)
    assert (single["pair_ci_low"], single["pair_ci_high"]) == (run["delta_ci_low"], run["delta_ci_high"])
    assert outcomes == [{"teacher": "t1", "n_failed": 0}, {"teacher": "t2", "n_failed": 1}]


# ---------------------------------------------------------------------------------------- run_sql
@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sqlroot")
    b = RootBuilder(root)
    b.transfer("s1", "t1", "kl", 0.01)
    b.transfer("s1", "t2", "kl_dp", 0.02)
    b.transfer("s2", ["t1", "t2"], "kl_dp", 0.03, mode="sequential")
    return root


def test_run_sql_binds_named_and_positional_parameters(small_root: Path) -> None:
    t = run_sql(small_root, "SELECT teacher FROM transfers WHERE student = $s AND method = $m", {"s": "s1", "m": "kl_dp"})
    assert t.column("teacher").to_pylist() == ["t2"]
    t = run_sql(small_root, "SELECT count(*) AS n FROM transfers WHERE student = ?", ["s1"])
    assert t.column("n").to_pylist() == [2]


def test_run_sql_parameters_are_values_not_sql(small_root: Path) -> None:
    evil = "s1' OR '1'='1"
    t = run_sql(small_root, "SELECT * FROM transfers WHERE student = $s", {"s": evil})
    assert t.num_rows == 0
    drop = "x'; DROP VIEW transfers; --"
    assert run_sql(small_root, "SELECT $v AS v", {"v": drop}).column("v").to_pylist() == [drop]


def test_run_sql_runs_named_queries_and_sql_files(small_root: Path, tmp_path: Path) -> None:
    by_name = run_sql(small_root, "fig4a_success_rate")
    by_stem = run_sql(small_root, "fig4a_success_rate.sql")
    assert by_name.equals(by_stem) and by_name.num_rows == 2
    f = tmp_path / "mine.sql"
    f.write_text("-- mine\nSELECT count(*) AS n FROM transfers WHERE mode = $mode")
    assert run_sql(small_root, str(f), {"mode": "sequential"}).column("n").to_pylist() == [1]
    with pytest.raises(FileNotFoundError, match="shipped queries"):
        run_sql(small_root, str(tmp_path / "missing.sql"))


def test_run_sql_errors_name_the_query(small_root: Path) -> None:
    with pytest.raises(QueryError, match="SELEC"):
        run_sql(small_root, "SELEC 1")
    with pytest.raises(QueryError, match="not a shipped query name"):
        run_sql(small_root, "fig99_nothing")
    with pytest.raises(QueryError):
        run_sql(small_root, "SELECT $missing AS x")
    with pytest.raises(TypeError, match="mapping"):
        run_sql(small_root, "SELECT 1", "s1")  # type: ignore[arg-type]


def test_run_sql_writes_csv_and_parquet_atomically(small_root: Path, tmp_path: Path) -> None:
    q = "SELECT student, teachers, delta_last FROM transfers ORDER BY student, teacher"
    t = run_sql(small_root, q, out=tmp_path / "out" / "r.parquet")
    back = pq.read_table(tmp_path / "out" / "r.parquet")
    assert back.equals(t)
    run_sql(small_root, q, out=tmp_path / "r.csv")
    csv = pacsv.read_csv(tmp_path / "r.csv")
    assert csv.column("student").to_pylist() == ["s1", "s1", "s2"]
    assert [json.loads(v) for v in csv.column("teachers").to_pylist()] == [["t1"], ["t2"], ["t1", "t2"]]
    assert csv.column("delta_last").to_pylist() == pytest.approx([0.01, 0.02, 0.03])
    assert not [p for p in tmp_path.rglob("*.tmp")]
    assert (tmp_path / "r.csv").stat().st_mode & 0o044 == 0o044  # readable by others, not mkstemp's 0600


def test_run_sql_rejects_unknown_output_formats_before_running(small_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'\.json'.*\.csv, \.parquet"):
        run_sql(small_root, "SELECT 1", out=tmp_path / "r.json")
    with pytest.raises(ValueError, match="no suffix"):
        run_sql(small_root, "SELECT 1", out=tmp_path / "r")
    assert not (tmp_path / "r.json").exists()


def test_parse_params() -> None:
    assert parse_params(["student=vit_s", "k=3", "lr=0.5", "on=true", "none=null", "xs=[1,2]"]) == {
        "student": "vit_s", "k": 3, "lr": 0.5, "on": True, "none": None, "xs": [1, 2],
    }  # fmt: skip
    with pytest.raises(ValueError, match="name=value"):
        parse_params(["novalue"])
    with pytest.raises(ValueError, match="name=value"):
        parse_params(["1bad=2"])


# ------------------------------------------------------------------------------------ format_table
def test_format_table_aligns_and_truncates() -> None:
    t = pa.table({"name": ["a", "bbb", None], "x": [1.5, 22.25, None], "n": [1, 20, 300], "l": [[1, 2], [], None]})
    assert format_table(t, 2).splitlines() == [
        "name      x   n  l",
        "----  -----  --  ------",  # widths follow the rows shown
        "a       1.5   1  [1, 2]",
        "bbb   22.25  20  []",
        "(2 of 3 rows shown; 1 more)",
    ]
    assert format_table(t, 10).splitlines()[-2:] == ["NULL   NULL  300  NULL", "(3 rows)"]
    assert format_table(t.slice(0, 0), 5).splitlines()[-1] == "(0 rows)"
    assert format_table(pa.table({}), 5) == "(no columns)"
    with pytest.raises(ValueError, match="max_rows"):
        format_table(t, -1)
