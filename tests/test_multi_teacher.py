"""Many teachers: parallel source choice, sequential stages, model soups."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from zoo_study.store import TRANSFER_EPOCH_SCHEMA, TRANSFER_PREDICTION_SCHEMA, TRANSFER_SUMMARY_SCHEMA
from zoo_study.transfer import (
    ObjectiveInputs,
    TransferConfig,
    get_method,
    order_teachers,
    route_sources,
    run_transfer,
    soup_state_dicts,
)

from helpers.transfer_fixtures import state_equal, tiny_model, tiny_source, trained

torch.set_num_threads(1)

FAST = dict(epochs=2, batch_size=30, transfer_fraction=0.4, base_lr=0.2)
SAME_NUMBERS = ("job_id", "mode", "study_part", "runtime_s")


def _numbers(res):
    return res.summary.drop_columns(list(SAME_NUMBERS)).to_pylist()[0]


# ---------------------------------------------------------------------------------------------- parallel
def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_parallel_source_choice_supervised_by_hand():
    y = torch.tensor([0, 1, 2, 0])
    frozen = t([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    t1 = t([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    t2 = t([[0.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [0.0, 5.0, 0.0]])
    # row 0: student most sure of y; row 1: teacher 2; row 2: teachers tie -> teacher 1;
    # row 3: student and teacher 1 tie (identical logits) -> student
    route = route_sources(frozen, torch.stack([t1, t2]), y, supervised=True)
    assert route.tolist() == [0, 2, 1, 0]
    out = get_method("kl_dp").fn(
        ObjectiveInputs(student=torch.zeros(4, 3), teachers=torch.stack([t1, t2]), frozen=frozen, labels=y), {})
    uniform = [1 / 3] * 3

    def kl(z):
        p = [math.exp(v) / sum(math.exp(w) for w in z) for v in z]
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, uniform))

    hand = (kl([2, 0, 0]) + kl([0, 3, 0]) + kl([0, 0, 3]) + kl([1, 0, 0])) / 4
    assert out.loss.item() == pytest.approx(hand, rel=1e-6)
    assert float(out.logs["teacher_share"]) == 0.5


def test_parallel_source_choice_unsupervised_by_hand():
    frozen = t([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    t1 = t([[0.0, 3.0], [0.0, 0.5], [0.0, 1.0]])
    t2 = t([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0]])
    # row 0: teacher 1 most confident (other class: labels unused); row 1: teacher 2;
    # row 2: all three tie on max-probability -> student
    route = route_sources(frozen, torch.stack([t1, t2]), None, supervised=False)
    assert route.tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="needs labels"):
        route_sources(frozen, torch.stack([t1, t2]), None, supervised=True)


def test_parallel_with_one_teacher_equals_single_kl_dp():
    src = tiny_source()
    student, srec = trained(0)
    teacher, trec = trained(2, size=12)
    single = run_transfer(student, srec, [(teacher, trec)], src, TransferConfig(method="kl_dp", **FAST), job_id="a")
    par = run_transfer(student, srec, [(teacher, trec)], src, TransferConfig(method="kl_dp", mode="parallel", **FAST),
                       job_id="b")
    assert _numbers(single) == _numbers(par)
    assert par.row["mode"] == "parallel" and par.row["study_part"] == "multi_teacher"


def test_parallel_two_teachers_tables():
    src = tiny_source()
    student, srec = trained(0)
    (t1, r1), (t2, r2) = trained(1), trained(2, size=12)
    res = run_transfer(student, srec, [(t1, r1), (t2, r2)], src,
                       TransferConfig(method="kl_dp_unsup", mode="parallel", **FAST), job_id="p")
    row = res.row
    assert res.summary.schema == TRANSFER_SUMMARY_SCHEMA and res.epochs.schema == TRANSFER_EPOCH_SCHEMA
    assert row["teacher"] == f"{r1.model_id}+{r2.model_id}" and row["teachers"] == [r1.model_id, r2.model_id]
    assert set(res.epochs.column("stage").to_pylist()) == {0} and len(res.epochs) == 3
    assert 0 <= row["teacher_share"] <= 1


# -------------------------------------------------------------------------------------------- sequential
def test_sequential_with_one_teacher_equals_single_transfer():
    src = tiny_source()
    student, srec = trained(0)
    teacher, trec = trained(2, size=12)
    for method in ("kl_dp", "xe_kl"):
        single = run_transfer(student, srec, [(teacher, trec)], src, TransferConfig(method=method, **FAST), job_id="s")
        seq = run_transfer(student, srec, [(teacher, trec)], src,
                           TransferConfig(method=method, mode="sequential", **FAST), job_id="s")
        assert _numbers(single) == _numbers(seq)
        assert single.epochs.equals(seq.epochs)
        assert single.predictions.equals(seq.predictions)
        assert state_equal(single.model, seq.model)


def test_order_teachers():
    accs = [0.5, 0.7, 0.5, 0.6]
    assert order_teachers(accs, "given") == [0, 1, 2, 3]
    assert order_teachers(accs, "ascending") == [0, 2, 3, 1]  # ties keep the given order
    assert order_teachers(accs, "descending") == [1, 3, 0, 2]


def test_sequential_stages_anchor_and_rows():
    src = tiny_source()
    student, srec = trained(0)
    (t1, r1), (t2, r2) = trained(3), trained(1)  # t2 (seed 1) is the more accurate teacher
    res = run_transfer(student, srec, [(t1, r1), (t2, r2)], src,
                       TransferConfig(method="kl_dp", mode="sequential", teacher_order="descending", **FAST),
                       job_id="seq")
    row = res.row
    assert row["teachers"] == [r2.model_id, r1.model_id] and row["teacher"] == f"{r2.model_id}+{r1.model_id}"
    ep = res.epochs.to_pylist()
    assert [(r["stage"], r["stage_teacher"], r["epoch"]) for r in ep] == [
        (0, r2.model_id, 0), (0, r2.model_id, 1), (0, r2.model_id, 2),
        (1, r1.model_id, 0), (1, r1.model_id, 1), (1, r1.model_id, 2)]
    assert ep[3]["acc"] == ep[2]["acc"] and ep[3]["delta"] == ep[2]["delta"]  # stage 1 starts where 0 ended
    assert ep[-1]["acc"] == row["acc_last"] and all(r["gain"] - r["loss"] == r["delta"] for r in ep)
    assert row["best_epoch"] in (1, 2, 3, 4) and row["acc_best"] == max(r["acc"] for r in ep if r["epoch"] > 0)
    assert [s["teacher"] for s in res.info["phases"]] == [r2.model_id, r1.model_id]
    # stage 0 of the two-teacher job is the single-teacher job with the first teacher
    single = run_transfer(student, srec, [(t2, r2)], src, TransferConfig(method="kl_dp", **FAST), job_id="x")
    assert single.epochs.to_pylist()[:3] == [{**r, "job_id": "x"} for r in ep[:3]]
    given = run_transfer(student, srec, [(t1, r1), (t2, r2)], src,
                         TransferConfig(method="kl_dp", mode="sequential", epochs=1, batch_size=30,
                                        transfer_fraction=0.2), job_id="g")
    assert given.row["teachers"] == [r1.model_id, r2.model_id]


# ------------------------------------------------------------------------------------------------- soup
def test_soup_of_identical_students_equals_the_student():
    m = tiny_model(0)
    m.train()
    m(torch.randn(4, 3, 16, 16))  # non-trivial BN statistics
    states = [copy.deepcopy(m.state_dict()) for _ in range(3)]
    soup = soup_state_dicts(states)
    assert all(torch.equal(soup[k], v) for k, v in m.state_dict().items())


def test_soup_averages_floats_and_copies_integer_buffers():
    a, b = tiny_model(0).state_dict(), tiny_model(1).state_dict()
    b = {k: (v + 1 if not v.is_floating_point() else v) for k, v in b.items()}  # num_batches_tracked differs
    soup = soup_state_dicts([a, b])
    for k, v in soup.items():
        if v.is_floating_point():
            assert torch.allclose(v, (a[k] + b[k]) / 2, atol=1e-7)
        else:
            assert torch.equal(v, a[k]) and v.dtype == a[k].dtype
    with pytest.raises(ValueError, match="at least one"):
        soup_state_dicts([])


def test_soup_job_tables_and_members():
    src = tiny_source()
    student, srec = trained(0)
    (t1, r1), (t2, r2) = trained(1), trained(2, size=12)
    cfg = TransferConfig(method="xe_kl", mode="soup", **FAST)
    res = run_transfer(student, srec, [(t1, r1), (t2, r2)], src, cfg, job_id="soup")
    assert res.summary.schema == TRANSFER_SUMMARY_SCHEMA and res.predictions.schema == TRANSFER_PREDICTION_SCHEMA
    row, ep = res.row, res.epochs.to_pylist()
    assert (row["mode"], row["study_part"]) == ("soup", "multi_teacher")
    assert [(r["stage"], r["epoch"]) for r in ep] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 2)]
    assert ep[-1]["stage_teacher"] == f"{r1.model_id}+{r2.model_id}"
    assert ep[-1]["acc"] == row["acc_last"] == row["acc_best"] and row["delta_best"] == row["delta_last"]
    # each member is exactly the single-teacher transfer; the soup is their average
    members = [run_transfer(student, srec, [(t, r)], src, TransferConfig(method="xe_kl", **FAST), job_id="m") for t, r in
               ((t1, r1), (t2, r2))]
    assert [r["acc"] for r in ep[:3]] == members[0].epochs.column("acc").to_pylist()
    expect = soup_state_dicts([m.model.state_dict() for m in members])
    assert all(torch.equal(res.model.state_dict()[k], v) for k, v in expect.items())


def test_single_mode_rejects_several_teachers_and_parallel_needs_routing():
    with pytest.raises(ValueError, match="cannot run in parallel mode; routing methods"):
        TransferConfig(method="xe_kl", mode="parallel")
