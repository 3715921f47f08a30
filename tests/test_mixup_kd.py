"""Mixup KD (METHOD.md section 5): exact partial mixup, standardised logits, Std-KD, scratch students."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.transfer_fixtures import tiny_source, trained
from zoo_study.methods import losses as L
from zoo_study.methods.builtin import std_kd
from zoo_study.methods.registry import ObjectiveInputs
from zoo_study.transfer import TransferConfig, run_transfer
from zoo_study.transfer.config import pack_key
from zoo_study.transfer.job import run_transfer_pack
from zoo_study.transfer.mixup import MixPlan, draw_mix_plan, mixed_count

torch.set_num_threads(1)


def test_partial_mixup_mixes_exactly_the_share_asked():
    assert mixed_count("pmu", 0.1, 128) == 13  # round(12.8): not the ~41% of drawing with replacement
    assert mixed_count("pmu", 0.5, 128) == 64
    assert mixed_count("fmu", 0.1, 128) == 128
    assert mixed_count("none", 0.5, 128) == 0
    for share in (0.1, 0.25, 0.5):
        plan = draw_mix_plan("pmu", share, 1.0, 128, np.random.default_rng(0))
        assert int(plan.mask.sum()) == round(share * 128)
        assert sorted(plan.partner.tolist()) == list(range(128))  # a permutation of the batch
        assert 0.0 < plan.lam < 1.0
    assert draw_mix_plan("none", 0.1, 1.0, 128, np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="valid: none, pmu, fmu"):
        mixed_count("half", 0.1, 8)


def test_mix_plan_is_seeded():
    a = draw_mix_plan("pmu", 0.25, 0.4, 64, np.random.default_rng(7))
    b = draw_mix_plan("pmu", 0.25, 0.4, 64, np.random.default_rng(7))
    c = draw_mix_plan("pmu", 0.25, 0.4, 64, np.random.default_rng(8))
    assert a.lam == b.lam and torch.equal(a.mask, b.mask) and torch.equal(a.partner, b.partner)
    assert not (torch.equal(a.mask, c.mask) and a.lam == c.lam)


def test_mix_plan_on_hand_computed_images_and_labels():
    plan = MixPlan(mask=torch.tensor([True, False, True, False]), partner=torch.tensor([1, 0, 3, 2]), lam=0.25)
    x = torch.tensor([[0.0], [10.0], [20.0], [30.0]])
    assert plan.images(x).flatten().tolist() == [7.5, 10.0, 27.5, 30.0]
    labels = torch.tensor([0, 1, 2, 0])
    soft = plan.soft_targets(labels, 3)
    assert soft.tolist() == [[0.25, 0.75, 0.0], [0.0, 1.0, 0.0], [0.75, 0.0, 0.25], [1.0, 0.0, 0.0]]
    assert plan.hard_labels(labels).tolist() == [1, 1, 0, 0]  # lam < 0.5: the partner's label dominates
    plan_hi = dataclasses.replace(plan, lam=0.75)
    assert plan_hi.hard_labels(labels).tolist() == [0, 1, 2, 0]


def test_mixing_commutes_with_resize_and_normalisation():
    """Why the loop may mix each model's preprocessed input: the preprocessing is affine."""
    torch.manual_seed(0)
    raw = torch.rand(6, 3, 16, 16)
    plan = draw_mix_plan("fmu", 1.0, 1.0, 6, np.random.default_rng(1))
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1)

    def pre(t):
        return (F.interpolate(t, size=(12, 12), mode="bilinear", antialias=True, align_corners=False) - mean) / std

    assert torch.allclose(pre(plan.images(raw)), plan.images(pre(raw)), atol=1e-5)


def test_standardised_logits_by_hand():
    z = torch.tensor([[1.0, 2.0, 3.0], [-2.0, 0.0, 2.0]])
    s1, s2 = math.sqrt(2.0 / 3.0), math.sqrt(8.0 / 3.0)  # population std over classes
    want = torch.tensor([[1 / s1, 2 / s1, 3 / s1], [-2 / s2, 0.0, 2 / s2]])
    assert torch.allclose(L.standardise_logits(z), want, atol=1e-6)
    assert torch.allclose(L.standardise_logits(z * 5.0), want, atol=1e-6)  # temperature-free: scale-invariant


def test_std_kd_loss_by_hand():
    zs = torch.tensor([[1.0, 0.0, -1.0]])
    zt = torch.tensor([[0.0, 2.0, 0.0]])
    y = torch.tensor([1])
    ss = zs / zs.std(unbiased=False)
    st = zt / zt.std(unbiased=False)
    ps, pt = torch.softmax(ss, -1), torch.softmax(st, -1)
    ce = -math.log(float(ps[0, 1]))
    kl = float((pt * (pt.log() - ps.log())).sum())
    out = std_kd(ObjectiveInputs(student=zs, teachers=zt.unsqueeze(0), labels=y), {"gamma": 0.1, "alpha": 0.9})
    assert float(out.loss) == pytest.approx(0.1 * ce + 0.9 * kl, rel=1e-6)


