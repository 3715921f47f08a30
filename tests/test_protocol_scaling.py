"""Protocol scaling (zoo_study/transfer/protocol.py): a short study keeps the paper's ratios."""

from __future__ import annotations

import math

import pytest

from zoo_study.transfer.config import TransferConfig
from zoo_study.transfer.protocol import PAPER_INTERPOLATIONS, check_lr_in_grid, scaled_tau, slow_share


def test_the_papers_interpolations_and_share_by_hand() -> None:
    # 20 epochs x floor(130,000 / 256) = 507 steps, one interpolation every 2 steps
    assert PAPER_INTERPOLATIONS == 20 * 507 // 2 == 5070
    assert slow_share(0.9999, 5070) == pytest.approx(1 - 0.9999**5070) == pytest.approx(0.398, abs=5e-4)
    # the claims budget: 115 steps -> 57 interpolations keep only 0.57% at the raw tau
    assert slow_share(0.9999, 57) == pytest.approx(0.0057, abs=5e-5)


def test_scaled_tau_keeps_the_papers_share() -> None:
    # tau' = 0.9999^(5070 / 57) = exp(ln(0.9999) * 88.947...) = 0.99114
    t = scaled_tau(0.9999, 57)
    assert t == pytest.approx(math.exp(math.log(0.9999) * 5070 / 57), rel=1e-12)
    assert t == pytest.approx(0.99114, abs=1e-5)
    assert slow_share(t, 57) == pytest.approx(slow_share(0.9999, 5070), rel=1e-9)
    assert scaled_tau(0.9999, 5070) == pytest.approx(0.9999, rel=1e-12)  # the paper's own length: unchanged
    assert scaled_tau(1.0, 10) == 1.0 and scaled_tau(0.0, 10) == 0.0
    with pytest.raises(ValueError, match="interpolations"):
        scaled_tau(0.9999, 0)
    with pytest.raises(ValueError, match=r"tau must be in \[0, 1\]"):
        scaled_tau(1.5, 10)


def test_no_lr_leaves_its_paper_grid_under_paper_ratios() -> None:
    check_lr_in_grid("xe_kl_mcl", 1e-2, [1e-2, 1e-3])
    with pytest.raises(ValueError, match=r"lr 0.1 .* outside the paper's grid \[0.001, 0.01\]"):
        check_lr_in_grid("xe_kl_mcl", 0.1, [1e-2, 1e-3])
    # the claims budget's lr_scale = 10 pushes MCL's 0.01 to 0.1: refused when the study keeps the ratios
    with pytest.raises(ValueError, match="outside the paper's grid"):
        TransferConfig(method="xe_kl_mcl", lr_scale=10.0, protocol="paper_ratios")
    ok = TransferConfig(method="xe_kl_mcl", protocol="paper_ratios")
    assert ok.base_lr == pytest.approx(0.01)
    # as given (the default) still accepts it, and the default leaves the job's dump (and id) unchanged
    assert TransferConfig(method="xe_kl_mcl", lr_scale=10.0).base_lr == pytest.approx(0.1)
    assert "protocol" not in TransferConfig(method="kl").to_dict()
    assert TransferConfig(method="kl", protocol="paper_ratios").to_dict()["protocol"] == "paper_ratios"


# ------------------------------------------------------------------- through a real MCL transfer
def _mcl_summary(protocol: str) -> dict:
    import json as _json

    from helpers.transfer_fixtures import tiny_source, trained
    from zoo_study.transfer.job import run_transfer

    src = tiny_source()
    student, s_rec = trained(0)
    teacher, t_rec = trained(1)
    cfg = TransferConfig(method="xe_kl_mcl", epochs=2, batch_size=16, eval_batch_size=64, augment="none",
                         transfer_fraction=1.0, protocol=protocol, hparams={"tau": 0.9999, "N": 2})
    res = run_transfer(student, s_rec, [(teacher, t_rec)], src, cfg, device="cpu", job_id="mcl")
    row = res.summary.to_pylist()[0]
    return row, _json.loads(row["method_info_json"])


def test_mcl_under_paper_ratios_uses_the_rescaled_tau_and_reports_it() -> None:
    row, info = _mcl_summary("paper_ratios")
    # the planned interpolations by hand: epochs x full batches of the transfer set / N
    steps = 2 * (row["n_train"] // 16 if row["n_train"] > 16 else 1)
    interpolations = steps // 2
    assert info["mcl_interpolations_planned"] == interpolations
    assert info["mcl_tau_given"] == 0.9999
    assert info["mcl_tau_used"] == pytest.approx(0.9999 ** (5070 / interpolations), rel=1e-12)
    assert info["mcl_slow_share"] == pytest.approx(1 - 0.9999**5070, rel=1e-9)  # the paper's 39.8%
    assert info["mcl_updates"] == interpolations
    assert info["mcl_fast_norm_ratio_max"] >= info["mcl_fast_norm_ratio_median"] > 0


def test_mcl_as_given_keeps_tau_and_still_reports_the_share() -> None:
    _, info = _mcl_summary("as_given")
    assert info["mcl_tau_used"] == 0.9999
    assert info["mcl_slow_share"] == pytest.approx(1 - 0.9999 ** info["mcl_interpolations_planned"], rel=1e-9)
