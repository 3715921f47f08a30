"""Momentum weight interpolation (XE-KL + MCL): a copy, not an alias; the update formula; in the loop."""

from __future__ import annotations

import pytest
import torch

from zoo_study.transfer import SlowWeights, TransferConfig, interpolate_, run_transfer

from helpers.transfer_fixtures import state_equal, tiny_model, tiny_source, trained

torch.set_num_threads(1)


def test_slow_weights_start_equal_and_are_not_aliased():
    fast = tiny_model(0)
    slow = SlowWeights(fast, tau=0.9, every=2)
    assert state_equal(slow.model, fast)
    for (name, s), f in zip(slow.model.state_dict().items(), fast.state_dict().values()):
        assert s.data_ptr() != f.data_ptr(), name
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(1.0)
    assert not state_equal(slow.model, fast)
    assert state_equal(slow.model, tiny_model(0))  # unchanged by edits of the live weights


def test_slow_weights_move_by_the_formula_every_n_steps():
    fast = tiny_model(0)
    fast.train()
    fast(torch.randn(4, 3, 16, 16))  # BatchNorm running stats and num_batches_tracked move
    slow = SlowWeights(tiny_model(0), tau=0.75, every=3)
    s0 = {k: v.clone() for k, v in slow.model.state_dict().items()}
    assert slow.step(fast) is False and slow.step(fast) is False
    assert all(torch.equal(v, s0[k]) for k, v in slow.model.state_dict().items())
    assert slow.step(fast) is True and slow.updates == 1
    fs = fast.state_dict()
    for k, v in slow.model.state_dict().items():
        if v.is_floating_point():  # parameters and floating buffers (running_mean / running_var)
            assert torch.allclose(v, 0.75 * s0[k] + 0.25 * fs[k], atol=1e-6), k
        else:  # num_batches_tracked: copied
            assert torch.equal(v, fs[k]), k
    assert any("running_mean" in k for k in s0)


def test_interpolate_tau_one_keeps_slow_exactly():
    a, b = tiny_model(0), tiny_model(1)
    ref = {k: v.clone() for k, v in a.state_dict().items()}
    interpolate_(a, b, 1.0)
    assert all(torch.equal(v, ref[k]) for k, v in a.state_dict().items() if v.is_floating_point())


def test_mcl_in_the_loop_keeps_and_evaluates_the_slow_weights():
    src = tiny_source()
    student, srec = trained(0)
    teacher, trec = trained(1)
    base = dict(method="xe_kl_mcl", epochs=2, batch_size=30, transfer_fraction=0.4, base_lr=0.5)
    # tau = 1: slow weights never move, so the kept model is the student and predictions are unchanged
    frozen_slow = run_transfer(student, srec, [(teacher, trec)], src,
                               TransferConfig(**base, hparams={"tau": 1.0, "N": 1}), job_id="mcl1")
    assert state_equal(frozen_slow.model, student, floating_only=True)
    p = frozen_slow.predictions
    assert p.column("pred_after").to_pylist() == p.column("pred_before").to_pylist()
    assert frozen_slow.row["delta_last"] == 0.0
    steps = frozen_slow.info["phases"][0]["steps"]
    assert steps == 2 * (120 // 30)
    # tau = 0.5 every 2 steps: the kept model moved, by exactly steps / N interpolations
    moved = run_transfer(student, srec, [(teacher, trec)], src,
                         TransferConfig(**base, hparams={"tau": 0.5, "N": 2}), job_id="mcl2")
    assert moved.info["phases"][0]["mcl_updates"] == steps // 2
    assert not state_equal(moved.model, student, floating_only=True)


def test_mcl_defaults_are_the_paper_grid_best():
    c = TransferConfig(method="xe_kl_mcl")
    assert c.resolved_hparams == {"lambda": 0.7, "tau": 0.9999, "N": 2}
    assert c.resolved_base_lr == pytest.approx(0.01)
