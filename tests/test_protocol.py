"""The paper's protocol where the code used to depart from it, and the budget knobs of the claims study."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zoo_study.methods import ObjectiveInputs, default_grid, get_method
from zoo_study.transfer.config import TransferConfig

torch.set_num_threads(1)


def test_xe_kl_defaults_and_paper_grids():
    assert get_method("xe_kl").resolve_params({}) == {"lambda": 0.5}  # inside the paper's XE-KL grid
    assert get_method("xe_kl_mcl").resolve_params({})["lambda"] == 0.7  # MCL keeps the paper's 0.7
    assert default_grid("xe_kl")["lambda"] == [0.05, 0.1, 0.25, 0.5]
    assert default_grid("xe_kl")["temperature"] == [0.1, 1.0, 4.0, 10.0]
    assert min(default_grid("kl")["base_lr"]) == 1e-5
    assert max(default_grid("xe_kl_mcl")["N"]) == 100
    assert default_grid("kl_dp")["temperature"] == [0.1, 1.0, 10.0]


def test_kl_dp_lambda_adds_a_cross_entropy_term_by_hand():
    student = torch.tensor([[0.0, 0.0]])
    frozen = torch.tensor([[0.0, 1.0]])  # p(label 0) = 0.269
    teacher = torch.tensor([[[1.0, 0.0]]])  # p(label 0) = 0.731 > frozen: routed to the teacher
    y = torch.tensor([0])
    m = get_method("kl_dp")
    p_t = [math.exp(1) / (1 + math.exp(1)), 1 / (1 + math.exp(1))]
    kl = sum(pi * math.log(pi / 0.5) for pi in p_t)
    ce = math.log(2)
    for lam in (1.0, 0.75, 0.5):
        out = m.fn(ObjectiveInputs(student=student, teachers=teacher, frozen=frozen, labels=y),
                   m.resolve_params({"lambda": lam}))
        assert out.loss.item() == pytest.approx(lam * kl + (1 - lam) * ce, rel=1e-6)
        assert out.route.tolist() == [1]


def test_dp_routing_is_float32_under_low_precision_logits():
    from zoo_study.methods.losses import route_sources

    frozen = torch.tensor([[0.0, 1.0]], dtype=torch.bfloat16)
    teachers = torch.tensor([[[1.0, 0.0]]], dtype=torch.bfloat16)
    assert route_sources(frozen, teachers, torch.tensor([0]), True).tolist() == [1]


def test_crd_negatives_come_from_other_classes():
    from zoo_study.transfer.crd import CRDState

    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    st = CRDState(4, 3, n_data=10, feat_dim=4, nce_k=500, labels=labels)
    idx = torch.tensor([0, 3, 5, 9])
    neg = st._negatives(idx, 4, torch.Generator().manual_seed(0))
    assert neg.shape == (4, 500)
    for row, i in enumerate(idx.tolist()):
        assert (labels[neg[row]] != labels[i]).all()
        assert set(neg[row].tolist()) == {j for j in range(10) if labels[j] != labels[i]}  # all reachable
    assert get_method("crd").resolve_params({})["nce_k"] == 16384  # Tian et al.'s default


def test_transfer_set_per_class_and_budget_knobs():
    from zoo_study.data import GeneratedSpec, make_generated
    from zoo_study.transfer import transfer_set

    src = make_generated(GeneratedSpec(num_superclasses=2, classes_per_superclass=2, image_size=8, n_train=80, n_eval=8))
    cfg = TransferConfig(method="kl", transfer_per_class=7)
    ts = transfer_set(src, cfg)
    assert np.bincount(ts.labels).tolist() == [7, 7, 7, 7]
    assert TransferConfig(method="kl_dp", lr_scale=10).base_lr == pytest.approx(1e-3)
    assert TransferConfig(method="kl_dp", lr_scale=10, hparams={"lr": 0.5}).base_lr == 0.5  # explicit wins
    with pytest.raises(ValueError):
        TransferConfig(method="kl", eval_every=0)


def test_eval_every_evaluates_only_some_epochs_and_the_last():
    from helpers.transfer_fixtures import tiny_source, trained
    from zoo_study.transfer import run_transfer

    student, srec = trained(0)
    teacher, trec = trained(1)
    res = run_transfer(student, srec, [(teacher, trec)], tiny_source(),
                       TransferConfig(method="kl", epochs=3, eval_every=2, batch_size=30, transfer_fraction=0.4),
                       job_id="ev")
    assert res.epochs.column("epoch").to_pylist() == [0, 2, 3]


def test_replicate_seeds_are_planned_on_the_first_pairs(tmp_path):
    from pipelines.study import plan_stage
    from zoo_study.config import load_config

    cfg = load_config(None, [f"study.results_root={tmp_path}", "transfer.pairs=explicit",
                             "transfer.explicit=[['mixer_p8', 'vit_p8_d96'], ['pit_p8', 'vit_p8_d96']]",
                             "transfer.methods=['kl', 'kl_dp']", "transfer.replicate.seeds=[1, 2]",
                             "transfer.replicate.n_pairs=1", "transfer.replicate.methods=['kl_dp']"])
    jobs = plan_stage(cfg, "transfer")
    runs = sorted((j.spec["teachers"][0]["model_id"], j.spec["config"]["method"], j.spec["config"]["seed"])
                  for j in jobs)
    assert runs == [("mixer_p8", "kl", 0), ("mixer_p8", "kl_dp", 0), ("mixer_p8", "kl_dp", 1), ("mixer_p8", "kl_dp", 2),
                    ("pit_p8", "kl", 0), ("pit_p8", "kl_dp", 0)]


def test_method_pair_indices_spread_a_claims_subset_over_the_delta_acc_order():
    from pipelines.plan_transfers import method_pair_indices

    assert method_pair_indices(30, 12) == {0, 3, 5, 8, 11, 13, 16, 18, 21, 24, 26, 29}  # 29 * j / 11, rounded
    assert method_pair_indices(5, 2) == {0, 4}
    assert method_pair_indices(5, 1) == {0}
    assert method_pair_indices(5, None) == method_pair_indices(5, 5) == method_pair_indices(5, 9) == set(range(5))


def test_method_pairs_plans_a_method_on_its_share_of_the_pairs(tmp_path):
    from pipelines.study import plan_stage
    from zoo_study.config import load_config

    pairs = [["mixer_p8", "vit_p8_d96"], ["pit_p8", "vit_p8_d96"], ["mixer_p8", "pit_p8"]]
    cfg = load_config(None, [f"study.results_root={tmp_path}", "transfer.pairs=explicit",
                             f"transfer.explicit={pairs}", "transfer.methods=['kl', 'xe_kl']",
                             "transfer.method_pairs={xe_kl = 2}"])
    runs = sorted((j.spec["teachers"][0]["model_id"], j.spec["student"]["model_id"], j.spec["config"]["method"])
                  for j in plan_stage(cfg, "transfer"))
    assert runs == sorted([("mixer_p8", "vit_p8_d96", "kl"), ("pit_p8", "vit_p8_d96", "kl"), ("mixer_p8", "pit_p8", "kl"),
                           ("mixer_p8", "vit_p8_d96", "xe_kl"), ("mixer_p8", "pit_p8", "xe_kl")])


@pytest.mark.parametrize("override, words", [("{crd = 2}", "not in transfer.methods"),
                                             ("{kl = 0}", "greater than or equal to 1")])
def test_method_pairs_refuses_a_method_not_run_or_a_count_below_one(override, words):
    from zoo_study.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=words):
        load_config(None, ["transfer.methods=['kl']", f"transfer.method_pairs={override}"])


def test_method_pairs_refuses_more_pairs_than_sampled():
    from zoo_study.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"more pairs than transfer.n_pairs = 4"):
        load_config(None, ["transfer.methods=['kl']", "transfer.n_pairs=4", "transfer.method_pairs={kl = 5}"])
