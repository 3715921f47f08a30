"""Talking Models' and AMTML-KD's loss terms against their papers (docs/DESIGN_NOTES.md, "Talking Models and
AMTML-KD against their papers"), each on tensors small enough to compute by hand.

- Talking Models, L_interact: the student's prediction from the teacher's decoded answer scored against the
  teacher's logits (METHOD.md's reading, ``interact = "teacher"``) or against the downstream labels
  (``interact = "label"``, the reading open to the paper's own setting, where the teacher's classes are not
  the downstream task's).
- AMTML-KD's whole objective at its defaults: L = L_KD + L_angle + beta * L_hint with
  L_KD = alpha T^2 KL(p || q_T) + (1 - alpha) CE: two named weights, CE inside L_KD.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from zoo_study.transfer.talking import talking_round

torch.set_num_threads(1)

IDENT = lambda v: v  # noqa: E731  encoders / decoders / head all identity (C = K = 2)
L1E = math.log(1.0 + math.e)  # -log softmax((1, 0))[1]; softmax((1, 0))[0] = e / (1 + e)


def _round(interact: str, labels, z_t=None, temperature: float = 1.0):
    """One round with identity codes: the student's message comes back unchanged, z_s' = h_s = (1, 0)."""
    h_s, h_t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    z_t = torch.tensor([[0.0, math.log(3.0)]]) if z_t is None else z_t
    return talking_round(h_s, h_t, z_t, enc_s=IDENT, dec_s=IDENT, enc_t=IDENT, dec_t=IDENT, head_s=IDENT,
                         temperature=temperature, labels=labels, interact=interact)


def test_interact_against_the_labels_by_hand():
    # z_s' = (1, 0): CE to class 1 = log(1 + e); to class 0 = log(1 + e) - 1
    assert float(_round("label", torch.tensor([1])).interact) == pytest.approx(L1E, rel=1e-6)
    assert float(_round("label", torch.tensor([0])).interact) == pytest.approx(L1E - 1.0, rel=1e-6)
    # mixed labels (0.25, 0.75): -(0.25 (1 - log(1 + e)) + 0.75 (-log(1 + e))) = log(1 + e) - 0.25
    soft = torch.tensor([[0.25, 0.75]])
    assert float(_round("label", soft).interact) == pytest.approx(L1E - 0.25, rel=1e-6)
    # the teacher's logits play no part in it; L_MC and L_SC are the same under both readings
    other = _round("label", torch.tensor([1]), z_t=torch.tensor([[5.0, -5.0]]))
    assert float(other.interact) == pytest.approx(L1E, rel=1e-6)
    a, b = _round("label", torch.tensor([1])), _round("teacher", None)
    assert float(a.mc) == float(b.mc) == pytest.approx(1.0) and float(a.sc) == float(b.sc) == pytest.approx(1.0)


def test_interact_against_the_teacher_at_a_temperature_by_hand():
    # T = 2: teacher z_t = (0, 2 log 3) -> softmax(z_t / 2) = (1/4, 3/4); z_s' / 2 = (1/2, 0)
    p = (0.25, 0.75)
    q0 = math.exp(0.5) / (math.exp(0.5) + 1.0)
    kl = p[0] * math.log(p[0] / q0) + p[1] * math.log(p[1] / (1.0 - q0))
    r = _round("teacher", None, z_t=torch.tensor([[0.0, 2.0 * math.log(3.0)]]), temperature=2.0)
    assert float(r.interact) == pytest.approx(4.0 * kl, rel=1e-6)  # T^2 KL


def test_interact_refuses_a_bad_reading_and_missing_labels():
    from zoo_study.transfer.talking import interact_loss

    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="interact = 'logits'.*teacher, label"):
        interact_loss(z, z, None, 1.0, "logits")
    with pytest.raises(ValueError, match="needs the batch's labels"):
        interact_loss(z, z, None, 1.0, "label")


def test_a_deep_split_scores_its_interactive_prediction_against_the_labels():
    """At split 1, over two rounds: CE(z_s', y) = KL(onehot(y) || softmax(z_s')), so the label reading equals the
    teacher reading given a teacher whose softmax is exactly onehot(y) (logits 1e4 * onehot, T = 1); and it
    differs from the reading against a teacher that disagrees with the labels."""
    import zoo_study  # noqa: F401
    import timm

    from zoo_study.transfer.feature_maps import model_maps, split_point
    from zoo_study.transfer.talking import TalkingModule, _TalkingState

    torch.manual_seed(0)
    student = timm.create_model("resnet10t", num_classes=6, channels=(8, 16, 32, 64)).eval()
    teacher = timm.create_model("resnet10t", num_classes=6, channels=(8, 16, 32, 48)).eval()
    x = torch.randn(4, 3, 16, 16)
    module = TalkingModule(32, 32, 8, up_student=64, up_teacher=48)
    points = (split_point(student, x, 1), split_point(teacher, x, 1))
    state = _TalkingState(module, student, model_maps(student, x), split=1, teacher=teacher, points=points)
    y = torch.tensor([0, 3, 5, 1])
    sure = 1e4 * torch.nn.functional.one_hot(y, 6).float()
    try:
        s_map = student.forward_features(x)  # the hook captures the student's split state
        kw = dict(rounds=2, temperature=1.0, noise=0.0, generator=None, teacher_input=x)
        by_label = state.losses(student, s_map, s_map.detach(), torch.zeros(4, 6), labels=y, interact="label", **kw)
        by_sure_teacher = state.losses(student, s_map, s_map.detach(), sure, **kw)
        by_other_teacher = state.losses(student, s_map, s_map.detach(), sure.roll(1, dims=1), **kw)
    finally:
        state.close()
    assert float(by_label[0].detach()) == pytest.approx(float(by_sure_teacher[0].detach()), rel=1e-5)
    assert float(by_label[0].detach()) != pytest.approx(float(by_other_teacher[0].detach()), rel=1e-2)
    mc_sc = [float(v.detach()) for v in by_sure_teacher[1:]]
    assert [float(v.detach()) for v in by_label[1:]] == pytest.approx(mc_sc, rel=1e-6)


def test_amtml_objective_at_its_defaults_is_l_kd_plus_angle_plus_beta_hint_by_hand():
    """Three samples, two classes, two teachers that agree (so the integrated target is their common softmax),
    theta = 0 (equal teacher weights), identity hint regressors. T = 5, alpha = 0.7, angle = beta = 1.

    - targets p_i = softmax(z_t,i / 5): (1/2, 1/2), (1/4, 3/4), (1/5, 4/5); student q_i at T = 5:
      (1/4, 3/4), (1/2, 1/2), (1/5, 4/5).
    - angle: probabilities on a line, so every cosine is +-1 (0 where a side is empty); the middle point is
      sample 1 for p and sample 0 for q: 4 of 27 entries differ by 2, Huber 2 - 1/2 each: 6 / 27.
    - hint: teacher 1's map is the student's, teacher 2's the student's + 1: MSE 0 and 1, mean 1/2.
    """
    from zoo_study.methods.registry import ObjectiveInputs, get_method
    from zoo_study.transfer.amtml import AMTMLModule

    t = 5.0
    ln3, ln4 = math.log(3.0), math.log(4.0)
    z_t = torch.tensor([[0.0, 0.0], [0.0, t * ln3], [0.0, t * ln4]])
    z_s = torch.tensor([[0.0, t * ln3], [0.0, 0.0], [0.0, t * ln4]], requires_grad=True)
    y = torch.tensor([1, 1, 0])
    s_map = torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]]).view(3, 2, 1, 1)
    module = AMTMLModule(2, [(2, 1, 1), (2, 1, 1)])
    with torch.no_grad():
        module.theta.zero_()
        for reg in module.regressors:
            reg.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            reg.bias.zero_()
    method = get_method("amtml_kd")
    p = method.resolve_params(None)
    assert (p["alpha"], p["angle"], p["beta"], method.temperature) == (0.7, 1.0, 1.0, 5.0)
    inp = ObjectiveInputs(student=z_s, teachers=torch.stack([z_t, z_t]), labels=y, temperature=t,
                          student_map=s_map, teacher_maps=[s_map.clone(), s_map + 1.0],
                          state=SimpleNamespace(module=module, record=lambda w, labels: None))
    out = method.fn(inp, p)
    kl = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
          + 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)) / 3.0  # sample 2: p = q
    ce = (math.log(1.0 + 3.0 ** -5) + math.log(2.0) + math.log(1.0 + 4.0 ** 5)) / 3.0  # at T = 1, labels (1, 1, 0)
    angle, hint = 6.0 / 27.0, 0.5
    assert float(out.logs["kl"]) == pytest.approx(t * t * kl, rel=1e-5)
    assert float(out.logs["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(out.logs["angle"]) == pytest.approx(angle, rel=1e-5)
    assert float(out.logs["hint"]) == pytest.approx(hint, rel=1e-6)
    l_kd = 0.7 * t * t * kl + 0.3 * ce
    assert float(out.loss.detach()) == pytest.approx(l_kd + angle + 1.0 * hint, rel=1e-5)


@pytest.mark.parametrize("flag, reading", [(0, "teacher"), (1, "label")])
def test_the_talking_models_parameter_interact_labels_picks_the_reading(flag, reading):
    """The registered objective passes the batch's labels and the chosen L_interact reading to its state."""
    from zoo_study.methods import ObjectiveInputs, get_method

    seen = {}

    class _State:
        student = None

        def losses(self, model, s_map, t_map, z_t, **kw):
            seen.update(kw)
            zero = torch.zeros(())
            return zero, zero, zero

    method = get_method("talking_models")
    params = method.resolve_params({"interact_labels": flag})
    labels = torch.tensor([1, 0])
    inp = ObjectiveInputs(student=torch.zeros(2, 3), teachers=torch.zeros(1, 2, 3), labels=labels,
                          student_map=torch.zeros(2, 4, 1, 1), teacher_maps=[torch.zeros(2, 4, 1, 1)], state=_State())
    out = method.fn(inp, params)
    assert seen["interact"] == reading and torch.equal(seen["labels"], labels)
    assert out.loss.item() == pytest.approx(math.log(3))  # CE of uniform logits over 3 classes; the rest is 0
