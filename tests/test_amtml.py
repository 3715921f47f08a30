"""AMTML-KD (METHOD.md section 7) on hand-computed tensors, its hint shapes for a CNN and a ViT, and a
parallel multi-teacher transfer through the loop."""

from __future__ import annotations

import math

import pytest
import torch

import zoo_study  # noqa: F401  (torchvision compat before timm)
import timm

from helpers.transfer_fixtures import tiny_source, trained
from zoo_study.transfer import TransferConfig, run_transfer
from zoo_study.transfer.amtml import AMTMLModule, hint_loss, instance_weights, integrated_target, rkd_angle_loss
from zoo_study.transfer.loop import as_grid, forward_parts

torch.set_num_threads(1)


def test_instance_weights_by_hand():
    b = torch.tensor([[1.0, 2.0]])
    theta = torch.eye(2)
    v = torch.tensor([1.0, 1.0])
    w = instance_weights(b, theta, v)  # gamma = (1, 2)
    e1, e2 = math.exp(1), math.exp(2)
    assert torch.allclose(w, torch.tensor([[e1 / (e1 + e2), e2 / (e1 + e2)]]))


def test_integrated_target_by_hand():
    w = torch.tensor([[0.25, 0.75]])
    z = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]]])  # [K=2, B=1, C=2]: (0.5, 0.5) and (0.75, 0.25)
    assert torch.allclose(integrated_target(w, z, 1.0), torch.tensor([[0.6875, 0.3125]]))
    # T = 2 softens: teacher 2 becomes (sqrt3, 1) / (sqrt3 + 1)
    p2 = math.sqrt(3) / (math.sqrt(3) + 1)
    assert torch.allclose(integrated_target(w, z, 2.0), torch.tensor([[0.125 + 0.75 * p2, 0.125 + 0.75 * (1 - p2)]]))


def test_rkd_angle_loss_on_an_equilateral_triangle():
    from zoo_study.transfer.amtml import _angles

    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    a = _angles(x)
    for i, j, k in ((0, 1, 2), (1, 0, 2), (2, 1, 0)):
        assert float(a[j, i, k]) == pytest.approx(0.5, abs=1e-6)  # 60 degrees at every vertex
    assert float(rkd_angle_loss(3.0 * x + 1.0, x)) == pytest.approx(0.0, abs=1e-7)  # angles ignore scale, shift
    flat = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    assert float(rkd_angle_loss(flat, x)) > 0.0


def test_hint_shapes_for_a_cnn_and_a_vit():
    torch.manual_seed(0)
    cnn = timm.create_model("resnet10t", num_classes=6, channels=(8, 16, 32, 64)).eval()
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=2,
                            num_classes=6).eval()
    x = torch.randn(3, 3, 16, 16)
    _, _, m_cnn = forward_parts(cnn, x, grid=True)
    _, _, m_vit = forward_parts(vit, x, grid=True)
    assert m_cnn.dim() == 4 and m_cnn.shape[:2] == (3, 64)
    assert m_vit.shape == (3, 24, 4, 4)  # class token dropped, 16 patch tokens on a 4 x 4 grid
    # the student (the CNN) regresses onto each teacher's grid
    module = AMTMLModule(m_cnn.shape[1], [tuple(m_vit.shape[1:]), tuple(m_cnn.shape[1:])])
    reg = module.regress(m_cnn)
    assert [tuple(r.shape) for r in reg] == [(3, 24, 4, 4), tuple(m_cnn.shape)]
    assert hint_loss(reg, [m_vit, m_cnn]).dim() == 0
    assert module.weights(m_cnn).shape == (3, 2)
    assert torch.equal(as_grid(vit.forward_features(x), vit, x), m_vit)  # the loop's probe reads the same grid


