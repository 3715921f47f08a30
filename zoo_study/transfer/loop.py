"""What every training phase runs on: the :class:`Runtime` (device, precision, layouts), the models'
forwards (logits, features, maps, the teachers' shared forwards), evaluation passes, seeds, routing
counts and the per-epoch records. The phase itself (one student copy, or a pack of them) is
:mod:`zoo_study.transfer.phase`; a transfer job's modes are :mod:`zoo_study.transfer.job`.

A phase is what a single-teacher job runs once, a sequential job once per teacher, a parallel job once
with all teachers and a soup once per teacher. What the phase and these helpers guarantee:

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
  CPU the same config gives bit-identical results (its evaluation passes run channels_last and hand the
  weights back in NCHW, zoo_study/layout.py); on CUDA the loop uses autocast (bf16, or fp16 with a
  gradient scaler where bf16 is not native: :func:`choose_precision`), channels_last, cuDNN autotuning
  and TF32, which are fast but not bitwise reproducible; evaluation logits are fp32 (:meth:`Runtime.logits`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from zoo_study.data.base import ImageSplit, raw_loader
from zoo_study.data.preprocess import ModelPreprocess
from zoo_study.layout import channels_last_pass, pass_input
from zoo_study.precision import Precision, choose_precision, enable_fast_kernels, fp32_logits
from zoo_study.transfer.feature_maps import MapsUnreadable, forward_map, level_maps, model_maps

__all__ = ["TransferDiverged", "Runtime", "choose_precision", "TeacherModel", "PhaseResult", "RouteStats",
           "predict_split", "phase_seeds", "teacher_forwards"]

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
    """Where and how models run: autocast (:func:`choose_precision`) and channels_last only on CUDA by
    default; batches go to the device through pinned memory without blocking there."""

    device: torch.device
    amp: bool = False
    channels_last: bool = False
    eval_channels_last: bool = True  # CPU evaluation passes only (see eval_layout)
    amp_dtype: torch.dtype = torch.bfloat16
    grad_scaler: bool = False  # fp16 autocast: one GradScaler per trained model

    @classmethod
    def create(cls, device: str | torch.device, amp: bool | None = None) -> "Runtime":
        dev = torch.device(device)
        prec = choose_precision(dev, amp)  # bf16, or fp16 with a scaler where bf16 is not native
        if prec.fast_kernels:
            enable_fast_kernels()
        return cls(dev, amp=prec.amp_dtype is not None, channels_last=dev.type == "cuda",
                   amp_dtype=prec.amp_dtype or torch.bfloat16, grad_scaler=prec.grad_scaler)

    def replace_eval(self, channels_last: bool) -> "Runtime":
        """This runtime with CPU evaluation passes in channels_last (the default) or NCHW."""
        return replace(self, eval_channels_last=bool(channels_last))

    def autocast(self) -> ContextManager:
        return self.precision.autocast()

    def scaler(self) -> "torch.amp.GradScaler | None":
        """A fresh gradient scaler for one trained model under fp16 autocast, else None."""
        return torch.amp.GradScaler(self.device.type) if self.grad_scaler else None

    def to_device(self, x: Any) -> Any:
        """A batch (tensor or cached :class:`~zoo_study.data.cache_read.Views`) on the device: on CUDA
        through pinned memory with ``non_blocking`` (the copy overlaps the work queued before it);
        elsewhere a plain ``to``, unchanged."""
        if self.device.type != "cuda":
            return x.to(self.device)

        def move(t: Tensor) -> Tensor:
            if t.device.type == "cpu" and not t.is_pinned():
                t = t.pin_memory()
            return t.to(self.device, non_blocking=True)

        return move(x) if isinstance(x, Tensor) else x.map(move)

    @property
    def precision(self) -> Precision:
        return Precision(self.device.type, self.amp_dtype if self.amp else None, self.grad_scaler)

    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        """fp32 logits of an evaluation forward (:func:`~zoo_study.precision.fp32_logits`)."""
        return fp32_logits(model, x, self.precision)

    def prepare(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def inputs(self, pre: ModelPreprocess, raw: Tensor) -> Tensor:
        x = pre(raw)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def eval_layout(self, models: Sequence[nn.Module]) -> ContextManager[bool]:
        """The layout of an evaluation pass: channels_last as everywhere on CUDA; on CPU channels_last for
        the pass only (:mod:`zoo_study.layout`: faster, training stays NCHW and bitwise reproducible)
        unless ``eval_channels_last`` is off. Yields whether inputs go channels_last."""
        if self.channels_last or self.device.type != "cpu":
            return nullcontext(self.channels_last)
        return channels_last_pass(models, self.eval_channels_last)

    def eval_inputs(self, pre: ModelPreprocess, raw: Tensor, channels_last: bool) -> Tensor:
        return pass_input(pre(raw), channels_last)

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
    with rt.eval_layout([model]) as cl:
        for raw, _, _ in raw_loader(split, batch_size):
            with rt.autocast():
                x = rt.eval_inputs(pre, rt.to_device(raw), cl)
                out.append(rt.logits(model, x).argmax(-1).cpu())  # only [B] indices leave the device
    return torch.cat(out).numpy().astype(np.int64)


def forward_parts(model: nn.Module, x: Tensor, *, features: bool = False,
                  grid: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Logits, and from the same pass the pre-logits (penultimate) features when ``features`` and the last
    feature map as an NCHW grid in the model's declared format (:func:`feature_maps.forward_map`) when
    ``grid``."""
    if not (features or grid):
        return model(x), None, None
    if grid:
        f, g = forward_map(model, x)
    else:
        f, g = model.forward_features(x), None
    return model.forward_head(f), model.forward_head(f, pre_logits=True) if features else None, g


