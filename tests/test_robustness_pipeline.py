"""The robustness stage end to end on a micro study: transfers keep their students, the stage measures
each student before and after transfer, mixup and scratch settings reach the summary, a rerun does nothing."""

from __future__ import annotations

import logging

import duckdb
import pyarrow.parquet as pq
import pytest

from helpers.micro import micro_study
from pipelines.cli import main

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

MICRO = micro_study("robust") + """
[transfer]
methods = ["kl", "std_kd"]
pairs = "explicit"
explicit = [["resnet10t_w16", "mixer_p8"]]
epochs = 1
batch_size = 32
transfer_fraction = 0.5
mixup = "pmu"
mixup_share = 0.5

[robustness]
enabled = true
eps = [0.01, 0.03]
steps = 2
per_class = 10

[ray]
address = "local"
"""


def test_robustness_stage_measures_students_before_and_after(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    root = tmp_path / "runs"
    cfg = tmp_path / "robust.toml"
    cfg.write_text(MICRO.format(root=root))
    assert main(["run", str(cfg), "--no-progress", "--stage", "zoo,predict,transfer,robustness"]) == 0
    summaries = [pq.read_table(p).to_pylist()[0] for p in (root / "transfers").glob("*/summary.parquet")]
    assert sorted(r["method"] for r in summaries) == ["kl", "std_kd"]
    assert all(r["mixup"] == "pmu" and r["mixup_share"] == 0.5 for r in summaries)
    assert all((root / "transfers" / r["job_id"] / "student.safetensors").is_file() for r in summaries)
    con = duckdb.connect()
    rows = con.execute("SELECT model_id, transfer_id, eps, n, clean_acc, fgsm_acc, ifgsm_acc, v_measure, v_chance, ami "
                       "FROM read_parquet(?) ORDER BY transfer_id NULLS FIRST, eps",
                       [str(root / "robustness" / "*.parquet")]).fetchall()
    assert len(rows) == 3 * 2  # the student before transfer and after each of 2 transfers, x 2 eps
    assert {r[0] for r in rows} == {"mixer_p8"}
    assert {r[1] for r in rows} == {None} | {r["job_id"] for r in summaries}
    assert all(r[3] == 60 for r in rows)  # 10 per class of 6 classes
    before_clean = [r[4] for r in rows if r[1] is None]
    assert len(set(before_clean)) == 1  # clean accuracy repeats per eps
    for _, tid, _, _, clean, f, i, v, v_chance, ami in rows:
        assert 0 <= i <= 1 and 0 <= f <= 1 and 0 <= v <= 1
        assert 0 <= v_chance <= 1 and -1 <= ami <= 1  # the chance level and AMI travel with every row
    for r in summaries:  # the kept student is the transferred one: its clean accuracy on the subset differs
        after = [row[4] for row in rows if row[1] == r["job_id"]]
        assert len(set(after)) == 1
    caplog.clear()
    assert main(["run", str(cfg), "--no-progress", "--stage", "zoo,predict,transfer,robustness"]) == 0
    assert "[robustness]: 3 job(s), 3 done, 0 to run" in caplog.text


def _exit_code(argv) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_bad_robustness_settings_fail_before_anything_runs(tmp_path, capsys):
    root = tmp_path / "runs"
    cfg = tmp_path / "bad.toml"
    cfg.write_text(MICRO.format(root=root).replace("eps = [0.01, 0.03]", "eps = [0.01, 3.0]"))
    assert _exit_code(["run", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "robustness.eps" in err and "3.0" in err and not root.exists()
    cfg.write_text(MICRO.format(root=root).replace("per_class = 10", 'per_class = 10\nmethods = ["nope"]'))
    assert _exit_code(["run", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "std_kd" in err and not root.exists()
    cfg.write_text(MICRO.format(root=root).replace('mixup = "pmu"', 'mixup = "half"'))
    assert _exit_code(["run", str(cfg), "--no-progress"]) == 2
    assert "mixup" in capsys.readouterr().err and not root.exists()
