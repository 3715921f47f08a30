"""A pack of transfers of one pair (every method) gives bit-identical results to each transfer alone,
and a member that fails is that member's failure only."""

from __future__ import annotations

import dataclasses
import json
import math
import traceback

import pytest
import torch

from helpers.transfer_fixtures import tiny_source, trained
from zoo_study.methods import ObjectiveOutput, register_method, unregister_method
from zoo_study.methods.registry import MethodState
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


def test_a_packs_shared_settings_are_compared_once_in_the_worker(monkeypatch):
    """The planner keys a pack's jobs by pack_key (Job.pack); in the worker its configs are compared once
    (zoo_study.transfer.config.check_pack from run_phase_pack), not again in each layer: one call per
    config. A lone transfer compares nothing."""
    import zoo_study.transfer.config as tconfig
    import zoo_study.transfer.job as job_mod
    import zoo_study.transfer.phase as phase_mod

    calls = []
    real = tconfig.pack_key

    def counted(c):
        calls.append(c)
        return real(c)

    for module in (tconfig, job_mod, phase_mod):  # wherever the name is bound
        monkeypatch.setattr(module, "pack_key", counted, raising=False)
    src = tiny_source()
    student, srec = trained(0)
    teacher, trec = trained(1)
    configs = [TransferConfig(method=m, **{**BASE, "epochs": 1}) for m in ("kl", "kl_dp", "xe_kl")]
    out = run_transfer_pack(student, srec, (teacher, trec), src, configs, job_ids=["a", "b", "c"])
    assert not any(isinstance(r, BaseException) for r in out)
    assert len(calls) == 3
    calls.clear()
    run_transfer(student, srec, [(teacher, trec)], src, configs[0], job_id="d")
    assert calls == []


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


class _Boom(RuntimeError):
    pass


def _kl_then(fail_at: int, what: str):
    """An objective equal to kl until its ``fail_at``-th call, which raises (``what="raise"``) or returns
    a NaN loss (``"nan"``); with ``"nan_then_raise"`` NaN from ``fail_at`` and an exception two calls later."""
    from zoo_study.methods.builtin import kl

    calls = {"n": 0}

    def objective(inp, p):
        """kl, then a failure."""
        calls["n"] += 1
        n = calls["n"]
        if what == "raise" and n == fail_at:
            raise _Boom(f"boom at call {n}")
        if what == "nan_then_raise" and n == fail_at + 2:
            raise _Boom("a consequence of the NaN")
        out = kl(inp, p)
        if what in ("nan", "nan_then_raise") and n >= fail_at:
            return ObjectiveOutput(out.loss * math.nan)
        return out

    return objective, calls


class _BrokenEval(MethodState):
    """A method state whose kept model raises in the eval pass (a member failing in evaluation)."""

    def kept_model(self, model):
        class Broken(torch.nn.Module):
            def forward(self, x):
                raise _Boom("eval pass exploded")

        return Broken()


@pytest.fixture()
def failing_methods():
    """Methods that fail in their step (call 3), their setup, or the eval pass; unregistered after."""
    step_fn, _ = _kl_then(3, "raise")
    register_method("raises_in_step", label="Raises")(step_fn)

    def bad_setup(ctx):
        raise _Boom("setup exploded")

    register_method("raises_in_setup", label="Raises in setup", setup=bad_setup)(lambda inp, p: None)
    register_method("raises_in_eval", label="Raises in eval",
                    setup=lambda ctx: _BrokenEval())(_kl_then(10**9, "raise")[0])
    yield ["raises_in_step", "raises_in_setup", "raises_in_eval"]
    for name in ("raises_in_step", "raises_in_setup", "raises_in_eval"):
        unregister_method(name)


def _same_result(a, b, what):
    assert _strip(a.summary) == _strip(b.summary), what
    assert _strip(a.epochs) == _strip(b.epochs), what
    assert _strip(a.predictions) == _strip(b.predictions), what
    sd_a, sd_b = a.model.state_dict(), b.model.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a), what


