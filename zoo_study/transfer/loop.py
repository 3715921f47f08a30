"""The transfer loop: one training phase of a student against a frozen anchor and K teachers.

A phase is what a single-teacher job runs once, a sequential job once per teacher, a parallel job once
with all teachers and a soup once per teacher. What it guarantees:

- Teachers and the frozen anchor (the initial student, or the previous phase's result) run in eval mode
  under ``no_grad``; only a deep copy of the start model trains, so callers' modules never change.
- Each raw uint8 batch is augmented once (:class:`TransferAugment`, seeded generator) and then turned
  into each model's own input by its :class:`ModelPreprocess`; models with equal preprocessing share
  the tensor, so the student and its frozen anchor always see the very same input.
- SGD (momentum 0.9, weight decay 1e-3 by default), constant lr ``base_lr * batch / 256``.
- Evaluation of the kept model (MCL: the slow weights) before training and after every epoch; last and
  best are kept. A NaN / inf loss raises :class:`TransferDiverged` naming phase, epoch and step.
- Seeded: shuffling, augmentation and the objective's own sampling each use a generator derived from
  ``(seed, phase)``, and ``torch.manual_seed`` covers module initialisation (CRD heads) and dropout. On
  CPU the same config gives bit-identical results; on CUDA the loop uses bf16 autocast and
  channels_last, which are fast but not bitwise reproducible.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from zoo_study.data.augment import TransferAugment
from zoo_study.data.cache import augment_batch
from zoo_study.data.base import ImageSplit, raw_loader
from zoo_study.data.preprocess import ModelPreprocess
from zoo_study.transfer.config import TransferConfig
from zoo_study.methods.registry import ObjectiveInputs, SetupContext

__all__ = ["TransferDiverged", "Runtime", "TeacherModel", "PhaseResult", "RouteStats", "predict_split",
           "run_phase", "phase_seeds"]

Progress = Callable[[str], None]


class TransferDiverged(RuntimeError):
    """The objective became NaN or infinite: the job fails with this reason."""

    def __init__(self, loss: float, *, phase: int, epoch: int, step: int, method: str, teacher: str | None = None):
        self.loss, self.phase, self.epoch, self.step, self.method, self.teacher = loss, phase, epoch, step, method, teacher
        where = f"phase {phase}" + (f" (teacher {teacher!r})" if teacher else "")
        super().__init__(
            f"transfer diverged: {method} loss is {loss} at {where}, epoch {epoch}, step {step}; "
            f"lower the learning rate or the temperature"
        )

    def __reduce__(self):  # picklable across Ray workers
        return (_rebuild_diverged, (self.loss, self.phase, self.epoch, self.step, self.method, self.teacher))


def _rebuild_diverged(loss, phase, epoch, step, method, teacher) -> TransferDiverged:
    return TransferDiverged(loss, phase=phase, epoch=epoch, step=step, method=method, teacher=teacher)


@dataclass(frozen=True)
class Runtime:
    """Where and how models run: bf16 autocast and channels_last only on CUDA by default."""

    device: torch.device
    amp: bool = False
    channels_last: bool = False

    @classmethod
    def create(cls, device: str | torch.device, amp: bool | None = None) -> "Runtime":
        dev = torch.device(device)
        cuda = dev.type == "cuda"
        return cls(dev, amp=cuda if amp is None else bool(amp), channels_last=cuda)

    def autocast(self) -> ContextManager:
        if not self.amp:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def prepare(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def inputs(self, pre: ModelPreprocess, raw: Tensor) -> Tensor:
        x = pre(raw)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def describe(self) -> str:
        if self.device.type == "cuda":
            idx = self.device.index if self.device.index is not None else torch.cuda.current_device()
            return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
        return str(self.device)


@dataclass
class TeacherModel:
    model_id: str
    module: nn.Module
    pre: ModelPreprocess


# ------------------------------------------------------------------------------------------- helpers
@torch.inference_mode()
def predict_split(model: nn.Module, split: ImageSplit, pre: ModelPreprocess, *, batch_size: int, rt: Runtime) -> np.ndarray:
    """Top-1 predictions (int64, split order) of ``model`` in eval mode with its own preprocessing."""
    model.eval()
    out = []
    for raw, _, _ in raw_loader(split, batch_size):
        with rt.autocast():
            out.append(model(rt.inputs(pre, raw.to(rt.device))).argmax(-1).cpu())
    return torch.cat(out).numpy().astype(np.int64)


def _forward(model: nn.Module, x: Tensor, features: bool) -> tuple[Tensor, Tensor | None]:
    """Logits, and with ``features`` the pre-logits (penultimate) features via timm's forward_head."""
    if not features:
        return model(x), None
    f = model.forward_features(x)
    return model.forward_head(f), model.forward_head(f, pre_logits=True)


