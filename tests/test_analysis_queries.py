"""Each named query against hand-made roots whose right answers are worked out in the comments."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from analysis.db import connect
from helpers.analysis_fixtures import RootBuilder


def rows_by(table, *keys):
    """Query rows keyed by the given columns (one key -> scalar key)."""
    out = {}
    for r in table.to_pylist():
        k = tuple(r[c] for c in keys)
        out[k[0] if len(k) == 1 else k] = r
    return out


# ------------------------------------------------------------------------------ success rate (Fig 4a)
@pytest.fixture()
def success_root(tmp_path: Path) -> Path:
    b = RootBuilder(tmp_path)
    # student A, KL+DP, four teachers: three positive, one negative -> 3 / 4 = 75 %
    for t, d in (("t1", 0.01), ("t2", 0.02), ("t3", 0.003), ("t4", -0.01)):
        b.transfer("A", t, "kl_dp", d)
    # student B, KL+DP, two teachers; t1 has two seeds (+0.01, -0.03: mean -0.01, not positive),
    # t2 is positive -> 1 / 2 = 50 % (the real number of teachers, not a hard-coded 20 or the 3 runs)
    b.transfer("B", "t1", "kl_dp", 0.01, seed=0)
    b.transfer("B", "t1", "kl_dp", -0.03, seed=1)
    b.transfer("B", "t2", "kl_dp", 0.02)
    # a zero delta is not a success; KL-Dist for A: 1 of 2
    b.transfer("A", "t1", "kl", 0.0)
    b.transfer("A", "t2", "kl", 0.005)
    # unsupervised KL+DP is its own method; multi-teacher and grid rows are not single transfers
    b.transfer("A", "t1", "kl_dp", -0.5, hparams={"unsupervised": True})
    b.transfer("A", ["t1", "t2"], "kl_dp", -0.5, mode="sequential")
    b.hparam("A", "t1", "kl_dp", -0.5)
    return tmp_path


def test_success_rate_counts_the_real_number_of_teachers(success_root: Path) -> None:
    with connect(success_root) as db:
        r = rows_by(db.named("fig4a_success_rate"), "method", "student")
    assert set(r) == {("kl_dp", "A"), ("kl_dp", "B"), ("kl", "A"), ("kl_dp_unsup", "A")}
    a = r[("kl_dp", "A")]
    assert (a["n_teachers"], a["n_positive"], a["success_rate_pct"]) == (4, 3, 75.0)
    assert a["mean_delta_pp"] == pytest.approx(100 * (0.01 + 0.02 + 0.003 - 0.01) / 4)
    b = r[("kl_dp", "B")]
    assert (b["n_teachers"], b["n_positive"], b["success_rate_pct"], b["n_runs"]) == (2, 1, 50.0, 3)
    assert r[("kl", "A")]["success_rate_pct"] == 50.0
    assert r[("kl_dp_unsup", "A")]["success_rate_pct"] == 0.0


def test_method_summary(success_root: Path) -> None:
    with connect(success_root) as db:
        r = rows_by(db.named("tab2_method_summary"), "method")
    k = r["kl_dp"]
    assert (k["n_students"], k["n_pairs"], k["n_runs"]) == (2, 6, 7)
    assert k["success_rate_mean_pct"] == pytest.approx((75 + 50) / 2)
    assert k["success_rate_median_pct"] == pytest.approx(62.5)
    assert k["success_rate_pooled_pct"] == pytest.approx(100 * 4 / 6)
    # per-teacher means: A 0.01 0.02 0.003 -0.01, B -0.01 0.02
    assert k["mean_delta_last_pp"] == pytest.approx(100 * (0.01 + 0.02 + 0.003 - 0.01 - 0.01 + 0.02) / 6)


# ------------------------------------------------------------------------- transfer rate (Fig 5a/5b)
def _flip_root(tmp_path: Path, flips: dict[int, tuple[int, int]]) -> RootBuilder:
    """Teacher T, student S, 5 classes. flips[k] = (positive flips in class k, how many the final
    student gets right). Extra samples that are not positive flips must not count: both right, both
    wrong (one fixed by transfer), and teacher wrong / student right."""
    b = RootBuilder(tmp_path, num_classes=5)
    labels, t_pred, s_pred, after = [], [], [], []
    for k, (n, fixed) in flips.items():
        for i in range(n):
            labels.append(k)
            t_pred.append(k)  # teacher right
            s_pred.append((k + 1) % 5)  # student wrong before
            after.append(k if i < fixed else (k + 2) % 5)
    for k in range(5):
        labels += [k, k, k]
        t_pred += [k, (k + 1) % 5, (k + 1) % 5]
        s_pred += [k, (k + 1) % 5, k]
        after += [k, k, k]
    b.model("T", "cnn", 50.0)
    b.model("S", "transformer", 20.0)
    b.predictions("T", labels, t_pred)
    b.predictions("S", labels, s_pred)
    b.score_pair("T", "S")
    b.write_scores()
    job = b.transfer("S", "T", "kl_dp", 0.01)
    b.transfer_predictions(job, labels, s_pred, after)
    return b


def test_transfer_rate_for_top_x_percent_classes(tmp_path: Path) -> None:
    # flips per class 4, 3, 2, 1 (10 in all); of them the final student gets 3, 1, 2, 0 right.
    # top-2/5/20 %: class 0 alone (40 % >= X)          -> 3 / 4  = 75 %
    # top-50 %:     classes 0, 1 (40 % < 50, 70 % >= 50) -> 4 / 7  = 57.14 %
    # top-100 %:    all four classes with flips        -> 6 / 10 = 60 %
    _flip_root(tmp_path, {0: (4, 3), 1: (3, 1), 2: (2, 2), 3: (1, 0)})
    with connect(tmp_path) as db:
        r = rows_by(db.named("fig5a_transfer_rate_topx"), "x_pct")
        overall = db.named("fig5b_transfer_rate_vs_size").to_pylist()
        pairs = db.query("SELECT n_pos, top2_classes, top50_classes, top100_classes FROM pairs").to_pylist()
    assert pairs == [{"n_pos": 10, "top2_classes": 1, "top50_classes": 2, "top100_classes": 4}]
    assert sorted(r) == [2, 5, 20, 50, 100]
    for x in (2, 5, 20):
        assert (r[x]["n_flips"], r[x]["n_transferred"], r[x]["transfer_rate_pct"]) == (4, 3, 75.0)
    assert (r[50]["n_flips"], r[50]["n_transferred"]) == (7, 4)
    assert r[50]["transfer_rate_pct"] == pytest.approx(400 / 7)
    assert (r[100]["n_flips"], r[100]["n_transferred"], r[100]["transfer_rate_pct"]) == (10, 6, 60.0)
    assert r[100]["method"] == "kl_dp" and r[100]["student"] == "S" and r[100]["teacher"] == "T"
    # Fig 5b: the overall rate (X = 100) with the student's catalog size and family
    assert len(overall) == 1
    o = overall[0]
    assert (o["family"], o["params_m"], o["n_jobs"], o["n_flips"]) == ("transformer", 20.0, 1, 10)
    assert o["mean_rate_pct"] == pytest.approx(60.0) and o["pooled_rate_pct"] == pytest.approx(60.0)


def test_top_x_prefix_stops_exactly_at_the_threshold(tmp_path: Path) -> None:
    # flips 5, 3, 2: class 0 alone is exactly 50 %, so top-50 % is {0} (the smallest prefix reaching
    # X %), not {0, 1}. Final right: 1 of 5, 3 of 3, 0 of 2.
    _flip_root(tmp_path, {0: (5, 1), 1: (3, 3), 2: (2, 0)})
    with connect(tmp_path) as db:
        r = rows_by(db.named("fig5a_transfer_rate_topx"), "x_pct")
    assert (r[50]["n_flips"], r[50]["transfer_rate_pct"]) == (5, 20.0)
    assert (r[100]["n_flips"], r[100]["n_transferred"]) == (10, 4)


# ----------------------------------------------------------------------------- top-25 % bins (Fig 4b)
def test_top_quarter_mean_per_delta_acc_bin(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    # delta_acc spans [-0.12, 0.12]: 6 bins of width 0.04 (edges -0.08, -0.04, 0, 0.04, 0.08).
    cases = [
        # bin 0: 5 pairs -> top ceil(5/4) = 2 deltas (0.05, 0.04) -> mean 4.5 pp
        (-0.12, 0.05), (-0.115, 0.01), (-0.11, 0.02), (-0.10, 0.04), (-0.09, 0.03),
        # bin 3: 4 pairs -> top 1 (0.04) -> 4.0 pp
        (0.005, 0.01), (0.01, 0.02), (0.02, 0.03), (0.03, 0.04),
        # bin 5: the maximum sits on the upper edge and belongs to the last bin -> -1.0 pp
        (0.12, -0.01),
    ]  # fmt: skip
    for i, (dacc, delta) in enumerate(cases):
        b.pair_row(f"t{i}", "S", acc_t=0.5 + dacc, acc_s=0.5, rho_pos=0.05)
        b.transfer("S", f"t{i}", "kl_dp", delta)
    b.transfer("S", "unscored", "kl_dp", 0.9)  # no pair row: left out
    b.write_scores()
    with connect(tmp_path) as db:
        r = rows_by(db.named("fig4b_top25_by_delta_acc_bin"), "bin")
    assert sorted(r) == [0, 3, 5]
    assert (r[0]["n_pairs"], r[0]["n_top"]) == (5, 2)
    assert r[0]["top25_mean_delta_pp"] == pytest.approx(4.5)
    assert r[0]["mean_delta_pp"] == pytest.approx(3.0)
    assert r[0]["bin_lo_pp"] == pytest.approx(-12.0) and r[0]["bin_mid_pp"] == pytest.approx(-10.0)
    assert (r[3]["n_pairs"], r[3]["n_top"], r[3]["top25_mean_delta_pp"]) == (4, 1, pytest.approx(4.0))
    assert r[5]["top25_mean_delta_pp"] == pytest.approx(-1.0)
    assert r[5]["bin_hi_pp"] == pytest.approx(12.0)


# --------------------------------------------------------------------------------- pairs (Fig 1, 2a)
def test_pair_figures_convert_to_percent_and_flag_the_noise_floor(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    b.pair_row("T", "S", acc_t=0.8, acc_s=0.7, rho_pos=0.12, entropy=1.2)
    b.pair_row("R", "S", acc_t=0.2, acc_s=0.7, rho_pos=0.0003, entropy=None, teacher_is_random=True)
    b.pair_row("S", "S", acc_t=0.7, acc_s=0.7, rho_pos=0.0)  # a self pair is never plotted
    b.write_scores()
    with connect(tmp_path) as db:
        a = rows_by(db.named("fig1a_rho_pos_vs_delta_acc"), "teacher")
        e = db.named("fig1b_entropy_vs_rho_pos").to_pylist()
    assert set(a) == {"T", "R"}
    assert a["T"]["delta_acc_pp"] == pytest.approx(10.0) and a["T"]["rho_pos_pct"] == pytest.approx(12.0)
    assert a["R"]["teacher_is_random"] and a["R"]["rho_pos_pct"] == pytest.approx(0.03)
    assert [r["teacher"] for r in e] == ["T"]  # no flips, no entropy
    assert e[0]["entropy_uniform"] == pytest.approx(math.log(5))


def test_class_histograms_pick_weak_equal_strong_teachers_of_one_student(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    flips = {0: 1, 1: 5, 2: 3}
    b.pair_row("W", "S", acc_t=0.5, acc_s=0.7, rho_pos=0.05, class_flips=flips)  # delta -0.2: weak
    b.pair_row("E", "S", acc_t=0.71, acc_s=0.7, rho_pos=0.05, class_flips=flips)  # +0.01: equal
    b.pair_row("E2", "S", acc_t=0.67, acc_s=0.7, rho_pos=0.05, class_flips=flips)  # -0.03
    b.pair_row("St", "S", acc_t=0.95, acc_s=0.7, rho_pos=0.05, class_flips={4: 2})  # +0.25: strong
    b.pair_row("R", "S", acc_t=0.1, acc_s=0.7, rho_pos=0.01, teacher_is_random=True, class_flips={0: 1})
    b.pair_row("W", "S2", acc_t=0.5, acc_s=0.6, rho_pos=0.05, class_flips=flips)  # fewer teachers
    b.write_scores()
    with connect(tmp_path) as db:
        t = db.named("fig2a_class_histograms").to_pylist()
    roles = {}
    for r in t:
        roles.setdefault(r["role"], []).append(r)
    assert {k: v[0]["teacher"] for k, v in roles.items()} == {"weak": "W", "equal": "E", "strong": "St"}
    assert {r["student"] for r in t} == {"S"}
    weak = roles["weak"]
    assert [(r["rank"], r["class_id"], r["pos_flips"]) for r in weak] == [(1, 1, 5), (2, 2, 3), (3, 0, 1)]
    assert weak[0]["share"] == pytest.approx(5 / 9)
    assert [r["pos_flips"] for r in roles["strong"]] == [2]


# --------------------------------------------------------------------------- gain/loss, students (7, 8)
def test_gain_loss_and_student_properties(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    b.model("S", "mlp", 30.0)
    b.transfer("S", "T1", "kl", 0.02, gain=0.05, loss=0.03, acc_before=0.6)
    b.transfer("S", "T2", "kl", -0.04, gain=0.01, loss=0.05, acc_before=0.6)
    b.transfer("X", "T1", "kl", 0.01, acc_before=0.5)  # student missing from the catalog
    with connect(tmp_path) as db:
        g = rows_by(db.named("fig7_gain_vs_loss"), "student", "teacher")
        s = rows_by(db.named("fig8_delta_vs_student"), "student")
    assert (g[("S", "T1")]["gain_pct"], g[("S", "T1")]["loss_pct"]) == (pytest.approx(5.0), pytest.approx(3.0))
    assert g[("S", "T2")]["delta_last_pp"] == pytest.approx(-4.0)
    assert s["S"]["family"] == "mlp" and s["S"]["params_m"] == 30.0 and s["S"]["n_teachers"] == 2
    assert s["S"]["student_acc_pct"] == pytest.approx(60.0)
    assert (s["S"]["mean_delta_pp"], s["S"]["min_delta_pp"], s["S"]["max_delta_pp"]) == (
        pytest.approx(-1.0), pytest.approx(-4.0), pytest.approx(2.0),
    )  # fmt: skip
    assert s["X"]["family"] == "unknown" and s["X"]["params_m"] is None


# ----------------------------------------------------------------------------- sequential (Fig 11, Tab 9)
def test_sequential_epochs_across_stages(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    job = b.transfer("S", ["A", "B"], "kl_dp", 0.025, mode="sequential")
    b.epochs(
        job,
        [
            {"stage": 0, "stage_teacher": "A", "epoch": 0, "delta": 0.0, "gain": 0.0, "loss": 0.0},
            {"stage": 0, "stage_teacher": "A", "epoch": 1, "delta": 0.005, "gain": 0.01, "loss": 0.005},
            {"stage": 0, "stage_teacher": "A", "epoch": 2, "delta": 0.01, "gain": 0.02, "loss": 0.01},
            {"stage": 1, "stage_teacher": "B", "epoch": 0, "delta": 0.01, "gain": 0.02, "loss": 0.01},
            {"stage": 1, "stage_teacher": "B", "epoch": 1, "delta": 0.02, "gain": 0.03, "loss": 0.01},
            {"stage": 1, "stage_teacher": "B", "epoch": 2, "delta": 0.025, "gain": 0.035, "loss": 0.01},
        ],
    )
    single = b.transfer("S", "A", "kl_dp", 0.01)
    b.epochs(single, [{"epoch": 0, "delta": 0, "gain": 0, "loss": 0}, {"epoch": 1, "delta": 0.01, "gain": 0.02, "loss": 0.01}])
    b.transfer("S", ["A", "B"], "kl_dp", 0.015, mode="parallel")
    with connect(tmp_path) as db:
        seq = db.named("fig11_sequential").to_pylist()
        tab9 = rows_by(db.named("tab9_multi_teacher_runs"), "mode")
    # the stage-1 epoch-0 row repeats the end of stage 0 and is dropped: 5 steps, 0..4
    assert [(r["step"], r["stage"], r["epoch"], r["stage_teacher"]) for r in seq] == [
        (0, 0, 0, "A"), (1, 0, 1, "A"), (2, 0, 2, "A"), (3, 1, 1, "B"), (4, 1, 2, "B"),
    ]  # fmt: skip
    assert [r["delta_pp"] for r in seq] == pytest.approx([0.0, 0.5, 1.0, 2.0, 2.5])
    assert {r["job_id"] for r in seq} == {job}
    assert tab9["sequential"]["stage_deltas"] == "A: +1.00 -> B: +2.50"
    assert tab9["sequential"]["teachers_in_order"] == "A+B"
    assert tab9["parallel"]["stage_deltas"] is None
    assert tab9["parallel"]["delta_last_pp"] == pytest.approx(1.5)


# ---------------------------------------------------------------------------------------- tables
def test_tab1_mean_and_sample_std_over_teachers(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    b.model("S", "cnn", 10.0)
    b.transfer("S", "A", "kl", 0.01)
    b.transfer("S", "B", "kl", 0.03)
    b.transfer("S", "A", "kl_dp", 0.02)
    b.transfer("S", "B", "kl_dp", 0.9, hparams={"supervised": False})  # unsupervised: not in Tab 1
    b.transfer("S", "A", "xe_kl", 0.9)
    with connect(tmp_path) as db:
        r = db.named("tab1_kl_vs_kldp").to_pylist()
    assert len(r) == 1
    r0 = r[0]
    assert (r0["student"], r0["family"], r0["kl_n"], r0["kl_dp_n"]) == ("S", "cnn", 2, 1)
    assert r0["kl_mean_pp"] == pytest.approx(2.0)
    assert r0["kl_std_pp"] == pytest.approx(math.sqrt(2.0))  # sample std of 1 and 3 (pp)
    assert r0["kl_dp_mean_pp"] == pytest.approx(2.0) and r0["kl_dp_std_pp"] is None


def test_tab3_recognises_unsupervised_runs(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    b.transfer("S", "A", "kl_dp", 0.01, hparams={"unsupervised": True}, teacher_share=0.2)
    b.transfer("S", "B", "kl_dp_unsup", 0.03, teacher_share=0.4)
    b.transfer("S", "C", "kl_dp", 0.02, hparams={"supervised": False}, teacher_share=0.3)
    b.transfer("S", "A", "kl_dp", 0.05, teacher_share=0.6)
    b.transfer("S2", "A", "kl_dp", 0.05)  # no unsupervised run: no row
    with connect(tmp_path) as db:
        r = db.named("tab3_unsupervised").to_pylist()
    assert len(r) == 1
    r0 = r[0]
    assert (r0["student"], r0["unsup_n"], r0["sup_n"]) == ("S", 3, 1)
    assert r0["unsup_mean_pp"] == pytest.approx(2.0) and r0["unsup_std_pp"] == pytest.approx(1.0)
    assert r0["unsup_teacher_share_pct"] == pytest.approx(30.0)
    assert r0["sup_mean_pp"] == pytest.approx(5.0) and r0["sup_teacher_share_pct"] == pytest.approx(60.0)


def test_tab4_multi_teacher_against_single_teachers(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    for t, d in (("A", 0.01), ("B", 0.03), ("C", 0.02), ("D", 0.5)):  # D is not in the teacher set
        b.transfer("S", t, "kl_dp", d)
    b.transfer("S", "A", "kl", 0.5)  # another method: not a single-teacher reference for KL+DP
    b.transfer("S", ["C", "A", "B"], "kl_dp", 0.05, mode="sequential")
    b.transfer("S", ["A", "B", "C"], "kl_dp", 0.03, mode="sequential")  # another order, same set
    b.transfer("S", ["A", "B", "C"], "kl_dp", 0.025, mode="parallel")
    b.transfer("S", ["A", "B", "C"], "kl_dp", 0.005, mode="soup")
    with connect(tmp_path) as db:
        r = db.named("tab4_multi_teacher").to_pylist()
    assert len(r) == 1
    r0 = r[0]
    assert r0["teachers"] == "A + B + C" and r0["method"] == "kl_dp" and r0["n_single"] == 3
    assert (r0["single_mean_pp"], r0["single_min_pp"], r0["single_max_pp"]) == (
        pytest.approx(2.0), pytest.approx(1.0), pytest.approx(3.0),
    )  # fmt: skip
    assert r0["sequential_pp"] == pytest.approx(4.0) and r0["n_sequential"] == 2
    assert r0["parallel_pp"] == pytest.approx(2.5) and r0["soup_pp"] == pytest.approx(0.5)
    assert r0["beats_best_single"] is True


def test_tab7_rho_deltas(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    b.transfer("S", "A", "kl_dp", 0.01, rho_pos_before=0.05, rho_pos_after=0.03, rho_neg_before=0.02, rho_neg_after=0.02)
    b.transfer("S", "B", "kl_dp", 0.01, rho_pos_before=0.04, rho_pos_after=0.035, rho_neg_before=0.02, rho_neg_after=0.025)
    b.transfer("S", "C", "kl_dp", 0.01, rho_pos_before=None, rho_pos_after=None)  # not recorded: left out
    with connect(tmp_path) as db:
        r = db.named("tab7_rho_deltas").to_pylist()
    assert len(r) == 1 and r[0]["n_teachers"] == 2
    assert r[0]["delta_rho_pos_pp"] == pytest.approx(-1.25)  # mean of -2.0 and -0.5
    assert r[0]["delta_rho_pos_min_pp"] == pytest.approx(-2.0)
    assert r[0]["delta_rho_neg_pp"] == pytest.approx(0.25)
    assert r[0]["rho_pos_before_pct"] == pytest.approx(4.5)


def test_tab8_family_summary(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    b.model("S", "cnn")
    b.model("T1", "transformer")
    b.model("T2", "transformer")
    b.transfer("S", "T1", "kl_dp", 0.02)
    b.transfer("S", "T2", "kl_dp", -0.01)
    b.transfer("S", "T3", "kl_dp", 0.01)  # T3 not in the catalog
    with connect(tmp_path) as db:
        r = rows_by(db.named("tab8_family_summary"), "student_family", "teacher_family")
    t = r[("cnn", "transformer")]
    assert t["n_pairs"] == 2 and t["success_rate_pct"] == 50.0 and t["mean_delta_pp"] == pytest.approx(0.5)
    assert r[("cnn", "unknown")]["n_pairs"] == 1


def test_hparam_grid_ranks_settings_within_a_method(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    for s in ("S1", "S2"):
        b.hparam(s, "T", "kl_dp", 0.01, hparams={"lr": 1e-4}, lr=1e-4)
        b.hparam(s, "T", "kl_dp", -0.02, hparams={"lr": 1e-2}, lr=1e-2)
    b.hparam("S1", "T", "kl_dp", 0.03, hparams={"lr": 1e-3}, lr=1e-3)
    b.transfer("S1", "T", "kl_dp", 0.5)  # a regular transfer is not a grid row
    with connect(tmp_path) as db:
        r = rows_by(db.named("tab_hparam_grid"), "lr")
    assert r[1e-3]["rank_in_method"] == 1 and r[1e-3]["n_runs"] == 1
    assert r[1e-4]["rank_in_method"] == 2 and r[1e-4]["n_pairs"] == 2 and r[1e-4]["success_rate_pct"] == 100.0
    assert r[1e-2]["rank_in_method"] == 3 and r[1e-2]["mean_delta_pp"] == pytest.approx(-2.0)


def test_overview_counts(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    b.model("S")
    b.model("T")
    b.predictions("S", [0, 1], [0, 0])
    b.pair_row("T", "S", acc_t=0.5, acc_s=0.5, rho_pos=0.1)
    b.write_scores()
    b.transfer("S", "T", "kl", 0.01)
    b.transfer("S", ["T", "U"], "kl_dp", 0.01, mode="soup")
    b.hparam("S", "T", "kl", 0.01)
    b.failure("bad1")
    b.failure("bad2", stage="predict")
    with connect(tmp_path) as db:
        got = {r["item"]: r["n"] for r in db.named("overview").to_pylist()}
    assert got == {
        "models": 2, "models with predictions": 1, "scored pairs": 1, "single-teacher transfers": 1,
        "multi-teacher transfers": 1, "hyper-parameter grid runs": 1, "failed jobs": 2,
    }  # fmt: skip


# ------------------------------------------------------------------ uncertainty: significance, intervals
@pytest.fixture()
def significance_root(tmp_path: Path) -> Path:
    from zoo_study.stats import mcnemar_exact_p

    b = RootBuilder(tmp_path)
    # student A, KL+DP, n_eval 1000: +18 samples (20 gained, 2 lost: p ~ 4e-5), +2 (3 vs 1: p = 0.625),
    # -19 (1 vs 20: significantly harmed), and a pair with two seeds, both significant (15 vs 2, 14 vs 1)
    assert mcnemar_exact_p(20, 2) < 0.05 and mcnemar_exact_p(3, 1) > 0.05 and mcnemar_exact_p(15, 2) < 0.05
    b.transfer("A", "t1", "kl_dp", 0.018, n_gain=20, n_loss=2)
    b.transfer("A", "t2", "kl_dp", 0.002, n_gain=3, n_loss=1)
    b.transfer("A", "t3", "kl_dp", -0.019, n_gain=1, n_loss=20)
    b.transfer("A", "t4", "kl_dp", 0.013, n_gain=15, n_loss=2, seed=0)
    b.transfer("A", "t4", "kl_dp", 0.013, n_gain=14, n_loss=1, seed=1)
    # one seed of t5 is significant, the other not: the pair is not counted as significant
    b.transfer("A", "t5", "kl_dp", 0.018, n_gain=20, n_loss=2, seed=0)
    b.transfer("A", "t5", "kl_dp", 0.002, n_gain=3, n_loss=1, seed=1)
    return tmp_path


def test_success_rate_two_ways_and_harmed(significance_root: Path) -> None:
    with connect(significance_root) as db:
        a = db.named("fig4a_success_rate").to_pylist()[0]
        t2 = db.named("tab2_method_summary").to_pylist()[0]
        fam = db.named("tab8_family_summary").to_pylist()[0]
    # five teachers: positive t1 t2 t4 t5 (4/5), significant t1 t4 (2/5), harmed t3 (1/5)
    assert (a["n_teachers"], a["n_positive"], a["n_sig_positive"], a["n_sig_negative"]) == (5, 4, 2, 1)
    assert (a["success_rate_pct"], a["sig_success_rate_pct"], a["harmed_pct"]) == (80.0, 40.0, 20.0)
    assert a["max_seeds"] == 2 and a["n_runs"] == 7
    deltas = [0.018, 0.002, -0.019, 0.013, 0.010]
    from zoo_study.stats import mean_ci, wilson_interval

    m, lo, hi = mean_ci(deltas)
    assert (a["mean_delta_pp"], a["mean_delta_ci_low_pp"], a["mean_delta_ci_high_pp"]) == pytest.approx((100 * m, 100 * lo, 100 * hi))
    assert t2["sig_success_rate_pooled_pct"] == pytest.approx(40.0) and t2["harmed_pooled_pct"] == pytest.approx(20.0)
    assert (t2["success_rate_pooled_ci_low_pct"], t2["success_rate_pooled_ci_high_pct"]) == pytest.approx(
        tuple(100 * v for v in wilson_interval(4, 5)))
    assert (t2["sig_success_rate_pooled_ci_low_pct"], t2["sig_success_rate_pooled_ci_high_pct"]) == pytest.approx(
        tuple(100 * v for v in wilson_interval(2, 5)))
    assert t2["mean_delta_last_ci_low_pp"] == pytest.approx(100 * lo)
    # seeds: two pairs have two runs; their sample sds across seeds are 0 (t4) and 0.016 / sqrt(2) (t5)
    assert (t2["max_seeds"], t2["n_pairs_multi_seed"]) == (2, 2)
    assert t2["mean_seed_sd_pp"] == pytest.approx(100 * (0.0 + 0.016 / math.sqrt(2)) / 2)
    assert (fam["sig_success_rate_pct"], fam["harmed_pct"]) == (pytest.approx(40.0), pytest.approx(20.0))


def test_per_transfer_intervals_in_fig7_tab1_tab9(significance_root: Path) -> None:
    from zoo_study.stats import mcnemar_exact_p, paired_delta_ci

    with connect(significance_root) as db:
        g = [r for r in db.named("fig7_gain_vs_loss").to_pylist() if r["teacher"] == "t3"][0]
        t1 = db.named("tab1_kl_vs_kldp").to_pylist()[0]
    lo, hi = paired_delta_ci(1, 20, 1000)
    assert (g["delta_ci_low_pp"], g["delta_ci_high_pp"]) == pytest.approx((100 * lo, 100 * hi))
    assert g["p_mcnemar"] == mcnemar_exact_p(1, 20) and g["significant"] is True
    assert (g["n_gain"], g["n_loss"], g["n_eval"]) == (1, 20, 1000)
    assert t1["kl_dp_n"] == 5 and t1["kl_dp_n_sig"] == 2 and t1["kl_dp_seeds"] == 2
    assert t1["kl_dp_ci_low_pp"] < t1["kl_dp_mean_pp"] < t1["kl_dp_ci_high_pp"]


def test_one_teacher_tables_use_the_runs_score_interval(tmp_path: Path) -> None:
    from zoo_study.stats import paired_delta_ci

    b = RootBuilder(tmp_path)
    b.transfer("S", "A", "kl_dp", 0.01, n_gain=12, n_loss=2)
    b.transfer("S", ["A", "B"], "kl_dp", 0.02, mode="sequential", n_gain=25, n_loss=5)
    b.transfer("S", ["A", "B"], "kl_dp", 0.01, mode="soup", n_gain=12, n_loss=2, seed=0)
    b.transfer("S", ["A", "B"], "kl_dp", 0.03, mode="soup", n_gain=32, n_loss=2, seed=1)
    with connect(tmp_path) as db:
        t1 = db.named("tab1_kl_vs_kldp").to_pylist()[0]
        t4 = db.named("tab4_multi_teacher").to_pylist()[0]
        t9 = rows_by(db.named("tab9_multi_teacher_runs"), "mode", "seed")
    lo, hi = paired_delta_ci(12, 2, 1000)
    assert (t1["kl_dp_ci_low_pp"], t1["kl_dp_ci_high_pp"]) == pytest.approx((100 * lo, 100 * hi))
    lo, hi = paired_delta_ci(25, 5, 1000)
    assert (t4["sequential_ci_low_pp"], t4["sequential_ci_high_pp"]) == pytest.approx((100 * lo, 100 * hi))
    assert t4["single_max_ci_low_pp"] == pytest.approx(100 * paired_delta_ci(12, 2, 1000)[0])
    assert t4["single_source"] == "transfer"
    # two soup runs: the t interval over them (mean 2 pp, sd 1.414 pp, t(1) = tan(0.475 pi) = 12.7062)
    assert t4["soup_pp"] == pytest.approx(2.0)
    assert t4["soup_ci_low_pp"] == pytest.approx(2.0 - math.tan(0.475 * math.pi) * math.sqrt(2) / math.sqrt(2))
    assert t9[("sequential", 0)]["delta_ci_high_pp"] == pytest.approx(100 * hi)


def test_fig4b_and_fig8_carry_intervals(tmp_path: Path) -> None:
    from zoo_study.stats import mean_ci, paired_delta_ci

    b = RootBuilder(tmp_path)
    b.model("S", "cnn", 10.0)
    for i, (dacc, g, l) in enumerate(((-0.1, 12, 2), (-0.09, 30, 2), (0.1, 40, 5), (0.11, 10, 9))):
        b.pair_row(f"t{i}", "S", acc_t=0.5 + dacc, acc_s=0.5, rho_pos=0.05)
        b.transfer("S", f"t{i}", "kl_dp", (g - l) / 1000, n_gain=g, n_loss=l)
    b.write_scores()
    with connect(tmp_path) as db:
        bins = rows_by(db.named("fig4b_top25_by_delta_acc_bin"), "bin")
        s = db.named("fig8_delta_vs_student").to_pylist()[0]
    # bin 0 holds t0 and t1: the top quarter is t1 alone -> its own score interval
    assert bins[0]["n_top"] == 1
    assert (bins[0]["top25_ci_low_pp"], bins[0]["top25_ci_high_pp"]) == pytest.approx(
        tuple(100 * v for v in paired_delta_ci(30, 2, 1000)))
    m, lo, hi = mean_ci([0.010, 0.028])
    assert (bins[0]["mean_ci_low_pp"], bins[0]["mean_ci_high_pp"]) == pytest.approx((100 * lo, 100 * hi))
    m, lo, hi = mean_ci([0.010, 0.028, 0.035, 0.001])
    assert (s["ci_low_pp"], s["ci_high_pp"]) == pytest.approx((100 * lo, 100 * hi))


def test_mixup_kd_table_keeps_teachers_with_and_without_mixup_apart(tmp_path: Path) -> None:
    from zoo_study.stats import mean_ci

    b = RootBuilder(tmp_path)
    b.model("S", "cnn", 10.0)
    # recipe_json as the zoo writes it: the checkpoint metadata, with the recipe under "recipe"
    b.model("t_plain", "cnn", 10.0, source="embedded", recipe={"arch": "x", "recipe": {"mixup_alpha": 0.0}})
    b.model("t_mix", "cnn", 10.0, source="embedded", recipe={"arch": "x", "recipe": {"mixup_alpha": 0.4}})
    b.model("t_timm", "cnn", 10.0)  # no recipe: unknown
    # Std-KD under PMU 10% from each teacher; t_mix twice (seeds): +2 and +4 pp -> mean 3 pp, its t interval
    b.transfer("S", "t_plain", "std_kd", 0.01, mixup="pmu", mixup_share=0.1)
    b.transfer("S", "t_mix", "std_kd", 0.02, mixup="pmu", mixup_share=0.1, seed=0)
    b.transfer("S", "t_mix", "std_kd", 0.04, mixup="pmu", mixup_share=0.1, seed=1)
    b.transfer("S", "t_timm", "std_kd", 0.03, mixup="pmu", mixup_share=0.1)
    with connect(tmp_path) as db:
        rows = rows_by(db.named("tab_mixup_kd"), "teacher_mixup")
    assert set(rows) == {"none", "mixup", None}
    assert rows["none"]["n_runs"] == 1 and rows["none"]["delta_pp"] == pytest.approx(1.0)
    assert rows["mixup"]["n_runs"] == 2 and rows["mixup"]["delta_pp"] == pytest.approx(3.0)
    _, lo, hi = mean_ci([0.02, 0.04])
    assert (rows["mixup"]["delta_ci_low_pp"], rows["mixup"]["delta_ci_high_pp"]) == pytest.approx(
        (round(100 * lo, 2), round(100 * hi, 2)))
    assert rows[None]["n_runs"] == 1 and rows["mixup"]["mixed_pct"] == 10


def test_mixup_kd_table_pairs_each_mixed_seed_with_its_unmixed_twin(tmp_path: Path) -> None:
    """Scratch Std-KD students, three seeds per mixing; the effect of mixing is the per-seed difference
    to the unmixed run of the same seed, its mean with a t interval over the seeds (2 df)."""
    b = RootBuilder(tmp_path)
    b.model("S", "cnn", 10.0)
    b.model("T", "cnn", 10.0, source="embedded", recipe={"arch": "x", "recipe": {"mixup_alpha": 0.0}})
    accs = {("none", 0.0): (0.50, 0.53, 0.47), ("pmu", 0.1): (0.52, 0.54, 0.50), ("fmu", 1.0): (0.45, 0.49, 0.44)}
    for (mix, share), by_seed in accs.items():
        for seed, acc in enumerate(by_seed):
            b.transfer("S", "T", "std_kd", acc - 0.01, acc_before=0.01, seed=seed, student_init="scratch",
                       mixup=mix, mixup_share=share, lr=0.05)
    # PMU 50% at another lr: no unmixed twin, so no paired effect (but it is a row of its own)
    b.transfer("S", "T", "std_kd", 0.60 - 0.01, acc_before=0.01, student_init="scratch", mixup="pmu",
               mixup_share=0.5, lr=0.1)
    with connect(tmp_path) as db:
        rows = rows_by(db.named("tab_mixup_kd"), "mixup", "mixed_pct")
    assert set(rows) == {("none", 0), ("pmu", 10), ("fmu", 100), ("pmu", 50)}
    none, pmu, fmu = rows[("none", 0)], rows[("pmu", 10)], rows[("fmu", 100)]
    assert none["n_runs"] == none["n_seeds"] == 3 and none["acc_after_pct"] == pytest.approx(50.0)
    assert none["vs_none_pp"] is None and none["n_paired"] is None
    # PMU 10%: per seed +2, +1, +3 pp -> mean 2 pp, sd 1 pp; t(0.975, 2) = 4.3027: 2 -+ 4.3027 / sqrt(3)
    assert pmu["n_paired"] == 3 and pmu["vs_none_pp"] == pytest.approx(2.0, abs=1e-6)
    assert (pmu["vs_none_ci_low_pp"], pmu["vs_none_ci_high_pp"]) == pytest.approx((-0.48, 4.48), abs=1e-6)
    # FMU: -5, -4, -3 pp -> mean -4, sd 1: -4 -+ 2.48
    assert fmu["vs_none_pp"] == pytest.approx(-4.0, abs=1e-6)
    assert (fmu["vs_none_ci_low_pp"], fmu["vs_none_ci_high_pp"]) == pytest.approx((-6.48, -1.52), abs=1e-6)
    # unpaired, the accuracies' own intervals are wider: PMU's spread over seeds is 2 pp, not 1
    assert pmu["acc_ci_high_pct"] - pmu["acc_ci_low_pct"] > pmu["vs_none_ci_high_pp"] - pmu["vs_none_ci_low_pp"]
    assert rows[("pmu", 50)]["n_paired"] is None and rows[("pmu", 50)]["vs_none_pp"] is None
    assert {r["epochs"] for r in rows.values()} == {3} and none["student_init"] == "scratch"


def test_variant_transfers_stay_out_of_the_papers_analyses(tmp_path: Path) -> None:
    """A temperature variant is a pretrained, unmixed transfer too: only its variant mark keeps it from
    counting as a second run of the method."""
    b = RootBuilder(tmp_path)
    b.transfer("A", "t1", "kl", 0.02)
    b.transfer("A", "t1", "kl", -0.2, variant='{"temperature":4.0}')
    with connect(tmp_path) as db:
        tab2 = rows_by(db.named("tab2_method_summary"), "method")
        n_all = db.query("SELECT count(*) AS n FROM transfers").to_pylist()[0]["n"]
    assert n_all == 2
    assert tab2["kl"]["n_runs"] == 1 and tab2["kl"]["mean_delta_last_pp"] == pytest.approx(2.0)


def test_the_mixup_table_reads_the_recipe_where_the_zoo_writes_it(tmp_path: Path) -> None:
    """The catalog's recipe_json is a trained checkpoint's metadata: pin the path the Mixup-KD table reads."""
    import json

    from zoo_study.data import GeneratedSpec, make_generated
    from zoo_study.zoo.loading import load_model
    from zoo_study.zoo.recipes import recipe_by_id
    from zoo_study.zoo.ref import ModelRef
    from zoo_study.zoo.train import train_recipe

    src = make_generated(GeneratedSpec(num_superclasses=2, classes_per_superclass=2, n_train=32, n_eval=8,
                                       image_size=16))
    blob, _ = train_recipe(recipe_by_id("mixer_p8_mixup"), src, epochs_scale=0.01)
    path = tmp_path / "w.safetensors"
    path.write_bytes(blob)
    _, rec = load_model(ModelRef("mixer_p8_mixup", source="embedded", checkpoint=str(path), num_classes=4))
    assert json.loads(rec.recipe_json)["recipe"]["mixup_alpha"] == 0.4
    assert "$.recipe.mixup_alpha" in (Path(__file__).parents[1] / "analysis/queries/tab_mixup_kd.sql").read_text()