def test_cross_entropy_with_mixed_labels_is_the_mix_of_the_two_ces():
    z = torch.tensor([[0.3, -1.0, 2.0], [1.0, 1.0, 0.0]])
    soft = torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]])
    want = (0.25 * F.cross_entropy(z[:1], torch.tensor([0])) + 0.75 * F.cross_entropy(z[:1], torch.tensor([1]))
            + F.cross_entropy(z[1:], torch.tensor([2]))) / 2
    assert float(L.cross_entropy(z, soft)) == pytest.approx(float(want), rel=1e-6)


def test_new_settings_leave_old_job_dumps_and_ids_unchanged():
    plain = TransferConfig(method="kl").to_dict()
    assert not {"student_init", "mixup", "mixup_share", "mixup_alpha"} & set(plain)
    mixed = TransferConfig(method="kl", mixup="pmu", mixup_share=0.5).to_dict()
    assert mixed["mixup"] == "pmu" and mixed["mixup_share"] == 0.5 and mixed["mixup_alpha"] == 1.0
    assert TransferConfig.from_dict(mixed) == TransferConfig(method="kl", mixup="pmu", mixup_share=0.5)
    assert pack_key(mixed) == pack_key(TransferConfig.from_dict(mixed))
    assert pack_key(plain) != pack_key(mixed)
    for bad, match in ((dict(mixup="half"), "mixup"), (dict(mixup_share=0.0), "mixup_share"),
                       (dict(student_init="random"), "student_init")):
        with pytest.raises(Exception, match=match):
            TransferConfig(method="kl", **bad)


BASE = dict(epochs=2, batch_size=30, transfer_fraction=0.4, seed=3, base_lr=0.05)


@pytest.mark.parametrize("mixup", ["pmu", "fmu"])
def test_mixup_transfer_runs_is_seeded_and_packs_bit_identically(mixup):
    src = tiny_source()
    student, srec = trained(0)
    teacher, trec = trained(2, size=12)  # another geometry: the same plan is applied to its input
    configs = [TransferConfig(method=m, mixup=mixup, mixup_share=0.5, **BASE) for m in ("std_kd", "xe_kl", "kl_dp")]
    plain = run_transfer(student, srec, [(teacher, trec)], src, TransferConfig(method="std_kd", **BASE), job_id="p")
    packed = run_transfer_pack(student, srec, (teacher, trec), src, configs, job_ids=["a", "b", "c"])
    for cfg, res in zip(configs, packed):
        alone = run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id="a")
        assert res.summary.drop_columns(["runtime_s", "job_id"]).to_pylist() == \
            alone.summary.drop_columns(["runtime_s", "job_id"]).to_pylist()
    # mixing changes what the student learns
    a, b = plain.model.state_dict(), packed[0].model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def _with_kwargs(rec):
    return dataclasses.replace(rec, recipe_json=json.dumps({"model_kwargs": {"channels": [8, 16, 32, 64]}}))


def test_scratch_student_is_timm_init_from_the_seed_and_counts_against_the_untrained_model():
    from zoo_study.zoo.loading import scratch_like

    src = tiny_source()
    student, srec = trained(0)
    srec = _with_kwargs(srec)
    teacher, trec = trained(2)
    s1, s2, s3 = scratch_like(student, srec, 5), scratch_like(student, srec, 5), scratch_like(student, srec, 6)
    sd, d1, d2, d3 = student.state_dict(), s1.state_dict(), s2.state_dict(), s3.state_dict()
    assert all(torch.equal(d1[k], d2[k]) for k in d1)  # seeded
    assert any(not torch.equal(d1[k], d3[k]) for k in d1)
    conv = [k for k in sd if k.endswith("weight") and sd[k].dim() == 4][0]
    assert not torch.equal(sd[conv], d1[conv])  # not the pretrained weights
    cached = {srec.model_id: np.zeros(len(src.eval), dtype=np.int64)}  # the pretrained predictions: unused
    res = run_transfer(student, srec, [(teacher, trec)], src,
                       TransferConfig(method="xe_kl", student_init="scratch", **BASE), job_id="s",
                       cached_predictions=cached)
    row = res.row
    assert row["acc_before"] < 0.45  # an untrained 6-class model, not the trained student (~0.9)
    with torch.inference_mode():
        from zoo_study.data import ModelPreprocess
        pre = ModelPreprocess.from_data_config(srec.data_config)
        x = torch.cat([pre(raw) for raw, _, _ in __import__("zoo_study.data", fromlist=["raw_loader"]).raw_loader(
            src.eval, 64)])
        before = scratch_like(student, srec, BASE["seed"])(x).argmax(-1).numpy()
    assert row["acc_before"] == pytest.approx(float(np.mean(before == src.eval.labels)))
    with pytest.raises(Exception, match="cannot rebuild"):
        scratch_like(student, trained(0)[1], 0)  # its record lacks the channel kwargs


