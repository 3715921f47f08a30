"""The Claims section: claim queries on roots whose answers are worked out by hand, verdicts computed in
SQL, the interval macros against zoo_study.stats, and the summary's uncertainty columns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.claims import (
    CLAIM_COLUMNS, VERDICTS, Claims, claim_queries, claim_text, claims_html, collect_claims, fmt_interval, size_sentence,
)
from analysis.db import connect
from helpers.analysis_fixtures import RootBuilder, build_full_root
from zoo_study.stats import Z95, mcnemar_exact_p, mean_ci, paired_delta_ci, t_quantile_975, wilson_interval

ALL_IDS = {"1", "2", "3a", "3b", "4a", "4b", "4c", "5", "6a", "6b_pos", "6b_neg", "7a", "7b"}


def claims_of(root: Path) -> dict[str, dict]:
    with connect(root) as db:
        c = collect_claims(db)
    assert c.errors == {}, c.errors
    return c.by_id()


def collect_claims_of(root: Path) -> Claims:
    with connect(root) as db:
        return collect_claims(db)


@pytest.fixture(scope="module")
def full_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("full_claims")
    build_full_root(root)
    return root


# ------------------------------------------------------------------------------------------ macros
def test_interval_macros_match_zoo_study_stats(tmp_path: Path) -> None:
    with connect(tmp_path) as db:
        t = db.query("SELECT d, t975(d) AS t FROM range(1, 41) r(d)").to_pylist()
        assert all(r["t"] == pytest.approx(t_quantile_975(r["d"]), abs=0) for r in t)
        # beyond the exact table: the expansion, within 1e-9 of the exact quantile for every df
        big = db.query("SELECT d, t975(d) AS t FROM range(95, 3000) r(d)").to_pylist()
        assert max(abs(r["t"] - t_quantile_975(r["d"])) for r in big) < 1e-9
        assert db.query("SELECT t975(0) AS t").column(0)[0].as_py() is None
        assert db.query("SELECT z975() AS z").column(0)[0].as_py() == Z95
        for k, n in ((0, 10), (3, 10), (10, 10), (30, 1000)):
            lo, hi = db.query("SELECT wilson_low($k, $n), wilson_high($k, $n)", {"k": k, "n": n}).to_pylist()[0].values()
            assert (lo, hi) == pytest.approx(wilson_interval(k, n), abs=1e-12)
        m, lo, hi = mean_ci([1.0, 2.0, 4.0])
        got = db.query("SELECT mean_ci_low(7.0 / 3, stddev_samp(x), 3) AS lo, mean_ci_high(7.0 / 3, stddev_samp(x), 3) AS hi "
                       "FROM (VALUES (1.0), (2.0), (4.0)) v(x)").to_pylist()[0]
        assert (got["lo"], got["hi"]) == pytest.approx((lo, hi), abs=1e-12)
        assert db.query("SELECT mean_ci_low(1.0, 0.5, 1)").column(0)[0].as_py() is None  # one unit: no interval
        r, n = 0.5, 10
        lo, hi = db.query("SELECT fisher_low(0.5, 10), fisher_high(0.5, 10)").to_pylist()[0].values()
        assert lo == pytest.approx(math.tanh(math.atanh(r) - Z95 / math.sqrt(n - 3)))
        assert hi == pytest.approx(math.tanh(math.atanh(r) + Z95 / math.sqrt(n - 3)))


@pytest.mark.parametrize(
    ("value", "lo", "hi", "threshold", "side", "verdict"),
    [
        (1.0, 0.2, 2.0, 0.0, ">", "holds"),
        (-1.0, -2.0, -0.2, 0.0, ">", "does not hold"),
        (0.1, -0.5, 0.7, 0.0, ">", "not enough power to tell"),
        (0.1, 0.0, 0.7, 0.0, ">", "not enough power to tell"),  # touching the threshold is not clearing it
        (30.0, 20.0, 40.0, 50.0, "<", "holds"),
        (60.0, 55.0, 70.0, 50.0, "<", "does not hold"),
        (45.0, 30.0, 60.0, 50.0, "<", "not enough power to tell"),
        (1.0, None, None, 0.0, ">", "not enough power to tell"),  # one unit: no interval
        (None, None, None, 0.0, ">", "no data"),
        (1.0, 0.5, 2.0, None, ">", "no data"),  # no threshold (e.g. no noise-floor rows)
    ],
)
def test_verdict_macro(tmp_path: Path, value, lo, hi, threshold, side, verdict) -> None:
    with connect(tmp_path) as db:
        got = db.query(
            "SELECT claim_verdict($v::DOUBLE, $lo::DOUBLE, $hi::DOUBLE, $t::DOUBLE, $s) AS v",
            {"v": value, "lo": lo, "hi": hi, "t": threshold, "s": side},
        ).column(0)[0].as_py()
    assert got == verdict


# ------------------------------------------------------------------------------ claim 4 (ordering)
def _ordering_root(root: Path, kl_dp: list[float], mcl: list[float]) -> Path:
    b = RootBuilder(root)
    for i, (a, c) in enumerate(zip(kl_dp, mcl)):
        b.transfer("S", f"T{i}", "kl_dp", a)
        b.transfer("S", f"T{i}", "xe_kl_mcl", c)
    b.transfer("S", "only_kl_dp", "kl_dp", 0.9)  # not a shared pair: left out of the paired difference
    return root


def test_claim_4_holds_with_the_hand_computed_t_interval(tmp_path: Path) -> None:
    # paired differences 0.04, 0.03, 0.05, 0.04, 0.04: mean 0.04, sd sqrt(0.0002 / 4) = 0.00707,
    # t(4) = 2.7764451 (exact) -> half-width 2.7764451 * 0.00707 / sqrt(5) = 0.00878 -> [3.12, 4.88] pp, above 0
    c = claims_of(_ordering_root(tmp_path, [0.05, 0.04, 0.06, 0.05, 0.05], [0.01] * 5))
    a = c["4a"]
    assert a["n"] == 5 and a["unit"] == "pp" and a["threshold"] == 0.0
    assert a["value"] == pytest.approx(4.0)
    half = 2.7764451051977934 * math.sqrt(0.0002 / 4) / math.sqrt(5)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((100 * (0.04 - half), 100 * (0.04 + half)))
    assert a["verdict"] == "holds"
    # the other comparisons have no xe_kl / kl runs
    assert c["4b"]["verdict"] == c["4c"]["verdict"] == "no data" and c["4b"]["n"] == 0


def test_claim_4_spanning_zero_is_not_enough_power(tmp_path: Path) -> None:
    c = claims_of(_ordering_root(tmp_path, [0.03, 0.0, 0.02, -0.005], [0.01] * 4))
    assert c["4a"]["value"] == pytest.approx(100 * (0.02 - 0.01 + 0.01 - 0.015) / 4)
    assert c["4a"]["ci_low"] < 0 < c["4a"]["ci_high"]
    assert c["4a"]["verdict"] == "not enough power to tell"


def test_claim_4_reversed_order_does_not_hold(tmp_path: Path) -> None:
    c = claims_of(_ordering_root(tmp_path, [0.0, 0.0, 0.0], [0.03, 0.04, 0.05]))
    assert c["4a"]["value"] == pytest.approx(-4.0)
    assert c["4a"]["ci_high"] < 0
    assert c["4a"]["verdict"] == "does not hold"


# -------------------------------------------------------------------------- claim 5 (weaker teachers)
def test_claim_5_mean_over_pairs_with_a_weaker_teacher(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    for t, d_acc in (("T1", -0.1), ("T2", -0.05), ("T4", -0.02), ("T3", 0.1)):
        b.pair_row(t, "S", acc_t=0.6 + d_acc, acc_s=0.6, rho_pos=0.05)
    b.pair_row("R", "S", acc_t=0.1, acc_s=0.6, rho_pos=0.001, teacher_is_random=True)
    b.write_scores()
    b.transfer("S", "T1", "kl_dp", 0.02)
    b.transfer("S", "T2", "kl_dp", 0.03, seed=0)  # two seeds: averaged to 0.04 first
    b.transfer("S", "T2", "kl_dp", 0.05, seed=1)
    b.transfer("S", "T4", "kl_dp", 0.03)
    b.transfer("S", "T3", "kl_dp", 0.5)  # stronger teacher: left out
    b.transfer("S", "R", "kl_dp", 0.9)  # random teacher: left out
    b.transfer("S", "T1", "kl", -0.5)  # another method
    # weaker-teacher deltas 0.02, 0.04, 0.03: mean 0.03, sd 0.01, t(2) = 0.95 / sqrt(2 * 0.975 * 0.025) -> 0.03 +- 0.02484
    five = claims_of(tmp_path)["5"]
    assert five["n"] == 3 and five["value"] == pytest.approx(3.0)
    m, lo, hi = mean_ci([0.02, 0.04, 0.03])
    assert (five["ci_low"], five["ci_high"]) == pytest.approx((100 * lo, 100 * hi))
    assert five["ci_low"] == pytest.approx(100 * (0.03 - 0.95 / math.sqrt(2 * 0.975 * 0.025) * 0.01 / math.sqrt(3)))
    assert five["verdict"] == "holds"


# -------------------------------------------------------------------------- claim 1 (noise floor)
@pytest.mark.parametrize(
    ("trained_pos", "random_pos", "verdict"),
    [
        ((50, 30), (1,), "holds"),  # 30/1000: Wilson [2.1%, 4.3%] vs the floor's upper bound 0.57%
        ((50, 2), (1,), "not enough power to tell"),  # 2/1000: [0.05%, 0.73%] spans 0.57%
        ((0,), (20,), "does not hold"),  # 0/1000: upper bound 0.38% < the floor's 3.1%
        ((50,), (), "no data"),  # no random-teacher rows: no floor to compare with
    ],
)
def test_claim_1_weakest_wilson_bound_vs_the_noise_floor(tmp_path: Path, trained_pos, random_pos, verdict) -> None:
    b = RootBuilder(tmp_path)
    n = 1000
    for i, k in enumerate(trained_pos):
        b.pair_row(f"T{i}", "S", acc_t=0.7, acc_s=0.7, rho_pos=k / n, n_samples=n)
    for i, k in enumerate(random_pos):
        b.pair_row(f"R{i}", "S", acc_t=0.1, acc_s=0.7, rho_pos=k / n, n_samples=n, teacher_is_random=True)
    b.pair_row("S", "S", acc_t=0.7, acc_s=0.7, rho_pos=0.0, n_samples=n)  # a self pair is not a trained pair
    b.write_scores()
    one = claims_of(tmp_path)["1"]
    k = min(trained_pos)
    assert one["value"] == pytest.approx(100 * k / n)
    assert (one["ci_low"], one["ci_high"]) == pytest.approx(tuple(100 * v for v in wilson_interval(k, n)))
    if random_pos:
        assert one["threshold"] == pytest.approx(100 * wilson_interval(max(random_pos), n)[1])
    else:
        assert one["threshold"] is None
    assert one["n"] == n and one["n_unit"] == "eval samples"
    assert one["verdict"] == verdict


# ---------------------------------------------------------------------------- claims 2, 3, 6 and 7
def test_claim_3b_correlation_with_fisher_interval_and_3a_wilson(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    d_acc = [-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2]
    kl = [-0.05, -0.03, -0.04, 0.0, 0.01, 0.02, 0.03]
    for i, d in enumerate(d_acc):
        b.pair_row(f"T{i}", "S", acc_t=0.6 + d, acc_s=0.6, rho_pos=0.05)
        b.transfer("S", f"T{i}", "kl", kl[i])
    b.write_scores()
    c = claims_of(tmp_path)
    r = float(np.corrcoef(kl, d_acc)[0, 1])
    row = c["3b"]
    assert row["value"] == pytest.approx(r) and row["n"] == 7 and row["unit"] == "r"
    half = Z95 / math.sqrt(7 - 3)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)))
    assert row["verdict"] == "holds"
    # 3a: 3 of 7 KL pairs positive -> Wilson (3, 7) spans 50%
    a = c["3a"]
    assert a["value"] == pytest.approx(300 / 7)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx(tuple(100 * v for v in wilson_interval(3, 7)))
    assert a["verdict"] == "not enough power to tell" and a["direction"] == "<"


def _claim2_root(tmp_path: Path, excess_of, n_models: int = 8) -> tuple[dict, list[float], list[float], list[float]]:
    """All ordered pairs of ``n_models`` models with accuracies 0.50, 0.53, ...; the pair's corrected
    entropy is 2.0 + excess_of(delta_acc, i), its null 2.0 and its plug-in entropy a flat 1.0."""
    b = RootBuilder(tmp_path)
    acc = [0.5 + 0.03 * i for i in range(n_models)]
    xs, ys, plug = [], [], []
    for i in range(n_models):
        for j in range(n_models):
            if i == j:
                continue
            d = acc[i] - acc[j]
            e = excess_of(d, i * n_models + j)
            b.pair_row(f"M{i}", f"M{j}", acc_t=acc[i], acc_s=acc[j], rho_pos=0.05, entropy=1.0,
                       entropy_corrected=2.0 + e, entropy_null=2.0)
            xs.append(e), ys.append(d), plug.append(1.0)
    b.write_scores()
    return claims_of(tmp_path)["2"], xs, ys, plug


def test_claim_2_uses_corrected_entropy_against_the_null_with_a_bootstrap_over_models(tmp_path: Path) -> None:
    # corrected entropy in excess of the null rises with delta_acc (plus a small deterministic wobble)
    row, xs, ys, _ = _claim2_root(tmp_path, lambda d, k: d + 0.01 * ((k * 7) % 5 - 2))
    r = float(np.corrcoef(xs, ys)[0, 1])
    assert row["value"] == pytest.approx(r) and row["n"] == 8 * 7 and row["unit"] == "r"
    assert row["ci_low"] <= r <= row["ci_high"] and row["ci_high"] - row["ci_low"] > 0
    assert row["verdict"] == "holds"
    assert "bootstrap over 8 models" in row["note"] and "plug-in r = n/a" in row["note"]  # flat plug-in: no r


def test_claim_2_bootstrap_over_models_is_wider_than_fishers_over_pairs(tmp_path: Path) -> None:
    # excess unrelated to delta_acc except through one model (the strongest, M7, as teacher): the 7 pairs
    # it teaches carry the whole correlation, so whether M7 is drawn decides a replicate's r
    row, xs, ys, _ = _claim2_root(tmp_path, lambda d, k: (0.5 if k // 8 == 7 else 0.0) + 0.02 * ((k * 13) % 7 - 3))
    r = float(np.corrcoef(xs, ys)[0, 1])
    n = len(xs)
    fisher_width = math.tanh(math.atanh(r) + Z95 / math.sqrt(n - 3)) - math.tanh(math.atanh(r) - Z95 / math.sqrt(n - 3))
    assert row["value"] == pytest.approx(r)
    assert row["ci_high"] - row["ci_low"] > fisher_width
    assert row["verdict"] in ("not enough power to tell", "does not hold")


def test_claim_2_without_a_null_has_no_data(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    for i in range(6):
        b.pair_row(f"T{i}", "S", acc_t=0.5 + 0.05 * i, acc_s=0.6, rho_pos=0.05, entropy=0.5 + 0.1 * i)
    b.write_scores()
    assert claims_of(tmp_path)["2"]["verdict"] == "no data"


def test_claim_3a_holds_when_kl_fails_clearly(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    for i in range(12):
        b.transfer("S", f"T{i}", "kl", 0.01 if i == 0 else -0.01)
    a = claims_of(tmp_path)["3a"]
    assert a["value"] == pytest.approx(100 / 12) and 100 * wilson_interval(1, 12)[1] < 50
    assert a["verdict"] == "holds"


def test_claim_6_loss_difference_and_routing(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    for i, (l_kl, l_dp, pos, neg) in enumerate(((0.08, 0.01, 0.7, 0.1), (0.06, 0.02, 0.75, 0.08), (0.07, 0.01, 0.72, 0.09))):
        b.transfer("S", f"T{i}", "kl", 0.0, gain=l_kl, loss=l_kl)
        b.transfer("S", f"T{i}", "kl_dp", 0.0, gain=l_dp, loss=l_dp, teacher_share_pos=pos, teacher_share_neg=neg)
    c = claims_of(tmp_path)
    m, lo, hi = mean_ci([0.07, 0.04, 0.06])
    assert c["6a"]["value"] == pytest.approx(100 * m) and c["6a"]["ci_low"] == pytest.approx(100 * lo)
    assert c["6a"]["verdict"] == "holds"
    m, lo, hi = mean_ci([0.7, 0.75, 0.72])
    assert (c["6b_pos"]["value"], c["6b_pos"]["ci_high"]) == pytest.approx((100 * m, 100 * hi))
    assert c["6b_pos"]["verdict"] == "holds" and c["6b_neg"]["verdict"] == "holds"
    assert c["6b_neg"]["value"] == pytest.approx(100 * 0.09)


def _multi_root(root: Path, with_predictions: bool) -> tuple[int, int, int]:
    """One student, teachers A and B alone and in sequence; returns (g, l, n) of sequential vs the best
    single teacher, sample by sample."""
    b = RootBuilder(root)
    n = 200
    rng = np.random.default_rng(0)
    y = np.zeros(n, dtype=int)
    before = np.where(rng.random(n) < 0.6, 0, 1)

    def job(teacher, mode, after):
        g, l = int(np.sum((before != y) & (after == y))), int(np.sum((before == y) & (after != y)))
        j = b.transfer("S", teacher, "kl_dp", (g - l) / n, mode=mode, study_part="multi_teacher", n_eval=n, n_gain=g, n_loss=l)
        if with_predictions:
            b.transfer_predictions(j, y, before, after)
        return after

    a = job("A", "single", np.where(rng.random(n) < 0.65, 0, 1))
    bb = job("B", "single", np.where(rng.random(n) < 0.62, 0, 1))
    b.transfer("S", "A", "kl_dp", 0.5)  # the main study's single run: not used, the set has its own baselines
    seq = job(["A", "B"], "sequential", np.where(rng.random(n) < 0.75, 0, 1))
    best = a if (a == 0).sum() >= (bb == 0).sum() else bb
    return int(np.sum((seq == y) & (best != y))), int(np.sum((seq != y) & (best == y))), n


def test_claim_7_one_student_uses_the_paired_score_interval(tmp_path: Path) -> None:
    g, l, n = _multi_root(tmp_path, with_predictions=True)
    seven = claims_of(tmp_path)["7a"]
    lo, hi = paired_delta_ci(g, l, n)
    assert seven["value"] == pytest.approx(100 * (g - l) / n)
    assert (seven["ci_low"], seven["ci_high"]) == pytest.approx((100 * lo, 100 * hi), abs=1e-8)
    assert seven["n"] == n and "one student" in seven["n_unit"]
    assert seven["verdict"] == ("holds" if lo > 0 else "not enough power to tell")
    assert claims_of(tmp_path)["7b"]["verdict"] == "no data"  # no soup run


def test_claim_7_one_student_without_predictions_is_n1_and_not_enough_power(tmp_path: Path) -> None:
    _multi_root(tmp_path, with_predictions=False)
    seven = claims_of(tmp_path)["7a"]
    assert seven["value"] is not None and seven["ci_low"] is None and seven["n"] == 1
    assert "n=1" in seven["note"] and seven["verdict"] == "not enough power to tell"


# ----------------------------------------------------------------------------------- the full root
def test_every_claim_is_present_on_the_full_root(full_root: Path) -> None:
    with connect(full_root) as db:
        c = collect_claims(db)
    assert c.errors == {}
    assert len(claim_queries()) == 7
    rows = c.by_id()
    assert set(rows) == ALL_IDS
    for r in rows.values():
        assert r["verdict"] in VERDICTS and r["claim"] and r["paper_ref"] and r["paper_value"], r
        assert r["verdict"] != "no data", r  # the full root has the rows every claim needs
        assert r["direction"] in (">", "<")
    assert c.size["n_eval_min"] == 80 and c.size["seeds_max"] == 1
    assert "80 eval samples per transfer" in size_sentence(c.size) and "1 seed per" in size_sentence(c.size)


def test_full_root_claims_1_4_5_match_a_computation_from_the_files(full_root: Path) -> None:
    rows = claims_of(full_root)
    pairs = pq.read_table(full_root / "scores" / "pairs.parquet").to_pylist()
    summaries = [pq.read_table(p).to_pylist()[0] for p in sorted((full_root / "transfers").glob("*/summary.parquet"))]
    single = [s for s in summaries if s["study_part"] == "transfer" and s["mode"] == "single"]

    def key(s):
        return "kl_dp_unsup" if '"unsupervised": true' in s["hparams_json"] else s["method"]

    delta = {(key(s), s["student"], s["teacher"]): s["delta_last"] for s in single}
    # claim 1: the trained pair with the smallest Wilson lower bound vs the random rows' largest upper bound
    trained = [p for p in pairs if not p["teacher_is_random"] and p["teacher"] != p["student"]]
    weakest = min(trained, key=lambda p: wilson_interval(p["n_pos"], p["n_samples"])[0])
    floor = max(wilson_interval(p["n_pos"], p["n_samples"])[1] for p in pairs if p["teacher_is_random"])
    assert rows["1"]["value"] == pytest.approx(100 * weakest["rho_pos"])
    assert rows["1"]["ci_low"] == pytest.approx(100 * wilson_interval(weakest["n_pos"], weakest["n_samples"])[0])
    assert rows["1"]["threshold"] == pytest.approx(100 * floor)
    # claim 4: paired differences over the pairs both methods ran on
    for cid, a, b in (("4a", "kl_dp", "xe_kl_mcl"), ("4b", "xe_kl_mcl", "xe_kl"), ("4c", "xe_kl", "kl")):
        diffs = [d - delta[(b, s, t)] for (m, s, t), d in delta.items() if m == a and (b, s, t) in delta]
        m, lo, hi = mean_ci(diffs)
        assert rows[cid]["n"] == len(diffs) == 12
        assert (rows[cid]["value"], rows[cid]["ci_low"], rows[cid]["ci_high"]) == pytest.approx((100 * m, 100 * lo, 100 * hi))
    # claim 5: KL+DP over pairs with a weaker trained teacher
    weak = {(p["student"], p["teacher"]) for p in trained if p["delta_acc"] < 0}
    vals = [d for (m, s, t), d in delta.items() if m == "kl_dp" and (s, t) in weak]
    m, lo, hi = mean_ci(vals)
    assert rows["5"]["n"] == len(vals) > 0
    assert (rows["5"]["value"], rows["5"]["ci_low"], rows["5"]["ci_high"]) == pytest.approx((100 * m, 100 * lo, 100 * hi))


def test_summary_uncertainty_columns_are_consistent(full_root: Path) -> None:
    with connect(full_root) as db:
        rows = db.query("SELECT * FROM transfers UNION ALL SELECT * FROM hparams").to_pylist()
    assert len(rows) > 60
    for r in rows:
        assert r["n_gain"] - r["n_loss"] == pytest.approx(r["delta_last"] * r["n_eval"], abs=1e-6)
        assert r["n_gain"] == pytest.approx(r["gain"] * r["n_eval"], abs=1e-6)
        assert r["p_mcnemar"] == mcnemar_exact_p(r["n_gain"], r["n_loss"])
        assert (r["delta_ci_low"], r["delta_ci_high"]) == paired_delta_ci(r["n_gain"], r["n_loss"], r["n_eval"])
        assert r["delta_ci_low"] <= r["delta_last"] <= r["delta_ci_high"]


def test_run_transfer_writes_the_uncertainty_columns() -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from helpers.transfer_fixtures import tiny_source, trained

    from zoo_study.transfer import TransferConfig, run_transfer

    src = tiny_source()
    student, srec = trained(0)
    teacher, trec = trained(2, size=12)
    res = run_transfer(student, srec, [(teacher, trec)], src,
                       TransferConfig(method="kl_dp", base_lr=0.2, epochs=1, batch_size=30, transfer_fraction=0.4),
                       job_id="unc1")  # fmt: skip
    row = res.row
    pred = res.predictions.to_pylist()
    g = sum(1 for p in pred if p["pred_before"] != p["label"] and p["pred_after"] == p["label"])
    l = sum(1 for p in pred if p["pred_before"] == p["label"] and p["pred_after"] != p["label"])
    assert (row["n_gain"], row["n_loss"]) == (g, l)
    assert row["n_gain"] - row["n_loss"] == round(row["delta_last"] * row["n_eval"])
    assert row["p_mcnemar"] == mcnemar_exact_p(g, l)
    assert (row["delta_ci_low"], row["delta_ci_high"]) == paired_delta_ci(g, l, row["n_eval"])


# -------------------------------------------------------------------------------------- presenting
def test_claim_text_uses_the_registry_labels() -> None:
    assert claim_text("{kl_dp} beats {xe_kl_mcl}; {nope} stays") == "KL+DP beats XE-KL + MCL; {nope} stays"
    assert fmt_interval(None, None, "pp") == "[no interval]"
    assert fmt_interval(-1.234, 2.5, "pp") == "[-1.23, +2.50]"


def test_the_family_wise_error_is_stated_under_the_table(tmp_path: Path) -> None:
    from analysis.claims import family_error, family_sentence

    rows = [{"claim_id": str(i), "verdict": v} for i, v in enumerate(["holds"] * 5 + ["not enough power to tell"] * 8 + ["no data"] * 2)]
    table = pa.Table.from_pylist([{c: r.get(c) for c in CLAIM_COLUMNS} | {"query": "q"} for r in rows])
    claims = Claims(table)
    m, bonf, indep = family_error(claims)
    assert m == 13  # 'no data' rows are not tested
    assert bonf == pytest.approx(13 * 0.025) and indep == pytest.approx(1 - 0.975**13)  # 32.5%, 28%
    text = family_sentence(claims)
    assert "13 claim(s)" in text and "28%" in text and "32.5%" in text
    assert "28%" in claims_html(claims)


# ------------------------------------------------------------------------------------ survivorship
def test_a_failed_transfer_counts_as_unsuccessful_and_harmed(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    for i in range(10):  # ten KL pairs that gained
        b.transfer("S", f"T{i}", "kl", 0.01)
    for i in range(10, 24):  # fourteen whose only run diverged: no summary row
        b.failed_transfer("S", f"T{i}", "kl")
    # not counted: a failure whose job later finished (its summary exists), and a skipped job (attempts 0)
    done = b.transfer("S", "T_rerun", "kl", 0.02)
    b.failure(done, spec_json=json.dumps({"student": {"model_id": "S"}, "teachers": [{"model_id": "T_rerun"}],
                                          "config": {"method": "kl"}}))
    b.failed_transfer("S", "T_skipped", "kl", attempts=0)
    a = claims_of(tmp_path)["3a"]
    # 11 of 25 pairs gained (T0..T9 and T_rerun); the 14 failed ones count as unsuccessful, not dropped
    assert a["n"] == 25 and a["n_failed"] == 14
    assert a["value"] == pytest.approx(100 * 11 / 25)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx(tuple(100 * v for v in wilson_interval(11, 25)))
    assert a["verdict"] == "not enough power to tell"  # dropping them would read 11 / 11 = 100%: 'does not hold'


def test_a_failed_transfer_enters_means_as_a_student_broken_to_chance(tmp_path: Path) -> None:
    b = RootBuilder(tmp_path)
    b.pair_row("T1", "S", acc_t=0.5, acc_s=0.6, rho_pos=0.05)
    b.pair_row("T2", "S", acc_t=0.4, acc_s=0.6, rho_pos=0.05)
    b.pair_row("T3", "S", acc_t=0.45, acc_s=0.6, rho_pos=0.05)
    b.write_scores()
    b.transfer("S", "T1", "kl_dp", 0.02)
    b.transfer("S", "T2", "kl_dp", 0.04)
    b.failed_transfer("S", "T3", "kl_dp")
    five = claims_of(tmp_path)["5"]
    harmed = 1 / b.num_classes - 0.6  # delta of a student at chance after starting at 60%
    m, lo, hi = mean_ci([0.02, 0.04, harmed])
    assert five["n"] == 3 and five["n_failed"] == 1
    assert (five["value"], five["ci_low"], five["ci_high"]) == pytest.approx((100 * m, 100 * lo, 100 * hi))
    html_text = claims_html(collect_claims_of(tmp_path))
    assert "1 failed run(s) counted as harmed" in html_text


def test_claims_that_are_the_budget_criterion_are_marked_conditional(full_root: Path) -> None:
    from analysis.claims import CONDITIONAL_ON_BUDGET

    page = claims_html(collect_claims_of(full_root))
    rows = {chunk.split('"', 1)[0]: chunk for chunk in page.split('<tr data-claim="')[1:]}
    assert CONDITIONAL_ON_BUDGET == {"3a", "3b", "4c", "6a"}
    for cid, row in rows.items():
        assert ("conditional on the budget selection" in row) == (cid in CONDITIONAL_ON_BUDGET), cid