def test_multi_group_hints_one_student_group_per_teacher_shallow_to_deep():
    from zoo_study.transfer.loop import forward_levels

    torch.manual_seed(0)
    cnn = timm.create_model("resnet10t", num_classes=6, channels=(8, 16, 32, 64)).eval()
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2,
                            num_classes=6).eval()
    x = torch.randn(3, 3, 16, 16)
    logits, _, last, levels = forward_levels(cnn, x, 2)  # the last two stages: layer3 and layer4
    assert torch.equal(logits, cnn(x)) and torch.equal(last, levels[-1])
    assert [tuple(g.shape[1:3]) for g in levels] == [(32, 1), (64, 1)]  # 16 px: layer3 and layer4 at 1 x 1
    _, _, v_last, v_levels = forward_levels(vit, x, 2)  # both blocks, as 4 x 4 patch grids
    assert [tuple(g.shape[1:]) for g in v_levels] == [(24, 4, 4), (24, 4, 4)]
    assert torch.allclose(forward_levels(vit, x, 2)[0], vit(x))
    # more groups than the ViT has blocks: the last map stands in for the missing shallow group
    _, _, _, three = forward_levels(vit, x, 3)
    assert len(three) == 3 and torch.equal(three[0], v_last)
    # teacher 0 (the weaker one in ascending order) guides the shallower group, teacher 1 the deeper one
    t_shapes = [tuple(v_last.shape[1:]), (12, 2, 2)]
    module = AMTMLModule(last.shape[1], t_shapes, [g.shape[1] for g in levels])
    assert [r.in_channels for r in module.regressors] == [32, 64]
    reg = module.regress(levels)
    assert [tuple(r.shape) for r in reg] == [(3, 24, 4, 4), (3, 12, 2, 2)]  # each on its teacher's grid
    expected = torch.nn.functional.conv2d(torch.nn.functional.adaptive_avg_pool2d(levels[1], (2, 2)),
                                          module.regressors[1].weight, module.regressors[1].bias)
    assert torch.allclose(reg[1], expected)
    with pytest.raises(ValueError, match="one student group per teacher"):
        AMTMLModule(64, t_shapes, [32])


AMTML_CFG = dict(method="amtml_kd", mode="parallel", epochs=1, batch_size=30, transfer_fraction=0.4, seed=1,
                 base_lr=0.05)


def _amtml_run(job_id: str):
    """An AMTML-KD transfer from two teachers (one at another input size) on the tiny fixtures."""
    student, srec = trained(0)
    t1, r1 = trained(1)
    t2, r2 = trained(2, size=12)
    res = run_transfer(student, srec, [(t1, r1), (t2, r2)], tiny_source(), TransferConfig(**AMTML_CFG), job_id=job_id)
    return res, student, (r1, r2)


def test_amtml_parallel_transfer_keeps_the_plain_student_and_logs_class_weights():
    res, student, _ = _amtml_run("a")
    row = res.row
    assert row["method"] == "amtml_kd" and row["mode"] == "parallel" and row["temperature"] == 5.0
    assert set(res.model.state_dict()) == set(student.state_dict())  # its modules are not kept
    weights = res.info["phases"][0]["amtml_class_weights"]
    assert len(weights) == 6 and all(abs(sum(w) - 1.0) < 1e-5 and len(w) == 2 for w in weights.values())
    again, _, _ = _amtml_run("b")
    assert again.summary.drop_columns(["runtime_s", "job_id"]).to_pylist() == \
        res.summary.drop_columns(["runtime_s", "job_id"]).to_pylist()  # seeded


def test_amtml_joins_the_multi_teacher_stage_and_bad_choices_fail_at_load(tmp_path):
    from pipelines.study import plan_stage
    from zoo_study.config import ConfigError, validate_config

    raw = {"study": {"results_root": str(tmp_path)},
           "zoo": {"embedded": ["resnet10t_w16", "mixer_p8", "convnext_atto_p2"]},
           "multi_teacher": {"enabled": True, "students": ["mixer_p8"], "teachers": ["resnet10t_w16", "convnext_atto_p2"],
                             "modes": ["sequential"], "single_baselines": False, "parallel_methods": ["amtml_kd"]}}
    cfg = validate_config(raw)
    jobs = plan_stage(cfg, "multi_teacher")
    assert sorted((j.spec["config"]["method"], j.spec["config"]["mode"]) for j in jobs) == \
        [("amtml_kd", "parallel"), ("kl_dp", "sequential")]
    raw["multi_teacher"]["parallel_methods"] = ["kl"]
    with pytest.raises(ConfigError, match="take one teacher at a time.*amtml_kd"):
        validate_config(raw)


def test_teacher_weight_table_from_a_run(tmp_path):
    from pipelines.executors import _transfer_tables

    res, _, (r1, r2) = _amtml_run("j1")
    table = _transfer_tables(res, ["teacher_weights"])["teacher_weights"]  # the method's declared table
    rows = table.to_pylist()
    assert len(rows) == 6 * 2 and {r["teacher"] for r in rows} == {r1.model_id, r2.model_id}
    by_class: dict[int, float] = {}
    for r in rows:
        by_class[r["class_id"]] = by_class.get(r["class_id"], 0.0) + r["weight"]
    assert all(abs(v - 1.0) < 1e-5 for v in by_class.values())
