"""Talking Models (METHOD.md section 6): one round's losses on hand-computed tensors, and a transfer that
trains the encoders with the student, leaves the teacher untouched and keeps the plain student."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.transfer_fixtures import tiny_source, trained
from zoo_study.transfer import TransferConfig, run_transfer
from zoo_study.transfer.talking import talking_round

torch.set_num_threads(1)


def test_one_round_by_hand_with_identity_codes():
    ident = lambda v: v  # noqa: E731  encoders / decoders / head all identity, C = K = 2
    h_s = torch.tensor([[1.0, 0.0]])
    h_t = torch.tensor([[0.0, 1.0]])
    z_t = torch.tensor([[0.0, math.log(3.0)]])  # teacher softmax (0.25, 0.75)
    r = talking_round(h_s, h_t, z_t, enc_s=ident, dec_s=ident, enc_t=ident, dec_t=ident, head_s=ident)
    # the student's message comes back unchanged: z_s' = h_s = (1, 0), softmax (e/(e+1), 1/(e+1))
    q = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    p = torch.tensor([0.25, 0.75])
    assert float(r.interact) == pytest.approx(float((p * (p.log() - q.log())).sum()), rel=1e-6)
    assert float(r.mc) == pytest.approx(1.0)  # MSE((1, 0), (0, 1)) = (1 + 1) / 2
    assert float(r.sc) == pytest.approx(1.0 + 0.0)  # the teacher heard (1, 0) vs its (0, 1); the student's is exact
    assert torch.equal(r.h_s_next, h_s)
    # noise on the heard state is seeded
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = talking_round(h_s, h_t, z_t, enc_s=ident, dec_s=ident, enc_t=ident, dec_t=ident, head_s=ident,
                      noise=0.1, generator=g1)
    b = talking_round(h_s, h_t, z_t, enc_s=ident, dec_s=ident, enc_t=ident, dec_t=ident, head_s=ident,
                      noise=0.1, generator=g2)
    assert float(a.sc) == float(b.sc) != float(r.sc)


@pytest.mark.parametrize("sc_student", [False, True])
def test_state_consistency_holds_the_real_state_as_a_target_unless_asked(sc_student):
    """L_SC = MSE(decoded, real): its gradient reaches the real student state only with sc_student
    (d/dh_s of MSE(h_s', h_s) over 2 entries = (h_s - h_s') = (1 - 0.5, 0) for h_s' = h_s / 2)."""
    half = lambda v: 0.5 * v  # noqa: E731  the student's decoder halves what it hears
    ident = lambda v: v  # noqa: E731
    h_s = torch.tensor([[1.0, 0.0]], requires_grad=True)
    h_t, z_t = torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2)
    r = talking_round(h_s, h_t, z_t, enc_s=lambda v: v.detach(), dec_s=half, enc_t=ident, dec_t=ident,
                      head_s=ident, sc_student=sc_student)
    assert float(r.sc.detach()) == pytest.approx(1.0 + 0.25 / 2)  # teacher side 1.0; student MSE((0.5, 0), (1, 0))
    if sc_student:
        (grad,) = torch.autograd.grad(r.sc, h_s)
        assert grad[0].tolist() == pytest.approx([0.5, 0.0])
    else:  # the only path to h_s is the target, which carries no gradient
        assert not r.sc.requires_grad


@pytest.mark.parametrize("rounds,split", [(1, 0), (2, 0), (1, 1), (2, 2)])
def test_talking_transfer_keeps_the_plain_student_and_freezes_the_teacher(rounds, split):
    src = tiny_source()
    student, srec = trained(0)
    teacher, trec = trained(2, size=12)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    flags = [p.requires_grad for p in teacher.parameters()]
    cfg = TransferConfig(method="talking_models", hparams={"rounds": rounds, "msg_dim": 8, "split": split}, epochs=1,
                         batch_size=30, transfer_fraction=0.4, seed=2, base_lr=0.05)
    res = run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id="t")
    assert set(res.model.state_dict()) == set(student.state_dict())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    # no hook stays on the kept student or the (shared) teacher; the teacher's flags are as they were
    assert not any(m._forward_hooks for m in list(res.model.modules()) + list(teacher.modules()))
    assert [p.requires_grad for p in teacher.parameters()] == flags
    assert all(p.grad is None for p in teacher.parameters())
    sd, kept = student.state_dict(), res.model.state_dict()
    assert any(not torch.equal(sd[k], kept[k]) for k in sd)  # the student learned
    logs = res.info["phases"][0]["epoch_logs"][0]
    assert {"ce", "interact", "mc", "sc"} <= set(logs) and all(math.isfinite(v) for v in logs.values())
    with pytest.raises(ValueError, match="rounds"):
        TransferConfig(method="talking_models", hparams={"rounds": 4})


