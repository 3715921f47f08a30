"""transfer.lr_schedule: a student trained from scratch (the Mixup-KD study) needs the zoo recipes' schedule,
not the paper's constant fine-tuning lr. Checked by hand against OneCycleLR's definition."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.transfer_fixtures import tiny_source, trained
from zoo_study.transfer import TransferConfig, run_transfer
from zoo_study.transfer import phase as phase_mod
from zoo_study.transfer.phase import lr_schedule

torch.set_num_threads(1)


def _lrs(kind: str, total: int, peak: float = 0.1) -> tuple[list[float], list[float], object]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak, momentum=0.9)
    sched = lr_schedule(opt, kind, total)
    lrs, moms = [], []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        if sched is not None:
            sched.step()
    return lrs, moms, sched


def test_one_cycle_warms_up_to_the_configured_lr_and_anneals_to_near_zero():
    # 20 steps, warm-up over 15%: step 0 at peak / 25 (div_factor), the peak at step 0.15 * 20 - 1 = 2, the
    # last step at peak / 25 / 1e4 (final_div_factor); cosine in between, e.g. step 1 is halfway up:
    # end + (start - end) / 2 * (cos(pi / 2) + 1) = (0.004 + 0.1) / 2 = 0.052
    lrs, moms, _ = _lrs("one_cycle", 20)
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert lrs[1] == pytest.approx((0.004 + 0.1) / 2)
    assert lrs[2] == pytest.approx(0.1) and max(lrs) == pytest.approx(0.1)
    assert lrs[2] > lrs[10] > lrs[19]
    assert lrs[19] == pytest.approx(0.1 / 25 / 1e4)
    assert moms == [0.9] * 20  # momentum is not cycled: SGD keeps the configured one
    const, _, sched = _lrs("constant", 5)
    assert sched is None and const == [0.1] * 5
    with pytest.raises(ValueError, match="valid: constant, one_cycle"):
        _lrs("cosine", 5)


def test_the_schedule_is_a_setting_that_leaves_old_ids_alone():
    assert "lr_schedule" not in TransferConfig(method="std_kd").to_dict()
    d = TransferConfig(method="std_kd", lr_schedule="one_cycle").to_dict()
    assert d["lr_schedule"] == "one_cycle" and TransferConfig.from_dict(d).lr_schedule == "one_cycle"
    with pytest.raises(ValueError, match="lr_schedule"):
        TransferConfig.from_dict({"method": "std_kd", "lr_schedule": "cosine"})


def test_a_transfer_steps_the_schedule_once_per_optimiser_step(monkeypatch):
    made = []

    def spy(opt, kind, total):
        sched = lr_schedule(opt, kind, total)
        made.append((opt, sched, total))
        return sched

    monkeypatch.setattr(phase_mod, "lr_schedule", spy)
    src = tiny_source()
    student, srec = trained(0)
    teacher, trec = trained(2)
    base = dict(epochs=2, batch_size=30, transfer_fraction=0.4, seed=3, base_lr=0.05 * 256 / 30)
    sched_run = run_transfer(student, srec, [(teacher, trec)], src,
                             TransferConfig(method="std_kd", lr_schedule="one_cycle", **base), job_id="c")
    (opt, sched, total), = made
    steps = 2 * (sched_run.row["n_train"] // 30)
    assert total == steps and sched.last_epoch == steps  # planned and taken: the whole cycle
    assert opt.param_groups[0]["momentum"] == 0.9
    assert sched_run.row["lr"] == pytest.approx(0.05)  # the summary's lr is the peak
    made.clear()
    plain = run_transfer(student, srec, [(teacher, trec)], src, TransferConfig(method="std_kd", **base), job_id="p")
    assert made[0][1] is None and math.isfinite(plain.row["acc_last"])
    a, b = plain.model.state_dict(), sched_run.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_the_shipped_mixup_kd_study_is_scratch_converging_and_fully_crossed():
    """pipelines/configs/mixup_kd.toml: the Mixup-KD regime (issue 24 item 8), checked where a typo would
    silently put it back outside it: scratch students, the recipe's epochs or more, a real schedule,
    none / PMU 10% / PMU 50% / FMU, >= 3 seeds."""
    from pathlib import Path

    from zoo_study.config import ConfigError, load_config, validate_config
    from zoo_study.zoo.recipes import recipe_by_id

    cfg = load_config(Path(__file__).parents[1] / "pipelines/configs/mixup_kd.toml")
    t = cfg.transfer
    assert t.student_init == "scratch" and t.lr_schedule == "one_cycle" and t.transfer_fraction == 1.0
    assert t.methods == ["std_kd"] and len(t.seeds) >= 3
    mixes = {(t.mixup, None)} | {(v["mixup"], v.get("mixup_share")) for v in t.variants}
    assert mixes == {("none", None), ("pmu", 0.1), ("pmu", 0.5), ("fmu", None)}
    for _teacher, student in t.explicit:
        assert t.epochs >= recipe_by_id(student).epochs
    with pytest.raises(ConfigError) as exc:
        validate_config({"transfer": {"lr_schedule": "cosine"}})
    assert "transfer.lr_schedule" in str(exc.value) and "cosine" in str(exc.value) and "\n" not in str(exc.value)
