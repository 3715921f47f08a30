"""Transfer metrics on hand-built per-sample arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

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
    assert metrics.success_rate([0.1, -0.2, 0.0]) == pytest.approx(1 / 3)  # 0 is not a success
    assert metrics.success_rate([0.5] * 7) == 1.0
    with pytest.raises(ValueError, match="at least one delta"):
        metrics.success_rate([])


def test_success_rates_table_averages_runs_per_teacher():
    t = pa.table({
        "method": ["kl_dp"] * 4 + ["kl"] * 2,
        "student": ["s"] * 6,
        "teacher": ["a", "a", "b", "c", "a", "b"],
        "delta_last": [0.2, -0.1, -0.3, 0.05, -0.1, 0.2],
    })
    rows = {r["method"]: r for r in metrics.success_rates(t).to_pylist()}
    assert rows["kl_dp"]["n_teachers"] == 3 and rows["kl_dp"]["success_rate"] == pytest.approx(2 / 3)  # a: mean 0.05
    assert rows["kl"]["success_rate"] == 0.5


def test_top_x_classes_exact_prefix_and_ties():
    c = B([1, 5, 0, 3, 1], dtype=np.int64)  # total 10; order 1 (5), 3 (3), 0 (1), 4 (1), 2 (0)
    assert metrics.top_x_classes(c, 50).tolist() == [1]  # 5/10 is exactly 50%: counts
    assert metrics.top_x_classes(c, 51).tolist() == [1, 3]
    assert metrics.top_x_classes(c, 85).tolist() == [0, 1, 3]  # ties by class id: 0 before 4
    assert metrics.top_x_classes(c, 100).tolist() == [0, 1, 3, 4]
    assert metrics.top_x_classes(c, 2.5).tolist() == [1]
    for x in (2, 5, 20, 50, 100):
        assert len(metrics.top_x_classes(c, x)) == top_x_counts(c[None], [x])[0, 0]
    assert metrics.top_x_classes(np.zeros(4, dtype=np.int64), 50).size == 0
    with pytest.raises(ValueError, match="x must be a percentage"):
        metrics.top_x_classes(c, 0)


def test_transfer_rate_top_x_by_hand():
    labels = B([0, 0, 1, 1, 2, 2, 2, 0])
    teacher = B([1, 1, 1, 1, 1, 0, 1, 0], dtype=bool)
    initial = B([0, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    final = B([1, 0, 1, 1, 0, 1, 1, 1], dtype=bool)
    # initial positive flips: samples 0, 1 (class 0), 2 (class 1), 4, 6 (class 2)
    pos = metrics.positive_flip_counts(teacher, initial, labels, 3)
    assert pos.tolist() == [2, 1, 2]
    assert metrics.transfer_rate(teacher, initial, final) == pytest.approx(3 / 5)  # 0, 2, 6 transferred
    top = metrics.top_x_classes(pos, 40)  # class 0 (ties with 2 broken by id) holds 40%
    assert top.tolist() == [0]
    assert metrics.transfer_rate(teacher, initial, final, labels, top) == 0.5
    assert metrics.transfer_rate(teacher, initial, final, labels, [1]) == 1.0
    assert metrics.transfer_rate(teacher, teacher, final) is None  # no positive flips: undefined


def test_length_and_dtype_errors():
    with pytest.raises(ValueError, match="same length"):
        metrics.knowledge_gain_loss(B([True]), B([True, False]))
    with pytest.raises(ValueError, match="boolean"):
        metrics.rho(B([1, 0]), B([True, False]))
    assert metrics.correctness([1, 2, 3], [1, 0, 3]).tolist() == [True, False, True]
