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
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from zoo_study.data.base import DataSource, ImageSplit
from zoo_study.data.cache import cached_split
from zoo_study.data.preprocess import ModelPreprocess
from zoo_study.transfer.config import TransferConfig
from zoo_study.transfer.inputs import _aligned_pred, _check_inputs, order_teachers, transfer_set
from zoo_study.transfer.loop import EpochEval, Progress, RouteStats, Runtime, TeacherModel, _state_cpu, predict_split
from zoo_study.transfer.mcl import soup_state_dicts
from zoo_study.transfer.members import PACK_WIDE, released
from zoo_study.transfer.phase import StudentSide, run_phase, run_phase_pack
from zoo_study.transfer.result import Trained, TransferResult, result_tables

__all__ = ["TransferResult", "run_transfer", "run_transfer_pack", "run_transfer_pack_students"]


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


@dataclass
class _Shared:
    """What every transfer of one call shares: the runtime, the splits, the teachers (in phase order once
    :meth:`order` ran), the cached and computed teacher predictions, the settings of ``configs[0]``."""

    config: TransferConfig  # data, runtime and evaluation settings every member shares
    rt: Runtime
    teachers: list[TeacherModel]
    train: ImageSplit
    eval_split: ImageSplit
    cached: dict[str, Any]
    progress: Progress | None
    t0: float
    n_members: int
    order: list[int] = field(default_factory=list)
    preds: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return self.eval_split.labels

    @property
    def ordered(self) -> list[TeacherModel]:
        return [self.teachers[i] for i in self.order]

    @property
    def names(self) -> list[str]:
        return [t.model_id for t in self.ordered]

    def teacher_pred(self, i: int) -> np.ndarray:
        """Teacher ``i``'s eval predictions: cached by the predict stage, else one pass (once)."""
        if i not in self.preds:
            t = self.teachers[i]
            if t.model_id in self.cached:
                self.preds[i] = _aligned_pred(self.cached[t.model_id], self.eval_split, t.model_id)
            else:
                self.preds[i] = predict_split(t.module, self.eval_split, t.pre, batch_size=self.config.eval_batch_size,
                                              rt=self.rt)
        return self.preds[i]

    def order_teachers(self) -> None:
        """The phase order: by eval accuracy for a multi-teacher job that asks for it, else as given."""
        c = self.config
        if c.mode != "single" and c.teacher_order != "given":
            accs = [float(np.mean(self.teacher_pred(i) == self.labels)) for i in range(len(self.teachers))]
            self.order = order_teachers(accs, c.teacher_order)
        else:
            self.order = list(range(len(self.teachers)))

    def runtime_s(self) -> float:
        """A member's share of the wall time so far (a lone transfer: all of it)."""
        return (time.perf_counter() - self.t0) / self.n_members


def _checked(students, teachers, source: DataSource, configs, job_ids) -> list[TransferConfig]:
    """The configs validated, with one job id and one student each; a pack's must be single-teacher (their
    shared batch settings are checked once, by :func:`~zoo_study.transfer.phase.run_phase_pack`)."""
    configs = [c if isinstance(c, TransferConfig) else TransferConfig.from_dict(c) for c in configs]
    if len(configs) != len(job_ids) or not configs:
        raise ValueError(f"a pack needs one job id per config, got {len(configs)} configs and {len(job_ids)} ids")
    if len(students) != len(configs):
        raise ValueError(f"a pack needs one student per config, got {len(students)} for {len(configs)} configs")
    if len(configs) > 1 and any(c.mode != "single" for c in configs):
        raise ValueError("transfers packed together must be single-teacher (mode 'single')")
    for (_, s_rec), c, jid in zip(students, configs, job_ids):
        _check_inputs(s_rec, teachers, source, c, jid)
    return configs


def _distinct(students) -> dict[str, tuple[nn.Module, Any]]:
    """Each student once, by model id (one module per id)."""
    distinct: dict[str, tuple[nn.Module, Any]] = {}
    for module, rec in students:
        if rec.model_id in distinct and distinct[rec.model_id][0] is not module:
            raise ValueError(f"two different modules for student {rec.model_id!r} in one pack")
        distinct.setdefault(rec.model_id, (module, rec))
    return distinct


