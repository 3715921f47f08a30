"""Each transfer objective on tiny hand-computed logits; registry defaults; config validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zoo_study.transfer import (
    ObjectiveInputs,
    TransferConfig,
    get_method,
    kl_rows,
    method_names,
    kl_term,
    route_sources,
)

torch.set_num_threads(1)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def kl_hand(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def run(name, **kw):
    obj = get_method(name)
    params = obj.resolve_params(kw.pop("params", None))
    return obj.fn(ObjectiveInputs(**kw), params)


# ------------------------------------------------------------------------------------------ registry
def test_registry_names_are_exactly_the_methods():
    assert set(method_names()) == {"kl", "xe_kl", "xe_kl_ls", "kl_topk", "kl_dp", "kl_dp_unsup", "xe_kl_mcl", "cd", "crd",
                                   "std_kd", "amtml_kd", "talking_models"}


def test_unknown_method_error_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown transfer method 'kld'.*kl_dp"):
        get_method("kld")


def test_method_defaults_follow_the_spec():
    dp = get_method("kl_dp")
    assert (dp.lr, dp.temperature, dp.needs_frozen, dp.routes) == (1e-4, 1.0, True, True)
    assert dp.resolve_params({}) == {"lambda": 1.0}  # no CE term by default (the paper's KL+DP)
    mcl = get_method("xe_kl_mcl")
    assert mcl.lr == 0.01 and mcl.setup is not None
    assert mcl.resolve_params({}) == {"lambda": 0.7, "tau": 0.9999, "N": 2}
    assert get_method("xe_kl_ls").resolve_params({})["label_smoothing"] == 0.1
    assert get_method("crd").resolve_params({}) == {"beta": 0.8, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07,
                                                       "nce_m": 0.5}


# ------------------------------------------------------------------------------------------------ KL
def test_kl_value_and_t2_scaling_by_hand():
    teacher, student = t([[1.0, 0.0], [0.0, 0.0]]), t([[0.0, 0.0], [0.0, 0.0]])
    k1 = kl_hand(softmax([1.0, 0.0]), [0.5, 0.5])
    out = run("kl", student=student, teachers=teacher[None], temperature=1.0)
    assert out.loss.item() == pytest.approx(k1 / 2, rel=1e-6)  # mean over the batch (row 2 has KL 0)
    k2 = kl_hand(softmax([0.5, 0.0]), [0.5, 0.5])
    out2 = run("kl", student=student, teachers=teacher[None], temperature=2.0)
    assert out2.loss.item() == pytest.approx(4 * k2 / 2, rel=1e-6)  # T^2 * mean KL at T = 2
    assert kl_rows(teacher, student, 1.0).tolist() == pytest.approx([k1, 0.0], abs=1e-7)


def test_kl_gradient_zero_when_student_equals_target():
    z = torch.randn(4, 5, requires_grad=True)
    kl_term(z.detach(), z, 2.0).backward()
    assert z.grad.abs().max().item() < 1e-6


# ----------------------------------------------------------------------------------------------- XE-KL
def test_xe_kl_is_lambda_kl_plus_plain_ce():
    teacher, student, y = t([[2.0, 0.0, -1.0]]), t([[0.5, 1.0, 0.0]]), torch.tensor([1])
    kl = kl_hand(softmax([2.0, 0.0, -1.0]), softmax([0.5, 1.0, 0.0]))
    ce = -math.log(softmax([0.5, 1.0, 0.0])[1])
    out = run("xe_kl", student=student, teachers=teacher[None], labels=y, params={"lambda": 0.3})
    assert out.loss.item() == pytest.approx(0.3 * kl + 0.7 * ce, rel=1e-6)


def test_label_smoothing_smooths_targets_by_hand():
    teacher, student, y = t([[2.0, 0.0, -1.0]]), t([[0.5, 1.0, 0.0]]), torch.tensor([1])
    q = softmax([0.5, 1.0, 0.0])
    eps, c = 0.1, 3
    target = [eps / c, 1 - eps + eps / c, eps / c]
    ce_ls = -sum(ti * math.log(qi) for ti, qi in zip(target, q))
    kl = kl_hand(softmax([2.0, 0.0, -1.0]), q)
    out = run("xe_kl_ls", student=student, teachers=teacher[None], labels=y)  # defaults: lambda 0.5, eps 0.1
    assert out.loss.item() == pytest.approx(0.5 * kl + 0.5 * ce_ls, rel=1e-6)
    assert ce_ls == pytest.approx(F.cross_entropy(student, y, label_smoothing=0.1).item(), rel=1e-6)


# ----------------------------------------------------------------------------------------------- top-k
def test_topk_renormalises_both_over_teacher_top_k():
    teacher = t([[3.0, -1.0, 2.0, 0.0]])
    student = t([[0.0, 5.0, 1.0, 2.0]])
    # teacher's top-2 classes: 0 and 2
    hand = kl_hand(softmax([3.0, 2.0]), softmax([0.0, 1.0]))
    out = run("kl_topk", student=student, teachers=teacher[None], params={"k": 2})
    assert out.loss.item() == pytest.approx(hand, rel=1e-6)
    at_t2 = run("kl_topk", student=student, teachers=teacher[None], temperature=2.0, params={"k": 2})
    assert at_t2.loss.item() == pytest.approx(4 * kl_hand(softmax([1.5, 1.0]), softmax([0.0, 0.5])), rel=1e-6)
    full = run("kl", student=student, teachers=teacher[None]).loss.item()
    assert run("kl_topk", student=student, teachers=teacher[None], params={"k": 10}).loss.item() == pytest.approx(full)


# ------------------------------------------------------------------------------------------------- DP
def test_dp_supervised_mask_with_tie_to_student():
    y = torch.tensor([0, 0, 1])
    frozen = t([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    teacher = t([[2.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # row 0: teacher more sure of y; row 1: less; row 2: tie
    student = t([[0.0, 1.0], [0.5, 0.5], [1.0, -1.0]])
    out = run("kl_dp", student=student, teachers=teacher[None], frozen=frozen, labels=y)
    assert out.route.tolist() == [1, 0, 0]
    hand = (kl_hand(softmax([2.0, 0.0]), softmax([0.0, 1.0])) + kl_hand(softmax([2.0, 0.0]), softmax([0.5, 0.5]))
            + kl_hand(softmax([0.0, 0.0]), softmax([1.0, -1.0]))) / 3
    assert out.loss.item() == pytest.approx(hand, rel=1e-6)
    assert float(out.logs["teacher_share"]) == pytest.approx(1 / 3)


def test_dp_supervised_uses_label_probability_not_argmax():
    # teacher is more confident overall but less in the label: routed to the student
    frozen, teacher, y = t([[1.0, 0.0, 0.0]]), t([[0.0, 5.0, 0.5]]), torch.tensor([0])
    assert route_sources(frozen, teacher[None], y, supervised=True).tolist() == [0]
    assert route_sources(frozen, teacher[None], y, supervised=False).tolist() == [1]


def test_dp_unsupervised_max_prob_with_tie_to_student():
    # row 2: the same max-probability on another class. Ties are exact float ties: with two classes the
    # softmax sums are the same numbers in another order, which IEEE addition gives bit for bit.
    frozen = t([[3.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    teacher = t([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]])
    student = torch.zeros(3, 2)
    out = run("kl_dp_unsup", student=student, teachers=teacher[None], frozen=frozen, labels=None)
    assert out.route.tolist() == [0, 1, 0]
    assert float(out.logs["teacher_share"]) == pytest.approx(1 / 3)


def test_dp_loss_scales_with_t2():
    y = torch.tensor([1])
    frozen, teacher, student = t([[0.0, 1.0]]), t([[0.0, 3.0]]), t([[1.0, 0.0]])
    out = run("kl_dp", student=student, teachers=teacher[None], frozen=frozen, labels=y, temperature=3.0)
    assert out.loss.item() == pytest.approx(9 * kl_hand(softmax([0.0, 1.0]), softmax([1 / 3, 0.0])), rel=1e-6)


# ------------------------------------------------------------------------------------------- CD, CRD
def test_cd_rowwise_kl_of_similarity_matrices_plus_ce():
    fs = t([[1.0, 0.0], [0.0, 2.0]])  # S_s = I
    ft = t([[1.0, 0.0, 0.0], [3.0, 0.0, 0.0]])  # S_t = all ones
    student, y = t([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1])
    row = kl_hand([0.5, 0.5], softmax([1.0, 0.0]))  # both rows alike by symmetry
    ce = (-math.log(softmax([0.0, 1.0])[1]) - math.log(softmax([1.0, 0.0])[1])) / 2
    out = run("cd", student=student, labels=y, student_features=fs, teacher_features=ft, params={"beta": 1.0})
    assert out.loss.item() == pytest.approx(ce + row, rel=1e-6)
    out2 = run("cd", student=student, labels=y, student_features=fs, teacher_features=ft, params={"beta": 0.5})
    assert out2.loss.item() == pytest.approx(ce + 0.5 * row, rel=1e-6)


def test_crd_state_memory_and_gradients():
    from zoo_study.transfer.crd import CRDState

    torch.manual_seed(0)
    st = CRDState(8, 5, n_data=20, feat_dim=4, nce_k=16)
    fs = torch.randn(3, 8, requires_grad=True)
    ft = torch.randn(3, 5)
    idx = torch.tensor([0, 5, 7])
    before = st.memory_s.clone()
    gen = torch.Generator().manual_seed(0)
    loss = st(fs, ft, idx, gen)
    assert torch.isfinite(loss) and loss.item() > 0
    z = st.z_s.item()
    assert z > 0
    loss.backward()
    assert fs.grad is not None and st.embed_s.weight.grad is not None and st.embed_t.weight.grad is not None
    changed = (st.memory_s != before).any(1)
    assert changed.tolist() == [i in (0, 5, 7) for i in range(20)]
    assert torch.allclose(st.memory_s[idx].norm(dim=1), torch.ones(3))
    st(fs.detach(), ft, idx, gen)
    assert st.z_s.item() == z  # Z is estimated once


def _crd_by_hand(st, fs, ft, idx, gen_state):
    """CRD's first-batch loss with loops over samples and drawn rows, in float64 (Z from this batch)."""
    gen = torch.Generator()
    gen.set_state(gen_state)
    neg = st._negatives(idx, len(idx), gen)
    v_s = torch.nn.functional.normalize(st.embed_s(fs), dim=-1).double()
    v_t = torch.nn.functional.normalize(st.embed_t(ft), dim=-1).double()
    k, n, temp = st.nce_k, st.n_data, st.nce_t
    total = 0.0
    for v, memory in ((v_s, st.memory_t.double()), (v_t, st.memory_s.double())):
        rows = [[int(idx[b])] + neg[b].tolist() for b in range(len(idx))]
        scores = [[math.exp(float(memory[j] @ v[b]) / temp) for j in r] for b, r in enumerate(rows)]
        z = sum(map(sum, scores)) / (len(idx) * (k + 1)) * n
        for row in scores:
            p = [x / z for x in row]
            total -= math.log(p[0] / (p[0] + k / n + 1e-7))
            total -= sum(math.log((k / n) / (q + k / n + 1e-7)) for q in p[1:])
    return total / len(idx)


