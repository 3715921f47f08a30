"""`zoo-study recommend --pilot STEPS`: short transfers re-rank a student's first teachers; the held-out
comparison with and without pilots, on hand-built roots where the right order is known; the pilot's
plan (sizes by hand); the refusals; and one micro study through the real pipeline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.db import connect
from analysis.recommend import recommend, training_table
from analysis.recommend_pilot import _join, cross_validate_pilot, pilot_lines, rerank
from helpers.analysis_fixtures import RootBuilder
from helpers.micro import micro_study
from pipelines.cli import main
from pipelines.pilot import pilot_size, plan_pilot, study_config
from pipelines.study import plan_stage
from zoo_study.config import validate_config


STUDENTS = [f"S{i}" for i in range(6)]
TEACHERS = [f"T{j}" for j in range(6)]
PERM = [3, 0, 5, 1, 4, 2]  # the true order of the teachers, shifted per student: nothing the scores show


def _delta(i: int, j: int) -> float:
    return 0.01 * PERM[(i + j) % 6]


def _root(tmp: Path, transfers: bool = True) -> None:
    """Pair scores that say nothing about the delta (accuracy and rho_pos grow with j, kappa cycles),
    transfers whose delta follows PERM; the pilots (see :func:`_pilots`) see 40% of it early."""
    b = RootBuilder(tmp)
    for i, s in enumerate(STUDENTS):
        for j, t in enumerate(TEACHERS):
            b.pair_row(t, s, acc_t=0.5 + 0.05 * j, acc_s=0.6, rho_pos=0.02 + 0.01 * j,
                       kappa=0.1 + 0.12 * ((3 * i + 5 * j) % 6))
            if transfers:
                b.transfer(s, t, "kl_dp", _delta(i, j))
    b.write_scores()


def _pilots(pairs: list[tuple[int, int]] | None = None) -> pa.Table:
    """A pilot per pair (all 36 by default): early delta = 0.4 x the full delta, 2 steps, 0.1 s each."""
    pairs = pairs if pairs is not None else [(i, j) for i in range(6) for j in range(6)]
    d = [0.4 * _delta(i, j) for i, j in pairs]
    return pa.table({"teacher": [f"T{j}" for _, j in pairs], "student": [f"S{i}" for i, _ in pairs],
                     "pilot_delta": d, "pilot_gain": [x + 0.01 for x in d], "pilot_loss": [0.01] * len(d),
                     "steps": [2] * len(d), "runtime_s": [0.1] * len(d)})


def _true_order(i: int) -> list[str]:
    return [f"T{j}" for j in sorted(range(6), key=lambda j: -_delta(i, j))]


def test_pilots_recover_the_order_the_scores_cannot_show(tmp_path: Path) -> None:
    _root(tmp_path)
    with connect(tmp_path) as db:
        out = rerank(db, "S2", "kl_dp", _pilots(), top_k=6, top=None)
    assert [r["teacher"] for r in out.rec.table.to_pylist()] == _true_order(2)
    rows = out.rec.table.to_pylist()
    assert rows[0]["pilot_delta_pp"] == pytest.approx(100 * 0.4 * _delta(2, int(rows[0]["teacher"][1:])))
    q = out.quality
    assert q is not None and q.n_students == 6
    name = "model + pilot (top 6)"
    assert q.rows[name]["top1"].value == 1.0 and q.rows[name]["spearman"].value > 0.95
    assert q.rows["pilot delta"]["top1"].value == 1.0
    # the paired gain is the mean of the per-student differences
    by = q.by_student
    diffs = [by[name][s][0] - by["model"][s][0] for s in STUDENTS]
    assert out.spearman_gain.value == pytest.approx(np.mean(diffs)) and out.spearman_gain.value > 0.5
    assert out.spearman_gain.n == 6
    # and against each baseline, the rule a user would follow without the tool
    for baseline in ("score-only", "most accurate"):
        g_r, g_1 = out.baseline_gains[baseline]
        assert g_r.value == pytest.approx(np.mean([by[name][s][0] - by[baseline][s][0] for s in STUDENTS]))
        assert g_1.value == pytest.approx(np.mean([float(by[name][s][1]) - float(by[baseline][s][1])
                                                   for s in STUDENTS]))
        assert g_r.value > 0.5 and g_1.n == 6
    text = "\n".join(pilot_lines(out))
    assert f"model + pilot (top 6) minus most accurate, paired: Spearman r {out.baseline_gains['most accurate'][0].value:+.2f}" in text


def test_only_the_first_k_teachers_are_re_ranked(tmp_path: Path) -> None:
    _root(tmp_path)
    with connect(tmp_path) as db:
        base = [r["teacher"] for r in recommend(db, "S2", "kl_dp", top=None).table.to_pylist()]
        out = rerank(db, "S2", "kl_dp", _pilots(), top_k=2, top=None)
    got = [r["teacher"] for r in out.rec.table.to_pylist()]
    assert got[2:] == base[2:]  # no pilot, no change
    assert got[:2] == sorted(base[:2], key=lambda t: -_delta(2, int(t[1:])))
    assert [r["rank"] for r in out.rec.table.to_pylist()] == list(range(1, 7))
    assert all(r["pilot_delta_pp"] is not None for r in out.rec.table.to_pylist())  # every pair was piloted


def test_cross_validation_re_ranks_the_base_models_first_k_in_each_fold(tmp_path: Path) -> None:
    _root(tmp_path)
    with connect(tmp_path) as db:
        train = _join(training_table(db, "kl_dp"), _pilots())
    q1, width1 = cross_validate_pilot(train, top_k=1)
    assert q1.rows["model + pilot (top 1)"]["top1"].value == q1.rows["model"]["top1"].value  # k=1 changes nothing
    q6, width6 = cross_validate_pilot(train, top_k=6)
    assert q6.rows["model + pilot (top 6)"]["top1"].value == 1.0
    assert 0 < width6 < 0.01  # the pilot predicts the delta almost exactly
    # k=1: one residual per held-out student, 6 in all; a 90% band needs ceil(7 x 0.9) = 7: none
    assert width1 == math.inf


def test_without_enough_transfers_the_pilot_delta_orders_the_first_k(tmp_path: Path) -> None:
    _root(tmp_path, transfers=False)
    with connect(tmp_path) as db:
        out = rerank(db, "S0", "kl_dp", _pilots([(0, 5), (0, 4), (0, 3)]), top_k=3, top=4)
    # score-only order T5, T4, T3, T2 (rho_pos); the pilots' early deltas (0.4 x PERM[j] pp: T5 0.8, T4 1.6,
    # T3 0.4) reorder the first three
    assert [r["teacher"] for r in out.rec.table.to_pylist()] == ["T4", "T5", "T3", "T2"]
    assert out.quality is None and "re-ranked by the pilot's early delta" in out.rec.notes[-1]
    assert out.rec.table.to_pylist()[3]["pilot_delta_pp"] is None
    assert any("no held-out comparison" in line for line in pilot_lines(out))


def test_compute_against_the_full_transfers(tmp_path: Path) -> None:
    _root(tmp_path)
    with connect(tmp_path) as db:
        out = rerank(db, "S2", "kl_dp", _pilots(), top_k=3)
    c = out.compute
    # 36 pilots of 0.1 s; the fixture's full transfers take 1.5 s, 3 epochs x (100 // 32) = 9 steps
    assert c["pilots"] == 36 and c["pilot_s"] == pytest.approx(3.6) and c["student_s"] == pytest.approx(0.3)
    assert c["matched_full_s"] == pytest.approx(54.0) and c["full_steps"] == 9
    text = "\n".join(pilot_lines(out))
    assert "6.7% of their compute" in text
    # 3 pilots x 2 steps = 6 steps = 6 / 9 of a full transfer: the gain per full transfer's steps is 1.5 x it
    assert "a new student's 3 pilots: ~6 steps = 0.67 full transfer(s) of steps" in text
    g = out.spearman_gain.value
    assert f"{g:+.2f} [" in text and f"{g * 1.5:+.2f} per full transfer's steps of pilots" in text
    assert -1 <= out.top1_gain.low <= out.top1_gain.high <= 1
    assert "~2 vs ~9 steps each (22.2% of their steps)" in text


# ----------------------------------------------------------------------------------------- the plan
MICRO = micro_study("pilot") + """
[transfer]
methods = ["kl_dp"]
pairs = "explicit"
explicit = [["resnet10t_w16", "mixer_p8"], ["mixer_p8", "resnet10t_w16"]]
epochs = 1
batch_size = 32
transfer_fraction = 0.5