def _shared(config: TransferConfig, distinct, teachers, source: DataSource, device, cached_predictions,
            progress, t0: float, n_members: int) -> _Shared:
    """The runtime, the teachers on it and the splits, read through the decoded-image cache when the
    source has one (ImageFolder with data.cache_dir: one array per distinct geometry of the models)."""
    rt = Runtime.create(device, config.amp)
    tms = [TeacherModel(rec.model_id, rt.prepare(mod).eval(), ModelPreprocess.from_data_config(rec.data_config))
           for mod, rec in teachers]
    data_configs = [rec.data_config for _, rec in distinct.values()] + [r.data_config for _, r in teachers]
    train = cached_split(transfer_set(source, config), data_configs)
    eval_split = cached_split(source.eval, data_configs)  # teachers too: their eval pass when not cached
    return _Shared(config, rt, tms, train, eval_split, dict(cached_predictions or {}), progress, t0, n_members)


def _student_side(sh: _Shared, module: nn.Module, rec) -> StudentSide:
    """The model transfers into ``rec`` start from (scratch: rebuilt), its preprocessing, frozen anchor and
    before-transfer eval predictions."""
    scratch = sh.config.student_init == "scratch"
    if scratch:  # the architecture untrained, from the job's seed: gain / loss are counted against it
        from zoo_study.zoo.loading import scratch_like

        module = scratch_like(module, rec, sh.config.seed)
    pre = ModelPreprocess.from_data_config(rec.data_config)
    anchor = sh.rt.prepare(module).eval()
    if rec.model_id in sh.cached and not scratch:
        before = _aligned_pred(sh.cached[rec.model_id], sh.eval_split, rec.model_id)
    else:
        before = predict_split(anchor, sh.eval_split, pre, batch_size=sh.config.eval_batch_size, rt=sh.rt)
    return StudentSide(module, anchor, pre, before)


def _student_sides(sh: _Shared, distinct, strict: bool) -> tuple[dict[str, StudentSide], dict[str, BaseException]]:
    """Every student's side; a student that cannot start fails its own members only (unless ``strict``)."""
    sides: dict[str, StudentSide] = {}
    errors: dict[str, BaseException] = {}
    for sid, (module, rec) in distinct.items():
        try:
            sides[sid] = _student_side(sh, module, rec)
        except PACK_WIDE:
            raise
        except Exception as exc:  # noqa: BLE001 - that student's members' result
            if strict:
                raise
            errors[sid] = released(exc)
    return sides, errors


def _run_transfers(students, teachers, source, configs, *, device, job_ids, progress,
                   cached_predictions, strict: bool) -> list[TransferResult | BaseException]:
    """Transfers of one teacher set sharing batches: one result (or, unless ``strict``, exception) each."""
    t0 = time.perf_counter()
    configs = _checked(students, teachers, source, configs, job_ids)
    distinct = _distinct(students)
    sh = _shared(configs[0], distinct, teachers, source, device, cached_predictions, progress, t0, len(configs))
    sides, side_errors = _student_sides(sh, distinct, strict)
    sh.order_teachers()
    alive = [i for i, (_, rec) in enumerate(students) if rec.model_id not in side_errors]
    packed: dict[int, Any] = {}
    if len(configs) > 1 and alive:
        results = run_phase_pack(sides=[sides[students[i][1].model_id] for i in alive], teachers=sh.ordered,
                                 train=sh.train, eval_split=sh.eval_split, configs=[configs[i] for i in alive],
                                 rt=sh.rt, phase=0, seed_phase=0, phase_teacher="+".join(sh.names),
                                 progress=progress)
        packed = dict(zip(alive, results))
    out: list[TransferResult | BaseException] = []
    for i, (c, jid) in enumerate(zip(configs, job_ids)):
        rec = students[i][1]
        if rec.model_id in side_errors:
            out.append(side_errors[rec.model_id])
            continue
        try:
            out.append(_transfer(sh, c, jid, rec, sides[rec.model_id], packed.get(i)))
        except PACK_WIDE:
            raise
        except Exception as exc:  # noqa: BLE001 - one member's failure is that member's result
            if strict:
                raise
            out.append(released(exc))
    return out


