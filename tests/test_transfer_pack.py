"""A pack of transfers of one pair (every method) gives bit-identical results to each transfer alone,
and a member that fails is that member's failure only."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from test_transfer_fixtures import tiny_source, trained
from zoo_study.methods import ObjectiveOutput, register_method, unregister_method
from zoo_study.transfer import TransferConfig, TransferDiverged, run_transfer
from zoo_study.transfer.job import run_transfer_pack

torch.set_num_threads(1)

BASE = dict(epochs=2, batch_size=30, transfer_fraction=0.4, seed=3)
METHOD_HP = {"crd": {"nce_k": 64}, "xe_kl_mcl": {"tau": 0.9, "N": 1}, "kl_dp": {"lambda": 0.75}}


def _configs():
    from zoo_study.methods import method_names

    return [TransferConfig(method=m, hparams=METHOD_HP.get(m, {}), base_lr=0.05, **BASE) for m in method_names()]


def _strip(table):
    return table.drop_columns([c for c in ("runtime_s", "job_id") if c in table.column_names]).to_pylist()


def test_packed_transfers_equal_each_transfer_alone_bit_for_bit():
    src = tiny_source()
    student, srec = trained(0)
    teacher, trec = trained(2, size=12)  # another input size: its own preprocessing
    configs = _configs()
    packed = run_transfer_pack(student, srec, (teacher, trec), src, configs, job_ids=[f"p{i}" for i in range(len(configs))])
    assert all(not isinstance(r, BaseException) for r in packed), packed
    for cfg, res in zip(configs, packed):
        alone = run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id="a")
        assert _strip(res.summary) == _strip(alone.summary), cfg.method
        assert _strip(res.epochs) == _strip(alone.epochs), cfg.method
        assert _strip(res.predictions) == _strip(alone.predictions), cfg.method
        sd_p, sd_a = res.model.state_dict(), alone.model.state_dict()
        assert all(torch.equal(sd_p[k], sd_a[k]) for k in sd_a), cfg.method


def test_a_failing_member_fails_alone_and_the_others_finish():
    @register_method("explodes", label="Explodes")
    def explodes(inp, p):
        """NaN loss from the first step."""
        return ObjectiveOutput(inp.student.sum() * math.nan)

    try:
        src = tiny_source()
        student, srec = trained(0)
        teacher, trec = trained(1)
        configs = [TransferConfig(method=m, **BASE) for m in ("kl", "explodes", "kl_dp")]
        out = run_transfer_pack(student, srec, (teacher, trec), src, configs, job_ids=["a", "b", "c"])
        assert isinstance(out[1], TransferDiverged) and "explodes loss is nan" in str(out[1])
        for cfg, res in zip([configs[0], configs[2]], [out[0], out[2]]):
            alone = run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id="x")
            assert _strip(res.summary) == _strip(alone.summary)
    finally:
        unregister_method("explodes")


def test_configs_that_cannot_share_batches_are_refused():
    src = tiny_source()
    student, srec = trained(0)
    teacher, trec = trained(1)
    configs = [TransferConfig(method="kl", **BASE), TransferConfig(method="kl_dp", **{**BASE, "seed": 4})]
    with pytest.raises(ValueError, match="share seed, batch size"):
        run_transfer_pack(student, srec, (teacher, trec), src, configs, job_ids=["a", "b"])


@pytest.mark.parametrize("student_init", ["pretrained", "scratch"])
def test_a_pack_of_several_students_of_one_teacher_equals_each_transfer_alone(student_init):
    from zoo_study.transfer.job import run_transfer_pack_students

    src = tiny_source()
    s_a, rec_a = trained(0)
    s_b, rec_b = trained(3, size=12)  # a second student with its own input size and preprocessing
    teacher, trec = trained(2)
    assert rec_a.model_id != rec_b.model_id
    # scratch students are rebuilt by timm from their record: it needs the recipe's model kwargs
    kwargs = json.dumps({"model_kwargs": {"channels": [8, 16, 32, 64]}})
    rec_a, rec_b = (dataclasses.replace(r, recipe_json=kwargs) for r in (rec_a, rec_b))
    methods = ("kl", "kl_dp", "xe_kl_mcl")  # kl_dp and MCL read each student's own frozen anchor
    configs, students = [], []
    for s, rec in ((s_a, rec_a), (s_b, rec_b)):
        for m in methods:
            configs.append(TransferConfig(method=m, hparams=METHOD_HP.get(m, {}), base_lr=0.05,
                                          student_init=student_init, **BASE))
            students.append((s, rec))
    packed = run_transfer_pack_students(students, (teacher, trec), src, configs,
                                        job_ids=[f"p{i}" for i in range(len(configs))])
    assert all(not isinstance(r, BaseException) for r in packed), packed
    for (s, rec), cfg, res in zip(students, configs, packed):
        alone = run_transfer(s, rec, [(teacher, trec)], src, cfg, job_id="a")
        assert res.row["student"] == rec.model_id
        assert _strip(res.summary) == _strip(alone.summary), (rec.model_id, cfg.method)
        assert _strip(res.epochs) == _strip(alone.epochs), (rec.model_id, cfg.method)
        assert _strip(res.predictions) == _strip(alone.predictions), (rec.model_id, cfg.method)
        sd_p, sd_a = res.model.state_dict(), alone.model.state_dict()
        assert all(torch.equal(sd_p[k], sd_a[k]) for k in sd_a), (rec.model_id, cfg.method)
    # the two students really trained apart: their results differ
    assert _strip(packed[0].predictions) != _strip(packed[len(methods)].predictions)


def test_a_pack_refuses_two_modules_under_one_student_id():
    from zoo_study.transfer.job import run_transfer_pack_students

    src = tiny_source()
    (s1, rec), (s2, _) = trained(0), trained(0)
    teacher, trec = trained(2)
    configs = [TransferConfig(method="kl", **BASE)] * 2
    with pytest.raises(ValueError, match="two different modules"):
        run_transfer_pack_students([(s1, rec), (s2, rec)], (teacher, trec), src, configs, job_ids=["a", "b"])