def test_a_state_vector_reaches_cnn_and_token_heads_exactly():
    import zoo_study  # noqa: F401
    import timm

    from zoo_study.transfer.feature_maps import model_maps
    from zoo_study.transfer.talking import head_on_vector

    torch.manual_seed(0)
    cnn = timm.create_model("resnet10t", num_classes=6, channels=(8, 16, 32, 64)).eval()
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=2,
                            num_classes=6).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        v = torch.randn(3, 64)
        assert torch.allclose(head_on_vector(cnn, v, model_maps(cnn, x)), cnn.fc(v), atol=1e-6)
        w = torch.randn(3, 24)
        assert torch.allclose(head_on_vector(vit, w, model_maps(vit, x)), vit.head(vit.fc_norm(w)), atol=1e-6)


def test_a_deep_split_runs_the_teachers_upper_layers_on_the_state_it_heard():
    import zoo_study  # noqa: F401
    import timm

    from zoo_study.transfer.feature_maps import MapsUnreadable, split_point
    from zoo_study.transfer.talking import _run_with_state, grid_to_native

    torch.manual_seed(0)
    cnn = timm.create_model("resnet10t", num_classes=6, channels=(8, 16, 32, 64)).eval()
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=2,
                            num_classes=6).eval()
    x = torch.randn(2, 3, 16, 16)
    c1, c0, v2 = split_point(cnn, x, 1), split_point(cnn, x, 0), split_point(vit, x, 2)
    assert c1.module is cnn.layer3 and c0.module is cnn.layer4 and v2.module is vit.blocks[0]
    with pytest.raises(MapsUnreadable, match="valid: 0 to 4"):
        split_point(cnn, x, 5)
    # CNN: the state after layer3 replaced by H -> the last map is layer4(H)
    h = torch.randn(2, 32, 1, 1, requires_grad=True)
    last, real = _run_with_state(cnn, c1, x, h)
    assert torch.allclose(last, cnn.layer4(h)) and real.shape == (2, 32, 1, 1)
    last.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0  # the gradient reaches what the teacher heard
    # ViT: the patch grid becomes the patch tokens, the class token the grid mean
    v1 = split_point(vit, x, 1)
    _, tokens = _run_with_state(vit, v1, x, None)
    grid = v1.fmt.grid(tokens)
    assert grid.shape == (2, 24, 4, 4)
    back = grid_to_native(grid, tokens, v1.fmt)
    assert torch.equal(back[:, 1:], tokens[:, 1:]) and torch.allclose(back[:, 0], tokens[:, 1:].mean(1))
    g2 = torch.randn(2, 24, 4, 4)
    last, _ = _run_with_state(vit, v1, x, g2)
    feats = vit.norm(vit.blocks[2](grid_to_native(g2, tokens, v1.fmt)))
    assert torch.allclose(last, feats[:, 1:].transpose(1, 2).reshape(2, 24, 4, 4))
    # a tuple state (PiT stages) keeps its other parts
    pair = (torch.zeros(2, 24, 4, 4), torch.ones(2, 1, 24))
    out = grid_to_native(g2, pair, c1.fmt)
    assert torch.equal(out[0], g2) and torch.equal(out[1], pair[1])


@pytest.mark.parametrize("sc_student", [0, 1])
def test_a_deep_split_holds_the_students_real_upper_state_as_the_sc_target(sc_student):
    """At split 1 the student's real upper state (its pooled last features) enters L_SC as a target: no
    gradient from L_SC reaches the last map unless sc_student = 1."""
    import zoo_study  # noqa: F401
    import timm

    from zoo_study.transfer.feature_maps import model_maps, split_point
    from zoo_study.transfer.talking import TalkingModule, _TalkingState

    torch.manual_seed(0)
    student = timm.create_model("resnet10t", num_classes=6, channels=(8, 16, 32, 64))
    teacher = timm.create_model("resnet10t", num_classes=6, channels=(8, 16, 32, 48)).eval()
    x = torch.randn(4, 3, 16, 16)
    module = TalkingModule(32, 32, 8, up_student=64, up_teacher=48)
    points = (split_point(student, x, 1), split_point(teacher, x, 1))
    state = _TalkingState(module, student, model_maps(student, x), split=1, teacher=teacher, points=points)
    try:
        s_map = student.forward_features(x)  # the loop's forward (NCHW): the hook captures the split state
        _, _, sc = state.losses(student, s_map, s_map.detach(), torch.zeros(4, 6), rounds=1, temperature=1.0,
                                noise=0.0, generator=None, teacher_input=x, sc_student=bool(sc_student))
        (grad,) = torch.autograd.grad(sc, s_map, allow_unused=True)
        reached = grad is not None and bool(grad.abs().sum() > 0)
        assert reached == bool(sc_student)
    finally:
        state.close()
