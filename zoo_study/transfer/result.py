"""A transfer's result: its phases gathered as they finish (:class:`Trained`) and turned into the store's
tables (:func:`result_tables`: epoch rows, the summary row, the eval predictions).

Why a module of its own: :mod:`zoo_study.transfer.job` decides what to train (modes, packs, students);
this module only counts what the phases recorded, the same way for a lone transfer and a pack member.
See :mod:`zoo_study.transfer.job` for the meaning of best, last, gain, loss and rho.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from zoo_study import metrics, stats
from zoo_study.store import (
    TRANSFER_EPOCH_SCHEMA,
    TRANSFER_PREDICTION_SCHEMA,
    TRANSFER_SUMMARY_SCHEMA,
    table_from_rows,
)
from zoo_study.transfer.config import TransferConfig
from zoo_study.transfer.inputs import versions
from zoo_study.transfer.loop import EpochEval, PhaseResult, RouteStats

__all__ = ["TransferResult", "Trained", "result_tables"]


@dataclass
class TransferResult:
    """Tables for the store plus the kept model (MCL: slow weights; soup: the soup) for checkpoints."""

    summary: pa.Table  # one row, TRANSFER_SUMMARY_SCHEMA
    epochs: pa.Table  # TRANSFER_EPOCH_SCHEMA
    predictions: pa.Table  # TRANSFER_PREDICTION_SCHEMA
    model: nn.Module
    best_state: dict[str, torch.Tensor] | None  # CPU state dict of the best epoch (keep_best)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def row(self) -> dict[str, Any]:
        return self.summary.to_pylist()[0]


@dataclass
class Trained:
    """One transfer's phases as they finished: every epoch's evaluation, the best epoch over all phases
    (counted across phases), the routing counts, the per-phase report (``info``), the final model and its
    eval predictions."""

    evals: list[EpochEval]
    routes: RouteStats | None
    info: dict[str, Any]
    best_index: int = 0
    best_correct: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    final: nn.Module | None = None
    final_pred: np.ndarray | None = None

    def absorb(self, res: PhaseResult, offset: int) -> None:
        """Add one finished phase (its epochs counted from ``offset``)."""
        self.evals.extend(res.evals)  # every phase starts with its epoch-0 row
        if res.best_correct > self.best_correct:
            self.best_index, self.best_correct, self.best_state = offset + res.best_epoch, res.best_correct, res.best_state
        if self.routes is not None and res.routes is not None:
            self.routes.merge(res.routes)
        self.info["phases"].append({"teacher": res.evals[0].phase_teacher, "steps": res.steps,
                                    "epoch_logs": [ev.logs for ev in res.evals[1:]], **res.extra})
        self.info["lr"], self.info["batch"] = res.lr, res.batch


def _method_info(info: dict[str, Any]) -> str | None:
    """The last phase's scalar method-state report (minus timing) as canonical JSON, or None when it has
    none; tables a method writes (AMTML's class weights) have their own files."""
    phases = info.get("phases") or []
    last = {k: v for k, v in (phases[-1] if phases else {}).items()
            if k not in ("teacher", "steps", "epoch_logs", "step_seconds")
            and (v is None or isinstance(v, (bool, int, float, str)))}
    return json.dumps(last, sort_keys=True) if last else None


def _epoch_rows(job_id: str, evals: list[EpochEval], before_correct: np.ndarray, labels: np.ndarray) -> list[dict]:
    """One row per evaluated epoch of every phase, against the student before transfer."""
    rows = []
    for ev in evals:
        m = metrics.transfer_metrics(before_correct, ev.pred == labels)
        rows.append({"job_id": job_id, "stage": ev.phase, "stage_teacher": ev.phase_teacher, "epoch": ev.epoch,
                     "acc": m.acc_after, "delta": m.delta, "gain": m.gain, "loss": m.loss,
                     "train_loss": ev.train_loss, "teacher_share": ev.teacher_share})
    return rows


def _final_counts(before_correct: np.ndarray, after_correct: np.ndarray, teacher_correct: np.ndarray):
    """The final model's metrics and its paired gain / loss counts (checked against each other): the
    uncertainty of delta_last."""
    n_eval = len(before_correct)
    final_m = metrics.transfer_metrics(before_correct, after_correct, teacher_correct)
    n_gain = int(np.count_nonzero(~before_correct & after_correct))
    n_loss = int(np.count_nonzero(before_correct & ~after_correct))
    if abs(final_m.gain * n_eval - n_gain) > 1e-6 or abs(final_m.loss * n_eval - n_loss) > 1e-6:
        raise AssertionError(f"gain/loss counts disagree: {final_m.gain} * {n_eval} vs {n_gain}, "
                             f"{final_m.loss} * {n_eval} vs {n_loss}")
    return final_m, n_gain, n_loss


def _summary_row(t: Trained, epoch_rows: list[dict], *, config: TransferConfig, job_id: str, student_id: str,
                 before_correct: np.ndarray, after_correct: np.ndarray, teacher_correct: np.ndarray,
                 n_train: int, runtime_s: float, device: str) -> dict[str, Any]:
    """The transfer's one summary row (TRANSFER_SUMMARY_SCHEMA)."""
    n_eval = len(before_correct)
    final_m, n_gain, n_loss = _final_counts(before_correct, after_correct, teacher_correct)
    if config.mode == "soup":
        delta_best = final_m.delta
    else:  # the first trained epoch with the highest accuracy, as best_index tracked it
        delta_best = max((r for r in epoch_rows if r["epoch"] > 0), key=lambda r: r["acc"])["delta"]
    shares = t.routes.shares() if t.routes is not None else {"teacher_share": None, "teacher_share_pos": None,
                                                              "teacher_share_neg": None}
    if t.routes is not None:
        t.info["route_counts"] = dict(zip(RouteStats.FIELDS, t.routes.counts.tolist()))
    delta_ci = stats.paired_delta_ci(n_gain, n_loss, n_eval)
    names = t.info["teachers"]
    return {
        "job_id": job_id, "study_part": config.resolved_study_part, "method": config.method, "mode": config.mode,
        "student": student_id, "teacher": "+".join(names), "teachers": names, "hparams_json": config.hparams_json,
        "lr": float(t.info["lr"]), "temperature": config.resolved_temperature, "epochs": config.epochs,
        "batch_size": int(t.info["batch"]), "seed": config.seed, "n_train": n_train, "n_eval": n_eval,
        "acc_before": final_m.acc_before, "acc_last": final_m.acc_after, "acc_best": t.best_correct / n_eval,
        "best_epoch": int(t.best_index), "delta_last": final_m.delta, "delta_best": delta_best,
        "gain": final_m.gain, "loss": final_m.loss, "n_gain": n_gain, "n_loss": n_loss,
        "p_mcnemar": stats.mcnemar_exact_p(n_gain, n_loss), "delta_ci_low": delta_ci[0],
        "delta_ci_high": delta_ci[1], "rho_pos_before": final_m.rho_pos_before,
        "rho_pos_after": final_m.rho_pos_after, "rho_neg_before": final_m.rho_neg_before,
        "rho_neg_after": final_m.rho_neg_after, **shares, "runtime_s": runtime_s, "device": device,
        "versions_json": json.dumps(versions(), sort_keys=True), "student_init": config.student_init,
        "mixup": config.mixup, "mixup_share": {"none": 0.0, "fmu": 1.0}.get(config.mixup, config.mixup_share),
        "variant": config.variant or None, "method_info_json": _method_info(t.info),
    }


def result_tables(t: Trained, *, config: TransferConfig, job_id: str, student_id: str, before_pred: np.ndarray,
                  labels: np.ndarray, sample_ids: np.ndarray, teacher_pred: np.ndarray, n_train: int,
                  runtime_s: float, device: str) -> TransferResult:
    """The :class:`TransferResult` of a finished transfer: epoch rows, summary row, eval predictions."""
    before_correct = before_pred == labels
    epoch_rows = _epoch_rows(job_id, t.evals, before_correct, labels)
    summary = _summary_row(t, epoch_rows, config=config, job_id=job_id, student_id=student_id,
                           before_correct=before_correct, after_correct=t.final_pred == labels,
                           teacher_correct=teacher_pred == labels, n_train=n_train, runtime_s=runtime_s,
                           device=device)
    n_eval = len(labels)
    pred_rows = {"job_id": [job_id] * n_eval, "sample_id": sample_ids.tolist(), "label": labels.tolist(),
                 "pred_before": before_pred.tolist(), "pred_after": t.final_pred.tolist()}
    return TransferResult(summary=table_from_rows([summary], TRANSFER_SUMMARY_SCHEMA),
                          epochs=table_from_rows(epoch_rows, TRANSFER_EPOCH_SCHEMA),
                          predictions=pa.table(pred_rows, schema=TRANSFER_PREDICTION_SCHEMA),
                          model=t.final, best_state=t.best_state, info=t.info)
