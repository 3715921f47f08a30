"""The transfer loop end to end on tiny timm models: tables, invariances, divergence, reproducibility."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from zoo_study import metrics
from zoo_study.data import ModelPreprocess
from zoo_study.store import (
    TRANSFER_EPOCH_SCHEMA,
    TRANSFER_PREDICTION_SCHEMA,
    TRANSFER_SUMMARY_SCHEMA,
    conform,
)
from zoo_study.transfer import (
    Runtime,
    TransferConfig,
    TransferDiverged,
    get_method,
    method_names,
    predict_split,
    run_transfer,
    transfer_set,
)

from helpers.transfer_fixtures import record, state_equal, tiny_source, trained

torch.set_num_threads(1)

FAST = dict(epochs=2, batch_size=30, transfer_fraction=0.4)


def _pair(size_t: int = 12):
    student, srec = trained(0)
    teacher, trec = trained(2, size=size_t)  # another input size: its own preprocessing
    return student, srec, teacher, trec


def _strip(table: pa.Table, drop=("runtime_s",)) -> list[dict]:
    return table.drop_columns([c for c in drop if c in table.column_names]).to_pylist()


def test_tables_conform_and_metrics_are_consistent():
    src = tiny_source()
    student, srec, teacher, trec = _pair()
    res = run_transfer(student, srec, [(teacher, trec)], src,
                       TransferConfig(method="kl_dp", base_lr=0.2, **FAST), job_id="job1")
    assert res.summary.schema == TRANSFER_SUMMARY_SCHEMA
    assert res.epochs.schema == TRANSFER_EPOCH_SCHEMA
    assert res.predictions.schema == TRANSFER_PREDICTION_SCHEMA
    for table, schema in ((res.summary, TRANSFER_SUMMARY_SCHEMA), (res.epochs, TRANSFER_EPOCH_SCHEMA)):
        conform(table, schema)
    row = res.row
    assert (row["job_id"], row["method"], row["mode"], row["study_part"]) == ("job1", "kl_dp", "single", "transfer")
    assert (row["teacher"], row["teachers"], row["student"]) == (trec.model_id, [trec.model_id], srec.model_id)
    assert row["n_train"] == 120 and row["n_eval"] == 120 and row["batch_size"] == 30
    assert row["lr"] == pytest.approx(0.2 * 30 / 256)
    assert row["gain"] - row["loss"] == row["delta_last"]
    assert row["delta_last"] == pytest.approx(row["acc_last"] - row["acc_before"], abs=1e-12)
    assert 0 <= row["teacher_share"] <= 1 and 0 <= row["teacher_share_pos"] <= 1 and 0 <= row["teacher_share_neg"] <= 1
    # predictions: before = the student's own eval predictions, after = the kept model's
    pre = ModelPreprocess.from_data_config(srec.data_config)
    rt = Runtime.create("cpu")
    assert res.predictions.column("pred_before").to_pylist() == predict_split(student, src.eval, pre, batch_size=50, rt=rt).tolist()
    assert res.predictions.column("pred_after").to_pylist() == predict_split(res.model, src.eval, pre, batch_size=50, rt=rt).tolist()
    assert res.predictions.column("sample_id").to_pylist() == src.eval.sample_ids.tolist()
    # epochs: 0 (before) .. E, each with gain - loss == delta; last row == summary
    ep = res.epochs.to_pylist()
    assert [r["epoch"] for r in ep] == [0, 1, 2]
    assert ep[0]["train_loss"] is None and ep[0]["delta"] == 0.0 and ep[0]["acc"] == row["acc_before"]
    assert all(r["gain"] - r["loss"] == r["delta"] for r in ep)
    assert ep[-1]["acc"] == row["acc_last"]
    logs = res.info["phases"][0]["epoch_logs"]  # per-epoch means of the objective's own logs
    assert [lg["teacher_share"] for lg in logs] == pytest.approx([r["teacher_share"] for r in ep[1:]])
    assert max(r["acc"] for r in ep[1:]) == row["acc_best"] == ep[row["best_epoch"]]["acc"]
    # rho vs the teacher from the per-sample predictions
    tpred = predict_split(teacher, src.eval, ModelPreprocess.from_data_config(trec.data_config), batch_size=50, rt=rt)
    lab = src.eval.labels
    m = metrics.transfer_metrics(np.asarray(res.predictions.column("pred_before")) == lab,
                                 np.asarray(res.predictions.column("pred_after")) == lab, tpred == lab)
    assert (row["rho_pos_before"], row["rho_neg_after"]) == (m.rho_pos_before, m.rho_neg_after)
    assert res.best_state is not None and set(res.best_state) == set(student.state_dict())


def test_the_callers_student_is_not_changed():
    src = tiny_source()
    student, srec, teacher, trec = _pair()
    ref = copy.deepcopy(student)
    run_transfer(student, srec, [(teacher, trec)], src, TransferConfig(method="xe_kl", base_lr=1.0, **FAST), job_id="j")
    assert state_equal(student, ref)


def test_identical_teacher_under_kl_dp_leaves_the_student_unchanged():
    """Teacher == frozen student: every confidence ties, so m_t = 0 and the loss is
    KL(frozen || student), whose gradient at the start is zero (up to float round-off of softmax).

    What makes it hold: the student must compute the same function as its frozen copy, i.e. run its
    normalisation layers on running statistics and without dropout (student_mode='eval'), and weight
    decay must be 0 (it shrinks weights even at zero gradient). Then the predictions are unchanged and
    the weights move only by round-off. In the paper's train mode (BatchNorm on batch statistics) the
    routing still sends nothing to the teacher, but the student drifts: BN batch statistics differ from
    the running ones, so the KL is not zero and the running statistics are updated. The fixed point is
    stable only for a moderate lr: at base lr 1.0 (10^4 x the KL+DP default) the round-off grows into
    an oscillation within two epochs.
    """
    src = tiny_source()
    student, srec = trained(0)
    twin = copy.deepcopy(student)
    # lr 1000x the KL+DP default; far larger ones turn the round-off into an unstable oscillation
    cfg = TransferConfig(method="kl_dp", base_lr=0.1, student_mode="eval", weight_decay=0.0, **FAST)
    res = run_transfer(student, srec, [(twin, srec)], src, cfg, job_id="twin")
    assert res.row["teacher_share"] == 0.0
    p = res.predictions
    assert p.column("pred_after").to_pylist() == p.column("pred_before").to_pylist()
    assert res.row["gain"] == res.row["loss"] == res.row["delta_last"] == 0.0
    diff = max((a - b).abs().max().item() for a, b in zip(res.model.state_dict().values(), student.state_dict().values())
               if a.is_floating_point())
    assert diff < 1e-6

    train_mode = run_transfer(student, srec, [(twin, srec)], src,
                              TransferConfig(method="kl_dp", base_lr=0.1, **FAST), job_id="twin-train")
    assert train_mode.row["teacher_share"] == 0.0  # routing still exact; BN drift is documented above


class _NaNTeacher(nn.Module):
    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, x):
        out = self.base(x)
        return out * float("nan")


def test_nan_loss_fails_the_job_with_its_reason():
    src = tiny_source()
    student, srec, teacher, trec = _pair(16)
    with pytest.raises(TransferDiverged, match=r"kl loss is nan at phase 0 .*epoch 1, step 1") as info:
        run_transfer(student, srec, [(_NaNTeacher(teacher), trec)], src, TransferConfig(method="kl", **FAST), job_id="nan")
    err = info.value
    assert (err.epoch, err.step, err.phase) == (1, 1, 0)
    again = pickle.loads(pickle.dumps(err))  # survives a Ray worker boundary
    assert str(again) == str(err) and again.step == 1


def test_same_seed_same_result_other_seed_differs():
    src = tiny_source()
    student, srec, teacher, trec = _pair()
    cfg = TransferConfig(method="xe_kl", base_lr=0.5, seed=3, **FAST)
    a = run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id="r")
    b = run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id="r")
    assert _strip(a.summary) == _strip(b.summary)
    assert a.epochs.equals(b.epochs) and a.predictions.equals(b.predictions)
    assert state_equal(a.model, b.model)
    reseeded = TransferConfig.from_dict({**cfg.to_dict(), "seed": 4})
    c = run_transfer(student, srec, [(teacher, trec)], src, reseeded, job_id="r")
    assert c.epochs.column("train_loss").to_pylist() != a.epochs.column("train_loss").to_pylist()
    # the transfer set depends on subset_seed only, not on the training seed
    assert transfer_set(src, cfg).sample_ids.tolist() == transfer_set(src, reseeded).sample_ids.tolist()


def test_small_transfer_set_clips_the_batch_and_scales_lr():
    src = tiny_source()
    student, srec, teacher, trec = _pair()
    res = run_transfer(student, srec, [(teacher, trec)], src,
                       TransferConfig(method="kl", epochs=1, batch_size=256, transfer_fraction=0.1), job_id="b")
    assert res.row["n_train"] == 30 and res.row["batch_size"] == 30
    assert res.row["lr"] == pytest.approx(1e-4 * 30 / 256)
    assert res.row["teacher_share"] is None and res.row["teacher_share_pos"] is None


@pytest.mark.parametrize("method", method_names())
def test_every_method_runs_in_the_loop(method):
    src = tiny_source()
    student, srec, teacher, trec = _pair()
    hp = {"nce_k": 64} if method == "crd" else {}
    res = run_transfer(student, srec, [(teacher, trec)], src,
                       TransferConfig(method=method, hparams=hp, epochs=1, batch_size=30, transfer_fraction=0.2,
                                      base_lr=0.1), job_id=method)
    row = res.row
    assert row["method"] == method and np.isfinite(res.epochs.column("train_loss").to_pylist()[-1])
    assert (row["teacher_share"] is not None) == get_method(method).routes


def test_eval_layout_is_channels_last_inside_and_leaves_the_weights_as_they_were():
    model, _ = trained(0)
    params = dict(model.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    with Runtime.create("cpu").eval_layout([model]) as cl:
        assert cl and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert all(w.is_contiguous() for w in convs)
    assert dict(model.named_parameters()) == params  # the same Parameter objects (optimiser state stays on)
    assert all(torch.equal(params[k], before[k]) for k in params)
    with Runtime.create("cpu").replace_eval(False).eval_layout([model]) as cl:
        assert not cl and all(w.is_contiguous() for w in convs)


@pytest.mark.parametrize("method", ["xe_kl_mcl", "kl_dp"])
def test_channels_last_evaluation_changes_no_training_bit_and_no_prediction(monkeypatch, method):
    """Evaluation passes run channels_last on CPU for speed; training runs NCHW in between. The transfer
    must train bit for bit as with NCHW evaluation, and predict the same labels."""
    import zoo_study.transfer.job as job_mod

    src = tiny_source()
    student, srec, teacher, trec = _pair()
    cfg = TransferConfig(method=method, base_lr=0.5, seed=3, **FAST)
    fast = run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id="e")
    create = Runtime.create
    monkeypatch.setattr(job_mod.Runtime, "create", classmethod(lambda cls, *a, **k: create(*a, **k).replace_eval(False)))
    plain = run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id="e")
    assert state_equal(fast.model, plain.model)
    assert fast.predictions.equals(plain.predictions)
    assert _strip(fast.epochs) == _strip(plain.epochs)


def test_cached_teacher_predictions_are_used():
    src = tiny_source()
    student, srec, teacher, trec = _pair()
    rt = Runtime.create("cpu")
    tpred = predict_split(teacher, src.eval, ModelPreprocess.from_data_config(trec.data_config), batch_size=64, rt=rt)
    cached = pa.table({"sample_id": src.eval.sample_ids[::-1].copy(), "pred": tpred[::-1].copy()})  # any row order
    cfg = TransferConfig(method="kl", epochs=1, batch_size=30, transfer_fraction=0.2)
    a = run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id="c", cached_predictions={trec.model_id: cached})
    b = run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id="c")
    assert _strip(a.summary) == _strip(b.summary)
    spred = predict_split(student, src.eval, ModelPreprocess.from_data_config(srec.data_config), batch_size=64, rt=rt)
    c = run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id="c",
                     cached_predictions={trec.model_id: tpred, srec.model_id: spred})
    assert _strip(c.summary) == _strip(b.summary) and c.epochs.equals(b.epochs)
    with pytest.raises(ValueError, match="miss 1 eval samples"):
        run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id="c",
                     cached_predictions={trec.model_id: cached.slice(1)})


def test_input_errors_are_clear():
    src = tiny_source()
    student, srec, teacher, trec = _pair()
    cfg = TransferConfig(method="kl", **FAST)
    with pytest.raises(ValueError, match="mode 'single' takes exactly one teacher, got 2"):
        run_transfer(student, srec, [(teacher, trec), (teacher, trec)], src, cfg, job_id="e")
    with pytest.raises(ValueError, match="predicts 10 classes but the data source"):
        bad = record("ten")
        bad.num_classes = 10
        run_transfer(student, srec, [(teacher, bad)], src, cfg, job_id="e")
    with pytest.raises(ValueError, match="job_id"):
        run_transfer(student, srec, [(teacher, trec)], src, cfg, job_id="")