def _transfer(sh: _Shared, config: TransferConfig, job_id: str, student_record, side: StudentSide,
              packed_res: Any = None) -> TransferResult:
    """One transfer trained by its mode (or its packed phase's result taken) and turned into its tables."""
    t = Trained(evals=[], routes=RouteStats() if config.method_spec.routes else None,
                info={"teachers": sh.names, "phases": []})
    if config.mode not in _MODES:  # pragma: no cover - TransferConfig validates the mode
        raise ValueError(f"unknown mode {config.mode!r}")
    _MODES[config.mode](sh, config, side, t, packed_res)
    return result_tables(t, config=config, job_id=job_id, student_id=student_record.model_id,
                         before_pred=side.start_pred, labels=sh.labels, sample_ids=sh.eval_split.sample_ids,
                         teacher_pred=sh.teacher_pred(sh.order[0]), n_train=len(sh.train),
                         runtime_s=sh.runtime_s(), device=sh.rt.describe())


def _phase_kwargs(sh: _Shared, config: TransferConfig, side: StudentSide) -> dict[str, Any]:
    return dict(student_pre=side.pre, train=sh.train, eval_split=sh.eval_split, config=config, rt=sh.rt,
                progress=sh.progress)


def _one_phase(sh: _Shared, config: TransferConfig, side: StudentSide, t: Trained, packed_res: Any) -> None:
    """``single`` and ``parallel``: one phase with every teacher (run in a pack: its result as given)."""
    if isinstance(packed_res, BaseException):
        raise packed_res
    res = packed_res
    if res is None:
        res = run_phase(start=side.start, anchor=side.anchor, teachers=sh.ordered, phase=0, seed_phase=0,
                        start_pred=side.start_pred, phase_teacher="+".join(sh.names),
                        **_phase_kwargs(sh, config, side))
    t.absorb(res, 0)
    t.final, t.final_pred = res.model, res.evals[-1].pred


def _sequential(sh: _Shared, config: TransferConfig, side: StudentSide, t: Trained, packed_res: Any = None) -> None:
    """One phase per teacher; each phase's result is the next one's start and frozen anchor."""
    current, current_pred, frozen = side.start, side.start_pred, side.anchor
    for k, teacher in enumerate(sh.ordered):
        res = run_phase(start=current, anchor=frozen, teachers=[teacher], phase=k, seed_phase=k,
                        start_pred=current_pred, phase_teacher=teacher.model_id, **_phase_kwargs(sh, config, side))
        t.absorb(res, k * config.epochs)
        # run_phase trained a copy, so the phase's result can serve as the next frozen anchor as is
        current = frozen = res.model
        current_pred = res.evals[-1].pred
    t.final, t.final_pred = current, current_pred


def _soup(sh: _Shared, config: TransferConfig, side: StudentSide, t: Trained, packed_res: Any = None) -> None:
    """One single-teacher phase per teacher from the original student, then their uniform average."""
    members = []
    for k, teacher in enumerate(sh.ordered):
        res = run_phase(start=side.start, anchor=side.anchor, teachers=[teacher], phase=k, seed_phase=0,
                        start_pred=side.start_pred, phase_teacher=teacher.model_id, **_phase_kwargs(sh, config, side))
        t.absorb(res, k * config.epochs)
        members.append(_state_cpu(res.model))
        del res
    soup_state = soup_state_dicts(members)
    final = copy.deepcopy(side.start)
    final.load_state_dict(soup_state)
    t.final = sh.rt.prepare(final).eval()
    t.final_pred = predict_split(t.final, sh.eval_split, side.pre, batch_size=config.eval_batch_size, rt=sh.rt)
    t.evals.append(EpochEval(len(sh.ordered), "+".join(sh.names), config.epochs, t.final_pred))
    # the soup is the job's one result: last == best
    t.best_index, t.best_correct = config.epochs, int(np.count_nonzero(t.final_pred == sh.labels))
    t.best_state = soup_state if config.keep_best else None


_MODES: dict[str, Callable[..., None]] = {"single": _one_phase, "parallel": _one_phase, "sequential": _sequential,
                                          "soup": _soup}
