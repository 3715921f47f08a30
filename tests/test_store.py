"""Tests of the Parquet store's write/read guarantees (zoo_study.store).

Why: the pipeline calls a job "done" when its result file reads back. A job killed mid-write must
therefore leave either the old file or nothing, never a partial file and never a stray temp file, and a
truncated file must read as "not done" so the job re-runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zoo_study import store
from zoo_study.store import (
    PAIR_CLASS_SCHEMA,
    PREDICTION_SCHEMA,
    ResultsLayout,
    read_parquet_checked,
    safe_name,
    table_from_rows,
    write_bytes_atomic,
    write_parquet_atomic,
)


def pair_rows(n: int = 3) -> list[dict]:
    return [{"teacher": "t", "student": "s", "class_id": i, "pos_flips": i, "neg_flips": 2 * i} for i in range(n)]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------- writes
def test_write_then_read_round_trip(tmp_path):
    table = table_from_rows(pair_rows(), PAIR_CLASS_SCHEMA)
    path = write_parquet_atomic(table, tmp_path / "sub" / "x.parquet", schema=PAIR_CLASS_SCHEMA)
    assert path == tmp_path / "sub" / "x.parquet" and listing(path.parent) == ["x.parquet"]
    back = read_parquet_checked(path, PAIR_CLASS_SCHEMA)
    assert back.equals(table) and back.schema.equals(PAIR_CLASS_SCHEMA)


class Boom(RuntimeError):
    pass


def _partial_writer(calls: list):
    """A stand-in for pq.write_table that writes half a file, then dies (a job killed mid-write)."""
    real = pq.write_table

    def write(table, where, **kwargs):
        calls.append(str(where))
        real(table, where, **kwargs)
        size = os.path.getsize(where)
        with open(where, "r+b") as fh:
            fh.truncate(size // 2)
        raise Boom("killed mid-write")

    return write


def test_failed_write_leaves_no_file_and_no_temp(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(store.pq, "write_table", _partial_writer(calls))
    target = tmp_path / "out.parquet"
    with pytest.raises(Boom):
        write_parquet_atomic(table_from_rows(pair_rows(), PAIR_CLASS_SCHEMA), target)
    assert calls and Path(calls[0]).parent == tmp_path and calls[0] != str(target)  # wrote a temp file
    assert listing(tmp_path) == []  # no partial target, no temp left behind


def test_failed_overwrite_keeps_the_old_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "out.parquet"
    old = table_from_rows(pair_rows(2), PAIR_CLASS_SCHEMA)
    write_parquet_atomic(old, target)
    monkeypatch.setattr(store.pq, "write_table", _partial_writer([]))
    with pytest.raises(Boom):
        write_parquet_atomic(table_from_rows(pair_rows(5), PAIR_CLASS_SCHEMA), target)
    assert listing(tmp_path) == ["out.parquet"]
    assert read_parquet_checked(target).equals(old)


def test_interrupt_during_rename_cleans_up(tmp_path, monkeypatch):
    """A KeyboardInterrupt (BaseException, not Exception) at the last step still removes the temp file."""

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(store.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_parquet_atomic(table_from_rows(pair_rows(), PAIR_CLASS_SCHEMA), tmp_path / "x.parquet")
    assert listing(tmp_path) == []


def test_temp_files_never_match_parquet_globs(tmp_path, monkeypatch):
    seen: list = []
    real = pq.write_table

    def spy(table, where, **kwargs):
        seen.append(Path(where).name)
        seen.append(sorted(p.name for p in tmp_path.glob("*.parquet")))
        real(table, where, **kwargs)

    monkeypatch.setattr(store.pq, "write_table", spy)
    write_parquet_atomic(table_from_rows(pair_rows(), PAIR_CLASS_SCHEMA), tmp_path / "x.parquet")
    name, globbed = seen
    assert name.startswith(".x.parquet.") and name.endswith(".tmp") and globbed == []


def test_write_bytes_atomic_failure_leaves_nothing(tmp_path, monkeypatch):
    write_bytes_atomic(b"old", tmp_path / "a.json")

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(b"new-and-longer", tmp_path / "a.json")
    assert listing(tmp_path) == ["a.json"] and (tmp_path / "a.json").read_bytes() == b"old"


def test_write_with_schema_conforms_column_order_and_types(tmp_path):
    t = pa.table({"neg_flips": [1], "pos_flips": [2], "class_id": [3], "student": ["s"], "teacher": ["t"]})
    path = write_parquet_atomic(t, tmp_path / "c.parquet", schema=PAIR_CLASS_SCHEMA)
    back = pq.read_table(path)
    assert back.schema.names == PAIR_CLASS_SCHEMA.names and back.schema.field("class_id").type == pa.int32()


# ---------------------------------------------------------------------------------------------- reads
def test_truncated_files_read_as_missing(tmp_path):
    path = write_parquet_atomic(table_from_rows(pair_rows(50), PAIR_CLASS_SCHEMA), tmp_path / "x.parquet")
    data = path.read_bytes()
    for cut in (0, 4, len(data) // 3, len(data) // 2, len(data) - 9, len(data) - 1):
        bad = tmp_path / f"cut{cut}.parquet"
        bad.write_bytes(data[:cut])
        assert read_parquet_checked(bad) is None, cut
    assert read_parquet_checked(path) is not None


def test_missing_garbage_and_wrong_schema_read_as_none(tmp_path):
    assert read_parquet_checked(tmp_path / "nope.parquet") is None
    (tmp_path / "g.parquet").write_bytes(b"PAR1 definitely not parquet PAR1")
    assert read_parquet_checked(tmp_path / "g.parquet") is None
    path = write_parquet_atomic(table_from_rows(pair_rows(), PAIR_CLASS_SCHEMA), tmp_path / "x.parquet")
    assert read_parquet_checked(path, PREDICTION_SCHEMA) is None  # other columns: not this result
    assert read_parquet_checked(tmp_path) is None  # a folder is not a result file


# --------------------------------------------------------------------------------------------- tables
def test_table_from_rows_rejects_extra_and_missing_columns():
    rows = pair_rows(2)
    with pytest.raises(ValueError) as err:
        table_from_rows([rows[0], {**rows[1], "bogus": 1}], PAIR_CLASS_SCHEMA)
    assert "row 1" in str(err.value) and "'bogus'" in str(err.value)
    broken = dict(rows[0])
    del broken["neg_flips"]
    with pytest.raises(ValueError, match="missing \\['neg_flips'\\]"):
        table_from_rows([broken], PAIR_CLASS_SCHEMA)


def test_table_from_rows_exact_schema_and_empty():
    t = table_from_rows(pair_rows(2), PAIR_CLASS_SCHEMA)
    assert t.schema.equals(PAIR_CLASS_SCHEMA) and t.num_rows == 2
    empty = table_from_rows([], PAIR_CLASS_SCHEMA)
    assert empty.num_rows == 0 and empty.schema.equals(PAIR_CLASS_SCHEMA)


def test_layout_and_safe_names(tmp_path):
    layout = ResultsLayout(tmp_path)
    assert layout.predictions("timm/vit:b") == tmp_path / "predictions" / "model=timm_vit_b.parquet"
    assert layout.weights("a b").name == "a_b.safetensors"
    assert safe_name("resnet50.a1_in1k") == "resnet50.a1_in1k"
    with pytest.raises(ValueError, match="non-empty"):
        safe_name("")
    assert not (tmp_path / "predictions").exists()  # pure path arithmetic


def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path):
    import os
    import stat

    import pyarrow as pa

    from zoo_study.store import write_parquet_atomic, write_text_atomic

    mask = os.umask(0o022)
    try:
        p = write_parquet_atomic(pa.table({"a": [1]}), tmp_path / "t.parquet")
        q = write_text_atomic("x", tmp_path / "t.txt")
    finally:
        os.umask(mask)
    for f in (p, q):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644


# ------------------------------------------------------------------------------------------ catalogue
def test_every_table_path_matches_its_view_glob_and_nothing_else(tmp_path):
    from zoo_study.store import FILES, TABLES

    layout = ResultsLayout(tmp_path)
    written = {
        "models": layout.model_row("timm/vit:b"), "predictions": layout.predictions("m"), "pairs": layout.pairs,
        "pair_classes": layout.pair_classes, "transfers": layout.transfer_summary("j1"),
        "epochs": layout.transfer_epochs("j1"), "transfer_predictions": layout.transfer_predictions("j1"),
        "hparams": layout.hparam_row("j2"), "failures": layout.failure("j3"),
        "robustness": layout.robustness_row("j4"), "teacher_weights": layout.path("teacher_weights", job_id="j1"),
        "class_embeddings": layout.class_embeddings, "pair_semantics": layout.pair_semantics,
    }  # fmt: skip
    assert set(written) == set(TABLES) and not set(TABLES) & set(FILES)
    for path in written.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    for name, spec in TABLES.items():
        assert sorted(tmp_path.glob(spec.glob)) == [written[name]], name
        assert spec.pattern == spec.glob and spec.description and spec.what
    assert TABLES["transfers"].shown == "transfers/<job_id>/summary.parquet"
    assert TABLES["transfers"].folder == "transfers" and TABLES["models"].folder == "zoo/models"
    assert layout.path("weights", model="a/b") == layout.weights("a/b") == tmp_path / "zoo/weights/a_b.safetensors"
    with pytest.raises(KeyError, match="no table or file 'nope'"):
        layout.path("nope")
    with pytest.raises(TypeError, match="needs"):
        layout.path("transfers", model="x")


def test_a_results_root_has_a_config_or_a_result_file(tmp_path):
    layout = ResultsLayout(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    assert not layout.is_results_root()
    layout.config_file.write_text("")
    assert layout.is_results_root()
    layout.config_file.unlink()
    write_parquet_atomic(table_from_rows(pair_rows(), PAIR_CLASS_SCHEMA), layout.pair_classes)
    assert layout.is_results_root()