def set_student_mode(model: nn.Module, mode: str) -> None:
    """train: everything in train mode; frozen_norm: BatchNorm layers use and keep their running
    statistics; eval: the whole model in eval mode (gradients still flow)."""
    if mode == "eval":
        model.eval()
        return
    model.train()
    if mode == "frozen_norm":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def phase_seeds(seed: int, phase: int) -> dict[str, int]:
    """Independent seeds for one phase. Phase 0 of any mode uses the same seeds as a single-teacher
    job, so a one-teacher sequential job reproduces the single transfer exactly."""
    names = ("torch", "shuffle", "augment", "objective")
    state = np.random.SeedSequence([int(seed), int(phase)]).generate_state(len(names), dtype=np.uint32)
    return {n: int(s) for n, s in zip(names, state)}


def _state_cpu(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class RouteStats:
    """Counts of data-partitioning decisions on training batches (all epochs).

    Positive flip of a training sample: some teacher right and the frozen student wrong on that very
    (augmented) view; negative flip: the frozen student right and no teacher right. ``pos_to_teacher``
    / ``neg_to_teacher`` count those routed to a teacher (paper Tab 3: 72% / 9%).
    """

    FIELDS = ("n", "to_teacher", "pos", "pos_to_teacher", "neg", "neg_to_teacher")

    def __init__(self) -> None:
        self.counts = np.zeros(len(self.FIELDS), dtype=np.int64)
        self._pending: list[Tensor] = []

    def add(self, route: Tensor, frozen: Tensor, teachers: Tensor, labels: Tensor) -> None:
        with torch.no_grad():
            t_right = (teachers.argmax(-1) == labels.unsqueeze(0)).any(0)
            f_right = frozen.argmax(-1) == labels
            to_t = route > 0
            pos, neg = t_right & ~f_right, f_right & ~t_right
            self._pending.append(torch.stack([
                torch.ones_like(to_t).sum(), to_t.sum(), pos.sum(), (pos & to_t).sum(), neg.sum(), (neg & to_t).sum()
            ]))

    def flush(self) -> np.ndarray:
        """Add pending device counters (one sync per epoch) and return the counts added since last flush."""
        if not self._pending:
            return np.zeros(len(self.FIELDS), dtype=np.int64)
        added = torch.stack(self._pending).sum(0).cpu().numpy().astype(np.int64)
        self._pending.clear()
        self.counts += added
        return added

    def merge(self, other: "RouteStats") -> None:
        other.flush()
        self.counts += other.counts

    @staticmethod
    def share(num: int, den: int) -> float | None:
        return float(num) / den if den else None

    def shares(self) -> dict[str, float | None]:
        self.flush()
        c = dict(zip(self.FIELDS, self.counts.tolist()))
        return {
            "teacher_share": self.share(c["to_teacher"], c["n"]),
            "teacher_share_pos": self.share(c["pos_to_teacher"], c["pos"]),
            "teacher_share_neg": self.share(c["neg_to_teacher"], c["neg"]),
        }


@dataclass
class EpochEval:
    phase: int
    phase_teacher: str | None
    epoch: int
    pred: np.ndarray
    train_loss: float | None = None
    teacher_share: float | None = None
    logs: dict[str, float] = field(default_factory=dict)  # per-epoch means of the objective's logs


@dataclass
class PhaseResult:
    model: nn.Module  # the kept model of the phase (MCL: slow weights), eval mode
    evals: list[EpochEval]  # epoch 0 (start) and 1..E
    best_epoch: int  # 1..E, the first epoch with the highest accuracy
    best_correct: int
    best_state: dict[str, Tensor] | None
    routes: RouteStats | None
    lr: float
    batch: int
    steps: int
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- phase
def run_phase(
    *,
    start: nn.Module,
    anchor: nn.Module,
    teachers: Sequence[TeacherModel],
    student_pre: ModelPreprocess,
    train: ImageSplit,
    eval_split: ImageSplit,
    config: TransferConfig,
    rt: Runtime,
    phase: int,
    seed_phase: int,
    start_pred: np.ndarray,
    phase_teacher: str | None = None,
    progress: Progress | None = None,
) -> PhaseResult:
    """Train a copy of ``start`` for ``config.epochs`` epochs on ``train``; evaluate on ``eval_split``.

    ``anchor`` is the frozen student of the data-partitioning objectives (only run when the objective
    needs it); ``start_pred`` are ``start``'s eval predictions (the epoch-0 row, computed by the caller
    once). ``seed_phase`` selects the phase's random streams (see :func:`phase_seeds`).
    """
    obj = config.method_spec
    params = config.resolved_hparams
    temperature = config.resolved_temperature
    if not teachers:
        raise ValueError("a transfer phase needs at least one teacher")
    if len(teachers) > 1 and not obj.multi_teacher:
        raise ValueError(f"method {obj.name!r} takes one teacher per phase, got {len(teachers)}")
    n = len(train)
    if n == 0:
        raise ValueError("the transfer set is empty; raise transfer_fraction")
    batch = min(config.batch_size, n)
    drop_last = n > batch  # full batches only (BatchNorm cannot train on a batch of one)
    lr = config.lr_for_batch(batch)
    seeds = phase_seeds(config.seed, seed_phase)
    torch.manual_seed(seeds["torch"])

    model = rt.prepare(copy.deepcopy(start))
    for p in model.parameters():
        p.requires_grad_(True)
    anchor.eval()
    for t in teachers:
        t.module.eval()

    # per-sample positions in the transfer set (CRD memory bank rows)
    order = np.argsort(train.sample_ids, kind="stable")
    sorted_ids = train.sample_ids[order]

    def positions(sample_ids: Tensor) -> Tensor:
        return torch.from_numpy(order[np.searchsorted(sorted_ids, sample_ids.numpy())])

    def feature_dims() -> tuple[int, int]:
        # feature sizes from a probe of two copies of one image, in eval mode (no state changes)
        raw0 = train[0][0].unsqueeze(0).expand(2, -1, -1, -1).to(rt.device)
        with torch.no_grad(), rt.autocast():
            model.eval()
            fs = _forward(model, rt.inputs(student_pre, raw0), True)[1]
            ft = _forward(teachers[0].module, rt.inputs(teachers[0].pre, raw0), True)[1]
        return fs.flatten(1).shape[1], ft.flatten(1).shape[1]

    state = obj.make_state(SetupContext(model=model, params=params, n_data=n, device=rt.device,
                                        feature_dims=feature_dims, labels=train.labels))

    trainable = list(model.parameters()) + (list(state.parameters()) if state is not None else [])
    opt = torch.optim.SGD(trainable, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    loader = raw_loader(train, batch, shuffle=True, seed=seeds["shuffle"], drop_last=drop_last)
    augment = {"paper": TransferAugment(), "flip": TransferAugment(color_p=0.0, gray_p=0.0), "none": None}[config.augment]
    aug_gen = torch.Generator().manual_seed(seeds["augment"])
    obj_gen = torch.Generator().manual_seed(seeds["objective"])
    routes = RouteStats() if obj.routes else None

    labels_eval = eval_split.labels
    evals = [EpochEval(phase, phase_teacher, 0, start_pred)]
    best_epoch, best_correct, best_state = 0, -1, None
    step = 0
    for epoch in range(1, config.epochs + 1):
        set_student_mode(model, config.student_mode)
        if state is not None:
            state.train()
        loss_sum = 0.0
        batches = 0
        log_sums: dict[str, Tensor] = {}
        epoch_routes = RouteStats() if routes is not None else None
        for raw, labels, sample_ids in loader:
            step += 1
            raw = augment_batch(augment, raw.to(rt.device), aug_gen)  # cached Views: same draws per geometry
            labels = labels.to(rt.device)
            cache: dict[ModelPreprocess, Tensor] = {}

            def x_for(pre: ModelPreprocess) -> Tensor:
                if pre not in cache:
                    cache[pre] = rt.inputs(pre, raw)
                return cache[pre]

            with torch.no_grad(), rt.autocast():
                t_logits, t_feat = [], None
                for i, t in enumerate(teachers):
                    logits, feat = _forward(t.module, x_for(t.pre), obj.needs_features and i == 0)
                    t_logits.append(logits.float())
                    if feat is not None:
                        t_feat = feat.float()
                teacher_logits = torch.stack(t_logits)
                frozen = anchor(x_for(student_pre)).float() if obj.needs_frozen else None
            with rt.autocast():
                s_logits, s_feat = _forward(model, x_for(student_pre), obj.needs_features)
            inputs = ObjectiveInputs(
                student=s_logits.float(),
                teachers=teacher_logits,
                frozen=frozen,
                labels=labels,
                temperature=temperature,
                student_features=s_feat.float() if s_feat is not None else None,
                teacher_features=t_feat,
                index=positions(sample_ids).to(rt.device) if obj.needs_index else None,
                state=state,
                generator=obj_gen,
            )
            out = obj.fn(inputs, params)
            loss_value = float(out.loss.detach())
            if not math.isfinite(loss_value):
                raise TransferDiverged(loss_value, phase=phase, epoch=epoch, step=step, method=obj.name,
                                       teacher=phase_teacher)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            if state is not None:
                state.after_step(model)
            loss_sum += loss_value
            batches += 1
            for key, value in out.logs.items():  # device tensors: summed without a sync per step
                log_sums[key] = log_sums[key] + value if key in log_sums else value
            if epoch_routes is not None and out.route is not None:
                epoch_routes.add(out.route, frozen, teacher_logits, labels)

        share = None
        if epoch_routes is not None:
            epoch_routes.flush()
            share = epoch_routes.shares()["teacher_share"]
            routes.merge(epoch_routes)
        if epoch != config.epochs and epoch % config.eval_every:
            continue  # evaluated every eval_every epochs and always after the last
        kept = state.kept_model(model) if state is not None else model
        pred = predict_split(kept, eval_split, student_pre, batch_size=config.eval_batch_size, rt=rt)
        train_loss = loss_sum / batches if batches else None
        logs = {k: float(v) / batches for k, v in log_sums.items()}
        evals.append(EpochEval(phase, phase_teacher, epoch, pred, train_loss, share, logs))
        correct = int(np.count_nonzero(pred == labels_eval))
        if correct > best_correct:
            best_epoch, best_correct = epoch, correct
            best_state = _state_cpu(kept) if config.keep_best else None
        if progress is not None:
            progress(
                f"phase {phase}{f' ({phase_teacher})' if phase_teacher else ''} epoch {epoch}/{config.epochs}: "
                f"loss {train_loss if train_loss is not None else float('nan'):.4f} "
                f"acc {correct / len(labels_eval):.4f}"
            )

    kept = state.kept_model(model) if state is not None else model
    kept.eval()
    extra = state.extra() if state is not None else {}
    return PhaseResult(kept, evals, best_epoch, best_correct, best_state, routes, lr, batch, step, extra)