def test_a_member_raising_in_step_setup_or_eval_fails_alone_and_the_others_are_unchanged(failing_methods):
    src = tiny_source()
    student, srec = trained(0)
    teacher, trec = trained(2, size=12)
    good = [TransferConfig(method=m, hparams=METHOD_HP.get(m, {}), base_lr=0.05, **BASE)
            for m in ("kl", "crd", "xe_kl_mcl", "talking_models")]
    bad = [TransferConfig(method=m, base_lr=0.05, **BASE) for m in failing_methods]
    mixed = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3]]  # failures between the others
    out = run_transfer_pack(student, srec, (teacher, trec), src, mixed, job_ids=[f"m{i}" for i in range(7)])
    step_err, setup_err, eval_err = out[1], out[3], out[5]
    assert isinstance(step_err, _Boom) and str(step_err) == "boom at call 3"
    assert isinstance(setup_err, _Boom) and str(setup_err) == "setup exploded"
    assert isinstance(eval_err, _Boom) and str(eval_err) == "eval pass exploded"
    # each keeps a traceback that names where it failed (the failure record prints it)
    assert "raise _Boom(f\"boom at call {n}\")" in "".join(traceback.format_exception(step_err))
    without = run_transfer_pack(student, srec, (teacher, trec), src, good, job_ids=[f"g{i}" for i in range(4)])
    for cfg, res, ref in zip(good, [out[0], out[2], out[4], out[6]], without):
        _same_result(res, ref, cfg.method)


def test_a_loss_that_turns_nan_mid_run_ends_its_member_at_that_step(monkeypatch):
    import zoo_study.transfer.phase as phase_mod

    nan_fn, nan_calls = _kl_then(3, "nan")
    then_fn, _ = _kl_then(2, "nan_then_raise")
    register_method("nan_at_3", label="NaN")(nan_fn)
    register_method("nan_then_raises", label="NaN, then raises")(then_fn)
    try:
        monkeypatch.setattr(phase_mod, "FINITE_CHECK_EVERY", 2)  # flags read every 2 steps (default 50)
        src = tiny_source()
        student, srec = trained(0)
        teacher, trec = trained(1)
        configs = [TransferConfig(method=m, **BASE) for m in ("kl", "nan_at_3", "nan_then_raises")]
        out = run_transfer_pack(student, srec, (teacher, trec), src, configs, job_ids=["a", "b", "c"])
        assert isinstance(out[1], TransferDiverged) and (out[1].epoch, out[1].step) == (1, 3)
        assert "nan_at_3 loss is nan" in str(out[1])
        # NaN at step 3 is read at the check after step 4: the member stepped once more, then stopped
        assert nan_calls["n"] == 4
        # an exception that follows a NaN loss reports the NaN (the cause), at its step
        assert isinstance(out[2], TransferDiverged) and out[2].step == 2
        alone = run_transfer(student, srec, [(teacher, trec)], src, configs[0], job_id="x")
        _same_result(out[0], alone, "kl")
    finally:
        unregister_method("nan_at_3")
        unregister_method("nan_then_raises")


def test_a_student_that_cannot_start_fails_only_its_own_members():
    """Two students of one teacher; the second one's forward raises (its before-transfer eval pass fails):
    its members get that error, the first student's members equal their transfers alone."""
    from zoo_study.transfer.job import run_transfer_pack_students

    class Crashes(torch.nn.Module):
        def forward(self, x):
            raise _Boom("this student cannot run")

    src = tiny_source()
    s_a, rec_a = trained(0)
    _, rec_b = trained(3, size=12)
    teacher, trec = trained(2)
    configs = [TransferConfig(method=m, **BASE) for m in ("kl", "kl_dp")] * 2
    students = [(s_a, rec_a)] * 2 + [(Crashes(), rec_b)] * 2
    out = run_transfer_pack_students(students, (teacher, trec), src, configs, job_ids=["a", "b", "c", "d"])
    assert all(isinstance(r, _Boom) and str(r) == "this student cannot run" for r in out[2:])
    for cfg, res in zip(configs[:2], out[:2]):
        _same_result(res, run_transfer(s_a, rec_a, [(teacher, trec)], src, cfg, job_id="x"), cfg.method)
