"""``run_transfer``: one transfer job (single teacher or many) -> summary, epoch and prediction tables.

Modes (METHOD.md section 3):

- ``single``: one teacher, one phase.
- ``parallel``: one phase with all K teachers; per sample the objective distils from the most confident
  of {frozen student, teacher_1..K} (``kl_dp``: probability of the label; ``kl_dp_unsup``:
  max-probability; ties to the student, then to the earlier teacher).
- ``sequential``: one full training phase per teacher (fresh optimiser); after each phase the current student
  becomes the frozen anchor of the next. Teacher order: as given, or by the teachers' eval accuracy
  (ascending / descending; ties keep the given order). Epoch rows carry the phase in the columns ``stage`` and
  ``stage_teacher`` (schema names kept); gain, loss and delta are always measured against the original student. Phase 0
  uses exactly the random streams of a single-teacher job, so one teacher gives identical numbers.
- ``soup``: one single-teacher phase per teacher, each from the original student with the single job's
  random streams, then the uniform average of the resulting students' floating tensors (integer
  buffers copied) is evaluated. Epoch rows: every member's curve (stage k, its teacher), then one row
  for the soup (stage K, ``stage_teacher`` = all teachers joined by '+', epoch = ``epochs``).

Summary: ``acc_last`` / ``delta_last`` / gain / loss are those of the final model (sequential: after the
last phase; soup: the soup); "best" is the first trained epoch with the highest accuracy over all phases,
``best_epoch`` counted across phases (phase k, epoch e -> k * epochs + e; soup: best = last = ``epochs``).
rho values are against the first teacher in phase order. ``teacher_share`` (and its positive / negative
flip variants) pool every routed training sample of the job; null for methods that do not route.

Cost: the student's eval predictions before transfer are computed once per job and reused for every
metric; a teacher's eval predictions are computed once (only the first teacher's, for rho, unless the
order needs all accuracies) or taken from ``cached_predictions`` (the pipeline's predict stage), as
can the student's before-transfer predictions. A single-teacher job of E epochs thus makes E + 2 eval
passes besides training (E when both are cached).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from zoo_study import metrics, stats
from zoo_study.data.base import DataSource
from zoo_study.data.cache import cached_split
from zoo_study.data.preprocess import ModelPreprocess
from zoo_study.store import (
    TRANSFER_EPOCH_SCHEMA,
    TRANSFER_PREDICTION_SCHEMA,
    TRANSFER_SUMMARY_SCHEMA,
    table_from_rows,
)
from zoo_study.transfer.config import TransferConfig
from zoo_study.transfer.loop import (
    EpochEval,
    RouteStats,
    Runtime,
    TeacherModel,
    _state_cpu,
    predict_split,
)
from zoo_study.transfer.mcl import soup_state_dicts
from zoo_study.transfer.inputs import _aligned_pred, _check_inputs, order_teachers, transfer_set, versions
from zoo_study.transfer.members import PACK_WIDE, released
from zoo_study.transfer.phase import StudentSide, pack_key, run_phase, run_phase_pack

__all__ = ["TransferResult", "run_transfer", "run_transfer_pack", "run_transfer_pack_students", "transfer_set",
           "order_teachers", "versions"]


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


def run_transfer(
    student: nn.Module,
    student_record,
    teachers: Sequence[tuple[nn.Module, Any]],
    source: DataSource,
    config: TransferConfig | Mapping[str, Any],
    *,
    device: str | torch.device = "cpu",
    job_id: str,
    progress: Callable[[str], None] | None = None,
    cached_predictions: Mapping[str, Any] | None = None,
) -> TransferResult:
    """Run one transfer job and return its tables.

    ``student`` is used as the frozen initial student and is never trained (a deep copy is); teachers
    are put in eval mode on ``device``. ``student_record`` / teachers' records are
    :class:`~zoo_study.zoo.catalog.CatalogRecord` (model_id, num_classes, data config).
    ``cached_predictions`` optionally maps model ids to their eval predictions (a PREDICTION_SCHEMA
    table or an array in eval-split order), e.g. the predict stage's files: a teacher found there needs
    no eval pass, and a student found there takes them as its before-transfer predictions (then rho
    before equals the pair score exactly; they must come from the same weights and preprocessing).
    Raises :class:`~zoo_study.transfer.loop.TransferDiverged` on a NaN / inf loss.
    """
    return _run_transfers([(student, student_record)], teachers, source, [config], device=device, job_ids=[job_id],
                          progress=progress, cached_predictions=cached_predictions, strict=True)[0]


def _method_info(info: dict[str, Any]) -> str | None:
    """The last phase's scalar method-state report (minus timing) as canonical JSON, or None when it has
    none; tables a method writes (AMTML's class weights) have their own files."""
    phases = info.get("phases") or []
    last = {k: v for k, v in (phases[-1] if phases else {}).items()
            if k not in ("teacher", "steps", "epoch_logs", "step_seconds")
            and (v is None or isinstance(v, (bool, int, float, str)))}
    return json.dumps(last, sort_keys=True) if last else None


def run_transfer_pack(
    student: nn.Module,
    student_record,
    teacher: tuple[nn.Module, Any],
    source: DataSource,
    configs: Sequence[TransferConfig | Mapping[str, Any]],
    *,
    device: str | torch.device = "cpu",
    job_ids: Sequence[str],
    progress: Callable[[str], None] | None = None,
    cached_predictions: Mapping[str, Any] | None = None,
) -> list[TransferResult | BaseException]:
    """Several single-teacher transfers of one (teacher, student) pair in one pass (methods, grid points).

    The batches, their augmentation and preprocessing, the teacher's and the frozen student's forwards
    and the evaluation pass are computed once for all of them (:func:`~zoo_study.transfer.phase.run_phase_pack`);
    each result is bit-identical on CPU to :func:`run_transfer` of that config alone. Returns, per config,
    its result or the exception that ended it (the others still finish). ``runtime_s`` of a member is its
    share of the pack's wall time.
    """
    return run_transfer_pack_students([(student, student_record)] * len(configs), teacher, source, configs,
                                      device=device, job_ids=job_ids, progress=progress,
                                      cached_predictions=cached_predictions)


def run_transfer_pack_students(
    students: Sequence[tuple[nn.Module, Any]],
    teacher: tuple[nn.Module, Any],
    source: DataSource,
    configs: Sequence[TransferConfig | Mapping[str, Any]],
    *,
    device: str | torch.device = "cpu",
    job_ids: Sequence[str],
    progress: Callable[[str], None] | None = None,
    cached_predictions: Mapping[str, Any] | None = None,
) -> list[TransferResult | BaseException]:
    """Single-teacher transfers of one teacher into one or several students in one pass.

    ``students`` holds one (module, record) per config; configs whose students have the same model id
    transfer into the same student (its anchor forward and eval pass are shared between them). The
    batches, their augmentation and the teacher forward are computed once for all; every result is
    bit-identical on CPU to :func:`run_transfer` of that config and student alone. Returns, per config,
    its result or the exception that ended it.
    """
    return _run_transfers(list(students), [teacher], source, configs, device=device, job_ids=job_ids,
                          progress=progress, cached_predictions=cached_predictions, strict=False)


def _run_transfers(students, teachers, source, configs, *, device, job_ids, progress,
                   cached_predictions, strict: bool) -> list[TransferResult | BaseException]:
    t0 = time.perf_counter()
    configs = [c if isinstance(c, TransferConfig) else TransferConfig.from_dict(c) for c in configs]
    if len(configs) != len(job_ids) or not configs:
        raise ValueError(f"a pack needs one job id per config, got {len(configs)} configs and {len(job_ids)} ids")
    if len(students) != len(configs):
        raise ValueError(f"a pack needs one student per config, got {len(students)} for {len(configs)} configs")
    if len(configs) > 1:
        if len({pack_key(c) for c in configs}) > 1 or configs[0].mode != "single":
            raise ValueError("transfers packed together must be single-teacher and share seed, batch size, epochs, "
                             "evaluation and transfer set (zoo_study.transfer.phase.pack_key)")
    for (_, s_rec), c, jid in zip(students, configs, job_ids):
        _check_inputs(s_rec, teachers, source, c, jid)
    config = configs[0]  # the settings every member shares (data, runtime, evaluation)
    scratch = config.student_init == "scratch"
    rt = Runtime.create(device, config.amp)
    tms = [TeacherModel(rec.model_id, rt.prepare(mod).eval(), ModelPreprocess.from_data_config(rec.data_config))
           for mod, rec in teachers]
    distinct: dict[str, tuple[nn.Module, Any]] = {}
    for module, rec in students:
        if rec.model_id in distinct and distinct[rec.model_id][0] is not module:
            raise ValueError(f"two different modules for student {rec.model_id!r} in one pack")
        distinct.setdefault(rec.model_id, (module, rec))
    # read through the decoded-image cache when the source has one (ImageFolder with data.cache_dir):
    # one array per distinct geometry of the job's models; unchanged otherwise
    data_configs = [rec.data_config for _, rec in distinct.values()] + [r.data_config for _, r in teachers]
    train = cached_split(transfer_set(source, config), data_configs)
    eval_split = cached_split(source.eval, data_configs)  # teachers too: their eval pass when not cached
    labels = eval_split.labels
    eb = config.eval_batch_size
    cached = dict(cached_predictions or {})

    def student_side(module: nn.Module, rec) -> StudentSide:
        """The model transfers into ``rec`` start from (scratch: rebuilt), its preprocessing, frozen anchor
        and before-transfer eval predictions."""
        if scratch:  # the architecture untrained, from the job's seed: gain / loss are counted against it
            from zoo_study.zoo.loading import scratch_like

            module = scratch_like(module, rec, config.seed)
        pre = ModelPreprocess.from_data_config(rec.data_config)
        anchor = rt.prepare(module).eval()
        if rec.model_id in cached and not scratch:
            before = _aligned_pred(cached[rec.model_id], eval_split, rec.model_id)
        else:
            before = predict_split(anchor, eval_split, pre, batch_size=eb, rt=rt)
        return StudentSide(module, anchor, pre, before)

    sides: dict[str, StudentSide] = {}
    side_errors: dict[str, BaseException] = {}
    for sid, (module, rec) in distinct.items():  # a student that cannot start fails its own members only
        try:
            sides[sid] = student_side(module, rec)
        except PACK_WIDE:
            raise
        except Exception as exc:  # noqa: BLE001 - that student's members' result
            if strict:
                raise
            side_errors[sid] = released(exc)
    member_sides = [(rec, sides.get(rec.model_id)) for _, rec in students]
    alive = [i for i, (rec, _) in enumerate(member_sides) if rec.model_id not in side_errors]
    teacher_preds: dict[int, np.ndarray] = {}

    def teacher_pred(i: int) -> np.ndarray:
        if i not in teacher_preds:
            t = tms[i]
            if t.model_id in cached:
                teacher_preds[i] = _aligned_pred(cached[t.model_id], eval_split, t.model_id)
            else:
                teacher_preds[i] = predict_split(t.module, eval_split, t.pre, batch_size=eb, rt=rt)
        return teacher_preds[i]

    if config.mode != "single" and config.teacher_order != "given":
        accs = [float(np.mean(teacher_pred(i) == labels)) for i in range(len(tms))]
        order = order_teachers(accs, config.teacher_order)
    else:
        order = list(range(len(tms)))
    ordered = [tms[i] for i in order]
    names = [t.model_id for t in ordered]
    joined = "+".join(names)

    packed: dict[int, Any] = {}
    if len(configs) > 1 and alive:
        results = run_phase_pack(sides=[member_sides[i][1] for i in alive], teachers=ordered, train=train,
                                 eval_split=eval_split, configs=[configs[i] for i in alive], rt=rt, phase=0,
                                 seed_phase=0, phase_teacher=joined, progress=progress)
        packed = dict(zip(alive, results))

    def runtime_s() -> float:  # a packed member's share of the pack's wall time
        return (time.perf_counter() - t0) / len(configs)

    def build(config: TransferConfig, job_id: str, student_record, side: StudentSide,
              packed_res: Any = None) -> TransferResult:
        student, student_pre, anchor, before_pred = side.start, side.pre, side.anchor, side.start_pred
        before_correct = before_pred == labels
        common = dict(student_pre=student_pre, train=train, eval_split=eval_split, config=config, rt=rt, progress=progress)
        routes = RouteStats() if config.method_spec.routes else None
        evals: list[EpochEval] = []
        E = config.epochs
        best_index, best_correct, best_state = 0, -1, None
        info: dict[str, Any] = {"teachers": names, "phases": []}

        def absorb(res, offset: int) -> None:
            nonlocal best_index, best_correct, best_state
            evals.extend(res.evals)  # every phase starts with its epoch-0 row
            if res.best_correct > best_correct:
                best_index, best_correct, best_state = offset + res.best_epoch, res.best_correct, res.best_state
            if routes is not None and res.routes is not None:
                routes.merge(res.routes)
            info["phases"].append({"teacher": res.evals[0].phase_teacher, "steps": res.steps,
                                   "epoch_logs": [ev.logs for ev in res.evals[1:]], **res.extra})
            info["lr"], info["batch"] = res.lr, res.batch

        if config.mode in ("single", "parallel"):
            if packed_res is not None:  # this transfer's phase ran in a pack with its pair's others
                if isinstance(packed_res, BaseException):
                    raise packed_res
                res = packed_res
            else:
                res = run_phase(start=student, anchor=anchor, teachers=ordered, phase=0, seed_phase=0,
                                start_pred=before_pred, phase_teacher=joined, **common)
            absorb(res, 0)
            final, final_pred = res.model, res.evals[-1].pred
        elif config.mode == "sequential":
            current, current_pred, frozen = student, before_pred, anchor
            for k, t in enumerate(ordered):
                res = run_phase(start=current, anchor=frozen, teachers=[t], phase=k, seed_phase=k,
                                start_pred=current_pred, phase_teacher=t.model_id, **common)
                absorb(res, k * E)
                # run_phase trained a copy, so the phase's result can serve as the next frozen anchor as is
                current = frozen = res.model
                current_pred = res.evals[-1].pred
            final, final_pred = current, current_pred
        elif config.mode == "soup":
            members = []
            for k, t in enumerate(ordered):
                res = run_phase(start=student, anchor=anchor, teachers=[t], phase=k, seed_phase=0,
                                start_pred=before_pred, phase_teacher=t.model_id, **common)
                absorb(res, k * E)
                members.append(_state_cpu(res.model))
                del res
            soup_state = soup_state_dicts(members)
            final = copy.deepcopy(student)
            final.load_state_dict(soup_state)
            final = rt.prepare(final).eval()
            final_pred = predict_split(final, eval_split, student_pre, batch_size=eb, rt=rt)
            evals.append(EpochEval(len(ordered), joined, E, final_pred))
            # the soup is the job's one result: last == best
            best_index, best_correct = E, int(np.count_nonzero(final_pred == labels))
            best_state = soup_state if config.keep_best else None
        else:  # pragma: no cover - TransferConfig validates the mode
            raise ValueError(f"unknown mode {config.mode!r}")

        # ---------------------------------------------------------------------------------------- tables
        n_eval = len(labels)
        epoch_rows = []
        for ev in evals:
            m = metrics.transfer_metrics(before_correct, ev.pred == labels)
            epoch_rows.append({
                "job_id": job_id, "stage": ev.phase, "stage_teacher": ev.phase_teacher, "epoch": ev.epoch,
                "acc": m.acc_after, "delta": m.delta, "gain": m.gain, "loss": m.loss,
                "train_loss": ev.train_loss, "teacher_share": ev.teacher_share,
            })
        teacher_correct = teacher_pred(order[0]) == labels
        final_m = metrics.transfer_metrics(before_correct, final_pred == labels, teacher_correct)
        acc_best = best_correct / n_eval
        if config.mode == "soup":
            delta_best = final_m.delta
        else:  # the first trained epoch with the highest accuracy, as best_index tracked it
            delta_best = max((r for r in epoch_rows if r["epoch"] > 0), key=lambda r: r["acc"])["delta"]
        shares = routes.shares() if routes is not None else {"teacher_share": None, "teacher_share_pos": None,
                                                              "teacher_share_neg": None}
        if routes is not None:
            info["route_counts"] = dict(zip(RouteStats.FIELDS, routes.counts.tolist()))
        # paired counts of the last model vs the student before transfer: the uncertainty of delta_last
        after_correct = final_pred == labels
        n_gain = int(np.count_nonzero(~before_correct & after_correct))
        n_loss = int(np.count_nonzero(before_correct & ~after_correct))
        if abs(final_m.gain * n_eval - n_gain) > 1e-6 or abs(final_m.loss * n_eval - n_loss) > 1e-6:
            raise AssertionError(f"gain/loss counts disagree: {final_m.gain} * {n_eval} vs {n_gain}, "
                                 f"{final_m.loss} * {n_eval} vs {n_loss}")
        delta_ci = stats.paired_delta_ci(n_gain, n_loss, n_eval)
        summary_row = {
            "job_id": job_id,
            "study_part": config.resolved_study_part,
            "method": config.method,
            "mode": config.mode,
            "student": student_record.model_id,
            "teacher": joined,
            "teachers": names,
            "hparams_json": config.hparams_json,
            "lr": float(info["lr"]),
            "temperature": config.resolved_temperature,
            "epochs": E,
            "batch_size": int(info["batch"]),
            "seed": config.seed,
            "n_train": len(train),
            "n_eval": n_eval,
            "acc_before": final_m.acc_before,
            "acc_last": final_m.acc_after,
            "acc_best": acc_best,
            "best_epoch": int(best_index),
            "delta_last": final_m.delta,
            "delta_best": delta_best,
            "gain": final_m.gain,
            "loss": final_m.loss,
            "n_gain": n_gain,
            "n_loss": n_loss,
            "p_mcnemar": stats.mcnemar_exact_p(n_gain, n_loss),
            "delta_ci_low": delta_ci[0],
            "delta_ci_high": delta_ci[1],
            "rho_pos_before": final_m.rho_pos_before,
            "rho_pos_after": final_m.rho_pos_after,
            "rho_neg_before": final_m.rho_neg_before,
            "rho_neg_after": final_m.rho_neg_after,
            **shares,
            "runtime_s": runtime_s(),
            "device": rt.describe(),
            "versions_json": json.dumps(versions(), sort_keys=True),
            "student_init": config.student_init,
            "mixup": config.mixup,
            "mixup_share": {"none": 0.0, "fmu": 1.0}.get(config.mixup, config.mixup_share),
            "variant": config.variant or None,
            "method_info_json": _method_info(info),
        }
        pred_rows = {
            "job_id": [job_id] * n_eval,
            "sample_id": eval_split.sample_ids.tolist(),
            "label": labels.tolist(),
            "pred_before": before_pred.tolist(),
            "pred_after": final_pred.tolist(),
        }
        return TransferResult(
            summary=table_from_rows([summary_row], TRANSFER_SUMMARY_SCHEMA),
            epochs=table_from_rows(epoch_rows, TRANSFER_EPOCH_SCHEMA),
            predictions=pa.table(pred_rows, schema=TRANSFER_PREDICTION_SCHEMA),
            model=final,
            best_state=best_state,
            info=info,
        )

    out: list[TransferResult | BaseException] = []
    for i, (c, jid) in enumerate(zip(configs, job_ids)):
        if member_sides[i][0].model_id in side_errors:
            out.append(side_errors[member_sides[i][0].model_id])
            continue
        try:
            out.append(build(c, jid, *member_sides[i], packed.get(i)))
        except PACK_WIDE:
            raise
        except Exception as exc:  # noqa: BLE001 - one member's failure is that member's result
            if strict:
                raise
            out.append(released(exc))
    return out
