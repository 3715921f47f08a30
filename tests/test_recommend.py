"""`zoo-study recommend`: teachers ranked for a student on hand-built roots where the right order is known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analysis.db import connect
from analysis.recommend import MIN_TRANSFERS, cross_validate, recommend, score_only_order, training_table
from helpers.analysis_fixtures import RootBuilder
from pipelines.cli import main

STUDENTS = [f"S{i}" for i in range(6)]
TEACHERS = [f"T{j}" for j in range(6)]


def _kappa(i: int, j: int) -> float:
    """A deterministic spread of agreement: teacher j agrees with student i by this much."""
    return 0.1 + 0.12 * ((3 * i + 5 * j) % 6)


def _root(tmp: Path, with_transfers: bool = True) -> RootBuilder:
    """6 students x 6 teachers. The transfer delta falls with kappa (complementary teachers help) and has
    nothing to do with rho_pos or teacher accuracy, which run against it on purpose: the most accurate
    teacher and the most complementary one (score-only rule) are wrong picks, the fitted model is not."""
    b = RootBuilder(tmp)
    for i, s in enumerate(STUDENTS):
        for j, t in enumerate(TEACHERS):
            k = _kappa(i, j)
            b.pair_row(t, s, acc_t=0.5 + 0.05 * j, acc_s=0.6, rho_pos=0.02 + 0.01 * j, kappa=k)
            if with_transfers:
                b.transfer(s, t, "kl_dp", 0.03 - 0.05 * k)
    b.write_scores()
    return b


def test_the_model_recovers_a_known_order_the_baselines_miss(tmp_path: Path) -> None:
    _root(tmp_path)
    with connect(tmp_path) as db:
        rec = recommend(db, "S2", "kl_dp", top=None)
    assert rec.basis == "model"
    rows = rec.table.to_pylist()
    expected = sorted(TEACHERS, key=lambda t: (_kappa(2, int(t[1:])), t))  # lowest kappa = largest delta
    assert [r["teacher"] for r in rows] == expected
    # predictions close to the truth (the relation is exactly linear), intervals contain them
    for r in rows:
        truth = 100 * (0.03 - 0.05 * _kappa(2, int(r["teacher"][1:])))
        assert r["predicted_delta_pp"] == pytest.approx(truth, abs=0.3)
        assert r["pi_low_pp"] <= truth <= r["pi_high_pp"]
    assert "kappa" in rows[0]["drivers"]
    q = rec.quality
    assert q.n_students == 6 and q.n_transfers == 36
    assert q.rows["model"]["top1"].value == 1.0 and q.rows["model"]["spearman"].value > 0.95
    # rho_pos and accuracy grow with j, which is unrelated to the delta: both baselines are at chance or worse
    assert q.rows["most accurate"]["top1"].value < 0.5 and q.rows["score-only"]["top1"].value < 0.5
    assert q.rows["model"]["top1"].low > q.rows["most accurate"]["top1"].value  # Wilson interval above it


def test_without_transfers_it_ranks_by_the_documented_score_only_rule(tmp_path: Path) -> None:
    _root(tmp_path, with_transfers=False)
    with connect(tmp_path) as db:
        rec = recommend(db, "S0", "kl_dp", top=3)
    assert rec.basis == "score-only" and rec.quality is None
    assert [r["teacher"] for r in rec.table.to_pylist()] == ["T5", "T4", "T3"]  # rho_pos descending
    assert all(math.isnan(r["predicted_delta_pp"]) for r in rec.table.to_pylist())
    assert "no model is fitted" in rec.notes[0] and "rho_pos" in rec.notes[0]


def test_score_only_order_breaks_ties_by_teacher_accuracy() -> None:
    assert list(score_only_order([0.1, 0.3, 0.3, 0.0], [0.9, 0.5, 0.7, 0.99])) == [2, 1, 0, 3]


def test_too_few_transfers_fall_back_to_score_only(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    for j, t in enumerate(TEACHERS):
        b.pair_row(t, "S0", acc_t=0.5, acc_s=0.6, rho_pos=0.01 * (j + 1))
    b.write_scores()
    for t in TEACHERS[: MIN_TRANSFERS - 3]:
        b.transfer("S0", t, "kl_dp", 0.01)
    with connect(tmp_path) as db:
        rec = recommend(db, "S0", "kl_dp")
    assert rec.basis == "score-only" and f"{MIN_TRANSFERS - 3} finished" in rec.notes[0]


def test_conformal_intervals_cover_held_out_students(tmp_path: Path) -> None:
    b = _root(tmp_path)
    with connect(tmp_path) as db:
        train = training_table(db, "kl_dp")
    q = cross_validate(train, alpha=0.1)
    assert 0 < q.conformal_q < 0.01  # the relation is exact: a narrow band
    assert q.alpha == 0.1 and b is not None
    # every pair was predicted once while its student was held out; 90% of them within the band
    assert len(q.held_out) == 36 and {s for s, _, _, _ in q.held_out} == set(STUDENTS)
    inside = sum(abs(p - o) <= q.conformal_q for _, _, p, o in q.held_out)
    assert inside >= math.ceil(0.9 * 36)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_prints_the_ranking_and_writes_out(tmp_path: Path, capsys) -> None:
    root = tmp_path / "root"
    _root(root)
    out = tmp_path / "rank.json"
    assert main(["recommend", str(root), "--student", "S2", "--top", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "teachers for S2 (kl_dp; basis: model)" in text and "held-out ranking quality" in text
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 3 and data["rows"][0]["rank"] == 1
    pq_out = tmp_path / "rank.parquet"
    assert main(["recommend", str(root), "--student", "S2", "--out", str(pq_out)]) == 0
    assert pq.read_table(pq_out).num_rows == 6


@pytest.mark.parametrize("argv, message", [
    (["--student", "nobody"], "student 'nobody' has no scored pairs"),
    (["--student", "S0", "--method", "klx"], "unknown method 'klx'; valid:"),
    (["--student", "S0", "--top", "-1"], "--top must be >= 0"),
    (["--student", "S0", "--alpha", "1.5"], "--alpha must be in (0, 1)"),
    (["--student", "S0", "--out", "{root}/scores/x.csv"], "inside the results root"),
    (["--student", "S0", "--out", "{tmp}/x.txt"], "use one of .csv, .parquet, .json"),
])
def test_cli_refuses_bad_input_with_one_line_and_exit_2(tmp_path: Path, capsys, argv, message) -> None:
    root = tmp_path / "root"
    _root(root)
    argv = [a.format(root=root, tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(["recommend", str(root), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_refuses_a_root_without_scores(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["recommend", str(tmp_path), "--student", "S0"])
    assert exc.value.code == 2 and "no scored pairs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["recommend", str(tmp_path / "missing"), "--student", "S0"])
    assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_the_report_has_a_which_teacher_section(tmp_path: Path) -> None:
    from analysis.report import build_report

    _root(tmp_path)
    page = build_report(tmp_path).read_text()
    assert '<section id="which_teacher">' in page
    section = page.split('<section id="which_teacher">')[1].split("</section>")[0]
    assert "held-out ranking quality" in section and "most accurate" in section
    assert section.count("<tr><td>S") == 6  # each student's top-3 teachers
    assert "data:image/png;base64," in section  # predicted vs observed, kappa vs rho_pos


def test_mean_spearman_interval_stays_within_what_r_can_take() -> None:
    from analysis.recommend import _metric_mean

    # r = 1, 1, 0.4 over three held-out students: mean 0.8, sd = sqrt(0.12) = 0.3464, t(2) = 4.303;
    # half-width 4.303 x 0.3464 / sqrt(3) = 0.8606, so the t interval [-0.061, 1.661] is clipped to 1
    m = _metric_mean([1.0, 1.0, 0.4])
    assert m.value == pytest.approx(0.8) and m.n == 3
    assert m.low == pytest.approx(0.8 - 0.8606, abs=1e-3) and m.high == 1.0
    # a difference of two r (bounds [-2, 2]) keeps the same interval unclipped
    d = _metric_mean([1.0, 1.0, 0.4], (-2.0, 2.0))
    assert d.high == pytest.approx(0.8 + 0.8606, abs=1e-3)
    # NaN (a student whose observed deltas are all equal) is left out, not counted
    assert _metric_mean([0.5, math.nan, 0.3]).n == 2