[ray]
address = "local"
"""


def _micro(tmp: Path):
    import tomllib

    return validate_config(tomllib.loads(MICRO.format(root=tmp)))


def test_pilot_size_by_hand(tmp_path: Path) -> None:
    cfg = _micro(tmp_path)  # 6 classes x 40 train images, batch 32; the study: half of them (120), 1 epoch
    # 2 steps: less than one epoch of the study's set (120 // 32 = 3 steps): a smaller share, 64 of 240
    # images; 11 per class (40 x 0.2667 rounded) = 66, one epoch drops the last 2
    assert pilot_size(cfg, 2) == ({"transfer_fraction": round(64 / 240, 9)}, 1, 66, 2)
    # 3 steps: one epoch of the study's own set (the same images), i.e. the whole 1-epoch transfer
    assert pilot_size(cfg, 3) == ({"transfer_fraction": 0.5}, 1, 120, 3)
    # 20 steps: round(20 / 3) = 7 epochs, but never more than the study's own 1 epoch
    assert pilot_size(cfg, 20) == ({"transfer_fraction": 0.5}, 1, 120, 3)
    # a 20-epoch study: 20 steps = round(20 / 3) = 7 of its epochs = 21 steps, over the same 120 images
    long = cfg.model_copy(update={"transfer": cfg.transfer.model_copy(update={"epochs": 20})})
    assert pilot_size(long, 20) == ({"transfer_fraction": 0.5}, 7, 120, 21)
    # a study drawing 10 images per class: its own per-class set, 60 images = 1 step per epoch
    per_class = cfg.model_copy(update={"transfer": cfg.transfer.model_copy(
        update={"epochs": 20, "transfer_per_class": 10})})
    assert pilot_size(per_class, 4) == ({"transfer_per_class": 10}, 4, 60, 4)
    # the claims study's data: 100 classes x 120 images, batch 128, a quarter of them (3,000 = 23 steps per
    # epoch), 20 epochs. 5 steps = 640 images = 6.4 per class, rounded to 6 = 600 = 4 steps: short, so one more per class:
    # 740 / 12,000 -> 7 per class = 700 = 5 steps
    demo = validate_config({"data": {"generated": {"num_superclasses": 10, "classes_per_superclass": 10,
                                                   "n_train": 12000}},
                            "transfer": {"batch_size": 128, "transfer_fraction": 0.25, "epochs": 20}})
    assert pilot_size(demo, 5) == ({"transfer_fraction": round(740 / 12000, 9)}, 1, 700, 5)
    # 46 steps = 2 of the transfer's epochs: its first 46 steps, on its own 3,000 images
    assert pilot_size(demo, 46) == ({"transfer_fraction": 0.25}, 2, 3000, 46)


def test_pilot_jobs_are_the_studys_shortened_under_pilot(tmp_path: Path) -> None:
    cfg = _micro(tmp_path)
    (tmp_path / "config.toml").write_text(cfg.to_toml())
    again = study_config(tmp_path)
    assert again.results_root() == tmp_path and again.transfer.explicit == cfg.transfer.explicit
    plan = plan_pilot(again, "kl_dp", [("resnet10t_w16", "mixer_p8")], 2)
    (job,) = plan.jobs
    assert plan.steps == 2 and plan.epochs == 1 and plan.images == 66
    assert all(p.startswith(f"pilot/transfers/{job.job_id}/") for p in job.outputs.values())
    assert job.spec["pilot"] == {"steps": 2} and job.spec["config"]["epochs"] == 1
    assert job.spec["config"]["transfer_fraction"] == round(64 / 240, 9)
    study_ids = {j.job_id for j in plan_stage(cfg, "transfer")}
    assert job.job_id not in study_ids and job.spec["student"]["model_id"] == "mixer_p8"


# ------------------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("argv, message", [
    (["--pilot", "0"], "--pilot must be >= 1 (training steps of each pilot transfer), got 0"),
    (["--pilot", "-3"], "--pilot must be >= 1"),
    (["--pilot", "5", "--pilot-top", "0"], "--pilot-top must be >= 1"),
    (["--pilot-top", "2"], "--pilot-top is only used with --pilot STEPS"),
    (["--config", "x.toml"], "--config is only used with --pilot STEPS"),
    (["--pilot", "5"], "has no config.toml"),
    (["--pilot", "5", "--config", "{tmp}/missing.toml"], "--config '{tmp}/missing.toml' does not exist"),
    (["--pilot", "5", "--method", "kl_dp_unsup_x"], "unknown method"),
])
def test_cli_refuses_a_bad_pilot_with_one_line_and_exit_2(tmp_path: Path, capsys, argv, message) -> None:
    root = tmp_path / "root"
    _root(root)
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(["recommend", str(root), "--student", "S0", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(tmp=tmp_path) in err[0]
    assert not (root / "pilot").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pilot_through_the_pipeline_is_cached_and_kept_apart(tmp_path: Path, capsys) -> None:
    root = tmp_path / "root"
    cfg = tmp_path / "micro.toml"
    cfg.write_text(MICRO.format(root=root))
    assert main(["run", str(cfg), "--no-progress", "--stage", "zoo,predict,score"]) == 0
    capsys.readouterr()
    # before any transfer: the documented score-only rule, said so
    assert main(["recommend", str(root), "--student", "mixer_p8"]) == 0
    text = capsys.readouterr().out
    assert "teachers for mixer_p8 (kl_dp; basis: score-only)" in text and "0 finished kl_dp transfer(s)" in text
    assert "resnet10t_w16" in text
    assert main(["run", str(cfg), "--no-progress", "--stage", "transfer"]) == 0
    before = sorted(p.relative_to(root) for p in (root / "transfers").glob("*/summary.parquet"))
    capsys.readouterr()
    argv = ["recommend", str(root), "--student", "mixer_p8", "--pilot", "2", "--pilot-top", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    # the candidate and the other finished pair: 2 pilots of 2 steps, under pilot/
    summaries = sorted((root / "pilot" / "transfers").glob("*/summary.parquet"))
    assert len(summaries) == 2 and "2 step(s) each" in text and "pilot compute: 2 pilot(s) of ~2 step(s)" in text
    rows = [pq.read_table(p).to_pylist()[0] for p in summaries]
    assert {(r["teacher"], r["student"]) for r in rows} == {("resnet10t_w16", "mixer_p8"), ("mixer_p8", "resnet10t_w16")}
    assert all(r["epochs"] == 1 and r["n_train"] == 66 for r in rows)
    assert sorted(p.relative_to(root) for p in (root / "transfers").glob("*/summary.parquet")) == before
    with connect(root) as db:  # the analyses see the study's 2 transfers only
        assert db.query("SELECT count(*) AS n FROM paper_transfers").to_pylist()[0]["n"] == 2
    assert "teachers for mixer_p8 (kl_dp; basis: score-only)" in text and "pilot" in text
    mtimes = [p.stat().st_mtime_ns for p in summaries]
    assert main(argv) == 0  # cached: nothing reruns
    assert [p.stat().st_mtime_ns for p in summaries] == mtimes


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_pilot_of_whole_epochs_is_the_transfers_own_prefix(tmp_path: Path, capsys) -> None:
    """The pilot's early delta must be the full transfer's early delta: a 3-step pilot (one epoch of the
    study's 120 images at batch 32) of a 2-epoch study evaluated every epoch ends where the full transfer
    stood after its first epoch, on every piloted pair with a finished transfer."""
    root = tmp_path / "root"
    cfg = tmp_path / "micro.toml"
    cfg.write_text(MICRO.format(root=root))
    assert main(["run", str(cfg), "--no-progress", "--stage", "zoo,predict,score,transfer",
                 "--set", "transfer.epochs=2", "--set", "transfer.eval_every=1"]) == 0
    full = {}
    for d in (root / "transfers").iterdir():
        s = pq.read_table(d / "summary.parquet").to_pylist()[0]
        full[(s["teacher"], s["student"])] = {r["epoch"]: r for r in pq.read_table(d / "epochs.parquet").to_pylist()}
    assert main(["recommend", str(root), "--student", "mixer_p8", "--pilot", "3", "--pilot-top", "1"]) == 0
    assert "1 epoch(s) over 120 images = 3 step(s) each" in capsys.readouterr().out
    pilots = [pq.read_table(p).to_pylist()[0] for p in (root / "pilot" / "transfers").glob("*/summary.parquet")]
    assert len(pilots) == 2 and all((p["teacher"], p["student"]) in full for p in pilots)
    for p in pilots:
        first = full[(p["teacher"], p["student"])][1]
        assert (p["delta_last"], p["gain"], p["loss"]) == (first["delta"], first["gain"], first["loss"])
        assert p["acc_last"] == first["acc"]