def forward_levels(model: nn.Module, x: Tensor, k: int, *, features: bool = False
                   ) -> tuple[Tensor, Tensor | None, Tensor, list[Tensor]]:
    """Logits, pre-logits (``features``), the last map as a grid and the maps of the last ``k`` stages /
    blocks, shallow to deep, as NCHW grids, from one pass of timm's ``forward_intermediates``
    (:func:`feature_maps.level_maps`). A model without intermediates (or fewer than ``k`` levels) repeats
    its last map, so every group still gets a hint."""
    levels: list[Tensor] = []
    try:
        final, last, levels = level_maps(model, x, k) if k > 0 else (*forward_map(model, x), [])
    except MapsUnreadable:
        final, last = forward_map(model, x)
    levels = levels[-k:] if k > 0 else []
    levels = [last] * (k - len(levels)) + levels if len(levels) < k else levels
    logits = model.forward_head(final)
    return logits, (model.forward_head(final, pre_logits=True) if features else None), last, levels


@torch.no_grad()
def teacher_forwards(teachers: Sequence[TeacherModel], x_for, rt: Runtime, *, features: bool, maps: bool
                     ) -> tuple[Tensor, Tensor | None, list[Tensor] | None]:
    """The shared teacher forwards of one batch: stacked fp32 logits [K, B, C], the first teacher's
    pre-logits features (``features``) and every teacher's last map as a grid (``maps``)."""
    t_logits, t_feat, t_maps = [], None, None
    with rt.autocast():
        for i, t in enumerate(teachers):
            logits, feat, grid = forward_parts(t.module, x_for(t.pre), features=features and i == 0, grid=maps)
            if grid is not None:
                t_maps = (t_maps or []) + [grid.float()]
            t_logits.append(logits.float())
            if feat is not None:
                t_feat = feat.float()
    return torch.stack(t_logits), t_feat, t_maps


def _forward(model: nn.Module, x: Tensor, features: bool) -> tuple[Tensor, Tensor | None]:
    """Logits, and with ``features`` the pre-logits (penultimate) features via timm's forward_head."""
    logits, feat, _ = forward_parts(model, x, features=features)
    return logits, feat


def as_grid(f: Tensor, model: nn.Module, x: Tensor) -> Tensor:
    """``model``'s ``forward_features`` output ``f`` on input ``x`` as its last map, NCHW, read in the format
    the model declares (:mod:`zoo_study.transfer.feature_maps`). A model whose features hold no grid (PiT's
    class tokens) has its map from ``forward_intermediates`` on ``x`` instead."""
    maps = model_maps(model, x)
    return maps.fmt.grid(f) if maps.fmt is not None else forward_map(model, x)[1]


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
    names = ("torch", "shuffle", "augment", "objective", "mixup")  # a prefix-stable stream: new names append
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