@pytest.mark.parametrize("dense", [True, False])
def test_crd_loss_by_hand_on_both_scoring_paths(monkeypatch, dense):
    """The dense path (all memory rows scored by one product, then the drawn ones picked) and the gathered
    path (Tian et al.'s bmm) give the hand-computed NCE loss, and the same gradients and memory."""
    import zoo_study.transfer.crd as crd

    def one(factor):
        monkeypatch.setattr(crd, "_DENSE_FACTOR", factor)
        torch.manual_seed(0)
        st = crd.CRDState(8, 5, n_data=20, feat_dim=4, nce_k=16, labels=torch.arange(20) % 4)
        fs, ft = torch.randn(3, 8, requires_grad=True), torch.randn(3, 5)
        idx, gen = torch.tensor([0, 5, 7]), torch.Generator().manual_seed(0)
        with torch.no_grad():
            hand = _crd_by_hand(st, fs, ft, idx, gen.get_state())
        loss = st(fs, ft, idx, gen)
        loss.backward()
        return st, loss, hand, fs.grad

    st, loss, hand, grad = one(8 if dense else 0)
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    other_st, other_loss, _, other_grad = one(0 if dense else 8)
    assert loss.item() == pytest.approx(other_loss.item(), rel=1e-6)
    assert torch.allclose(grad, other_grad, atol=1e-7)
    assert torch.allclose(st.memory_s, other_st.memory_s) and torch.allclose(st.memory_t, other_st.memory_t)