def test_summary_files_written_before_the_new_columns_still_read_as_done(tmp_path):
    """A schema that grows by nullable columns must not make finished transfers look unfinished."""
    import pyarrow.parquet as pq

    from zoo_study.store import TRANSFER_SUMMARY_SCHEMA, read_parquet_checked

    src = tiny_source()
    student, srec = trained(0)
    teacher, trec = trained(2)
    res = run_transfer(student, srec, [(teacher, trec)], src, TransferConfig(method="kl", **BASE), job_id="j")
    assert res.row["student_init"] == "pretrained" and res.row["mixup"] == "none" and res.row["mixup_share"] == 0.0
    old = res.summary.drop_columns(["student_init", "mixup", "mixup_share"])
    pq.write_table(old, tmp_path / "summary.parquet")
    back = read_parquet_checked(tmp_path / "summary.parquet", TRANSFER_SUMMARY_SCHEMA)
    assert back is not None and back.column("mixup").to_pylist() == [None]
    pq.write_table(old.drop_columns(["n_gain"]), tmp_path / "broken.parquet")  # a required column missing
    assert read_parquet_checked(tmp_path / "broken.parquet", TRANSFER_SUMMARY_SCHEMA) is None


def test_transfer_variants_copy_every_transfer_with_changed_settings(tmp_path):
    from pipelines.study import plan_stage
    from zoo_study.config import ConfigError, validate_config

    raw = {"study": {"results_root": str(tmp_path)}, "zoo": {"embedded": ["resnet10t_w16", "mixer_p8"]},
           "transfer": {"methods": ["kl", "std_kd"], "pairs": "explicit", "explicit": [["resnet10t_w16", "mixer_p8"]]}}
    base = plan_stage(validate_config(raw), "transfer")
    raw["transfer"]["variants"] = [{"mixup": "pmu", "mixup_share": 0.5}, {"student_init": "scratch"}]
    jobs = plan_stage(validate_config(raw), "transfer")
    assert len(base) == 2 and len(jobs) == 6
    assert {j.job_id for j in base} <= {j.job_id for j in jobs}  # the study's own transfers keep their ids
    settings = sorted((j.spec["config"]["method"], j.spec["config"].get("mixup", "none"),
                       j.spec["config"].get("student_init", "pretrained")) for j in jobs)
    assert settings == [("kl", "none", "pretrained"), ("kl", "none", "scratch"), ("kl", "pmu", "pretrained"),
                        ("std_kd", "none", "pretrained"), ("std_kd", "none", "scratch"), ("std_kd", "pmu", "pretrained")]
    assert len({j.pack for j in jobs}) == 3  # variants see other batches: their own packs
    marks = sorted(j.spec["config"].get("variant", "") for j in jobs)  # variants say which entry made them
    assert marks == ["", "", '{"mixup":"pmu","mixup_share":0.5}', '{"mixup":"pmu","mixup_share":0.5}',
                     '{"student_init":"scratch"}', '{"student_init":"scratch"}']
    raw["transfer"]["variants"] = [{"mixup": "pmu", "methods": ["kl"]}]
    with pytest.raises(ConfigError, match=r"variants\[0\].*methods.*valid keys"):
        validate_config(raw)
    raw["transfer"]["variants"] = [{"mixup_share": 2.0}]
    with pytest.raises(ConfigError, match="mixup_share"):
        validate_config(raw)


def test_a_temperature_variant_and_variants_of_parallel_methods(tmp_path):
    from pipelines.study import plan_stage
    from zoo_study.config import ConfigError, validate_config

    raw = {"study": {"results_root": str(tmp_path)},
           "zoo": {"embedded": ["resnet10t_w16", "mixer_p8", "convnext_atto_p2"]},
           "transfer": {"methods": ["kl"], "pairs": "explicit", "explicit": [["resnet10t_w16", "mixer_p8"]],
                        "variants": [{"temperature": 4.0}, {"student_init": "scratch"}]},
           "multi_teacher": {"enabled": True, "students": ["mixer_p8"], "teachers": ["resnet10t_w16", "convnext_atto_p2"],
                             "modes": ["sequential"], "single_baselines": False, "parallel_methods": ["amtml_kd"]}}
    cfg = validate_config(raw)
    temps = sorted(j.spec["config"]["temperature"] for j in plan_stage(cfg, "transfer"))
    assert temps == [1.0, 1.0, 4.0]
    mt = plan_stage(cfg, "multi_teacher")
    amtml = [j.spec["config"] for j in mt if j.spec["config"]["method"] == "amtml_kd"]
    assert sorted((c["temperature"], c.get("student_init", "pretrained")) for c in amtml) == \
        [(4.0, "pretrained"), (5.0, "pretrained"), (5.0, "scratch")]
    assert [j.spec["config"]["method"] for j in mt].count("kl_dp") == 1  # the modes are not varied
    raw["transfer"]["variants"] = [{"temperature": -1}]
    with pytest.raises(ConfigError, match="temperature=-1 must be a number > 0"):
        validate_config(raw)
