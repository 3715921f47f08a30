"""Transfer metrics on hand-built per-sample arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from helpers import oracles
from zoo_study import metrics
from zoo_study.scoring import top_x_counts

B = np.array


def test_gain_loss_delta_by_hand():
    before = B([1, 1, 0, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    after = B([1, 0, 1, 1, 1, 0, 1, 0, 1, 0], dtype=bool)
    gain, loss = metrics.knowledge_gain_loss(before, after)
    assert (gain, loss) == (0.3, 0.1)  # samples 2, 3, 8 gained; sample 1 lost
    m = metrics.transfer_metrics(before, after)
    assert (m.acc_before, m.acc_after) == (0.4, 0.6)
    assert m.gain - m.loss == m.delta  # exactly
    assert m.delta == pytest.approx(m.acc_after - m.acc_before, abs=1e-15)
    assert metrics.delta_transf(before, after) == m.delta


@pytest.mark.parametrize("seed", range(20))
def test_gain_minus_loss_is_delta_exactly_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 997))
    b, a = rng.random(n) < rng.random(), rng.random(n) < rng.random()
    m = metrics.transfer_metrics(b, a)
    assert m.gain - m.loss == m.delta
    assert round(m.delta * n) == int(a.sum()) - int(b.sum())


def test_rho_before_and_after():
    teacher = B([1, 1, 1, 0, 0, 1], dtype=bool)
    before = B([0, 0, 1, 1, 0, 1], dtype=bool)
    after = B([1, 0, 1, 0, 0, 1], dtype=bool)
    assert metrics.rho(teacher, before) == (2 / 6, 1 / 6)
    m = metrics.transfer_metrics(before, after, teacher)
    assert (m.rho_pos_before, m.rho_neg_before, m.rho_pos_after, m.rho_neg_after) == (2 / 6, 1 / 6, 1 / 6, 0.0)
    assert m.delta_rho_pos == pytest.approx(-1 / 6) and m.delta_rho_neg == pytest.approx(-1 / 6)
    assert metrics.transfer_metrics(before, after).delta_rho_pos is None


def test_success_rate_counts_the_real_number_of_teachers():
    assert oracles.success_rate([0.1, -0.2, 0.0]) == pytest.approx(1 / 3)  # 0 is not a success
    assert oracles.success_rate([0.5] * 7) == 1.0
    with pytest.raises(ValueError, match="at least one delta"):
        oracles.success_rate([])


def test_success_rates_table_averages_runs_per_teacher():
    t = pa.table({
        "method": ["kl_dp"] * 4 + ["kl"] * 2,
        "student": ["s"] * 6,
        "teacher": ["a", "a", "b", "c", "a", "b"],
        "delta_last": [0.2, -0.1, -0.3, 0.05, -0.1, 0.2],
    })
    rows = {r["method"]: r for r in oracles.success_rates(t).to_pylist()}
    assert rows["kl_dp"]["n_teachers"] == 3 and rows["kl_dp"]["success_rate"] == pytest.approx(2 / 3)  # a: mean 0.05
    assert rows["kl"]["success_rate"] == 0.5


def test_top_x_classes_exact_prefix_and_ties():
    c = B([1, 5, 0, 3, 1], dtype=np.int64)  # total 10; order 1 (5), 3 (3), 0 (1), 4 (1), 2 (0)
    assert oracles.top_x_classes(c, 50).tolist() == [1]  # 5/10 is exactly 50%: counts
    assert oracles.top_x_classes(c, 51).tolist() == [1, 3]
    assert oracles.top_x_classes(c, 85).tolist() == [0, 1, 3]  # ties by class id: 0 before 4
    assert oracles.top_x_classes(c, 100).tolist() == [0, 1, 3, 4]
    assert oracles.top_x_classes(c, 2.5).tolist() == [1]
    for x in (2, 5, 20, 50, 100):
        assert len(oracles.top_x_classes(c, x)) == top_x_counts(c[None], [x])[0, 0]
    assert oracles.top_x_classes(np.zeros(4, dtype=np.int64), 50).size == 0
    with pytest.raises(ValueError, match="x must be a percentage"):
        oracles.top_x_classes(c, 0)


def test_transfer_rate_top_x_by_hand():
    labels = B([0, 0, 1, 1, 2, 2, 2, 0])
    teacher = B([1, 1, 1, 1, 1, 0, 1, 0], dtype=bool)
    initial = B([0, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    final = B([1, 0, 1, 1, 0, 1, 1, 1], dtype=bool)
    # initial positive flips: samples 0, 1 (class 0), 2 (class 1), 4, 6 (class 2)
    pos = oracles.positive_flip_counts(teacher, initial, labels, 3)
    assert pos.tolist() == [2, 1, 2]
    assert oracles.transfer_rate(teacher, initial, final) == pytest.approx(3 / 5)  # 0, 2, 6 transferred
    top = oracles.top_x_classes(pos, 40)  # class 0 (ties with 2 broken by id) holds 40%
    assert top.tolist() == [0]
    assert oracles.transfer_rate(teacher, initial, final, labels, top) == 0.5
    assert oracles.transfer_rate(teacher, initial, final, labels, [1]) == 1.0
    assert oracles.transfer_rate(teacher, teacher, final) is None  # no positive flips: undefined


def test_length_and_dtype_errors():
    with pytest.raises(ValueError, match="same length"):
        metrics.knowledge_gain_loss(B([True]), B([True, False]))
    with pytest.raises(ValueError, match="boolean"):
        metrics.rho(B([1, 0]), B([True, False]))
    assert metrics.correctness([1, 2, 3], [1, 0, 3]).tolist() == [True, False, True]


def test_sql_success_rate_matches_the_python_oracle(tmp_path):
    """The figure's SQL (fig4a) and the oracle agree on a root with repeated seeds and zero deltas."""
    from analysis.db import connect
    from helpers.analysis_fixtures import RootBuilder

    b = RootBuilder(tmp_path)
    runs = [("A", "t1", 0.01, 0), ("A", "t2", -0.02, 0), ("A", "t3", 0.0, 0), ("B", "t1", 0.01, 0),
            ("B", "t1", -0.03, 1), ("B", "t2", 0.02, 0)]
    for s, t, d, seed in runs:
        b.transfer(s, t, "kl_dp", d, seed=seed)
    with connect(tmp_path) as db:
        sql = {r["student"]: r["success_rate_pct"] / 100 for r in db.named("fig4a_success_rate").to_pylist()}
        summaries = db.query("SELECT * FROM transfers")
    oracle = {r["student"]: r["success_rate"] for r in oracles.success_rates(summaries).to_pylist()}
    assert sql == pytest.approx(oracle) and sql == pytest.approx({"A": 1 / 3, "B": 1 / 2})