# ---------------------------------------------------------------------------------------------- config
def test_config_roundtrip_and_resolution():
    c = TransferConfig(method="kl_dp", epochs=3, batch_size=64)
    assert TransferConfig.from_dict(c.to_dict()) == c
    assert c.resolved_base_lr == 1e-4 and c.resolved_temperature == 1.0
    assert c.lr_for_batch(64) == pytest.approx(1e-4 * 64 / 256)
    assert c.resolved_study_part == "transfer"
    assert TransferConfig(method="kl_dp", mode="soup").resolved_study_part == "multi_teacher"
    assert TransferConfig(method="xe_kl", hparams={"lambda": 0.5}).hparams_json == '{"lambda":0.5}'
    hash(c)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(method="xe_kl", hparams={"lambda": 1.5}), r"lambda=1.5 is invalid; must be a float in \[0, 1\]"),
        (dict(method="xe_kl", hparams={"lamda": 0.5}), r"no hyper-parameter\(s\) \['lamda'\]; valid: lambda"),
        (dict(method="kl", epochs=0), r"epochs\n.*greater than or equal to 1.*input_value=0"),
        (dict(method="kl", mode="ensemble"), r"mode\n.*'single', 'sequential', 'parallel' or 'soup'.*input_value='ensemble'"),
        (dict(method="kl", mode="parallel"), r"method='kl' cannot run in parallel mode; routing methods: amtml_kd, kl_dp, kl_dp_unsup"),
        (dict(method="kl", transfer_fraction=1.5), r"transfer_fraction\n.*less than or equal to 1.*input_value=1.5"),
        (dict(method="kl", teacher_order="random"), r"teacher_order\n.*'given', 'ascending' or 'descending'.*input_value='random'"),
        (dict(method="kl_topk", hparams={"k": 2.5}), r"k=2.5 is invalid; must be a int"),
        (dict(method="kl", base_lr=-1.0), r"base_lr\n.*greater than 0.*input_value=-1.0"),
    ],
)
def test_config_errors_name_value_and_valid(kw, match):
    with pytest.raises(ValueError, match=match):
        TransferConfig(**kw)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr'\]; valid: .*method, mode"):
        TransferConfig.from_dict({"method": "kl", "lr": 0.1})


def test_lr_and_temperature_may_come_with_the_method_params():
    c = TransferConfig(method="xe_kl", hparams={"lr": 1e-3, "T": 2.0, "lambda": 0.5})
    assert (c.base_lr, c.temperature, c.hparams) == (1e-3, 2.0, {"lambda": 0.5})
    assert c.hparams_json == '{"lambda":0.5}'
    assert TransferConfig.from_dict(c.to_dict()) == c
    assert TransferConfig(method="kl", base_lr=1e-3, hparams={"lr": 1e-3}).base_lr == 1e-3
    with pytest.raises(ValueError, match="base_lr given twice with different values"):
        TransferConfig(method="kl", base_lr=1e-2, hparams={"lr": 1e-3})
