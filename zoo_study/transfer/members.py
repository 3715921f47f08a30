"""One member of a transfer pack: its state, and how its failure stays its own.

A member is one student copy training with one config inside :func:`~zoo_study.transfer.phase.run_phase_pack`.
Everything it does runs through :func:`attempt`: an exception fails that member only (:func:`fail`: the
exception is its result, its hooks are removed, its model, optimiser and state released, its traceback
kept without the frames' tensors), while a pack-wide failure (out of device memory) propagates. Its loss
finiteness is tracked on the device (:meth:`Member.track`) and read for all members at once
(:func:`check_finite`) every ``FINITE_CHECK_EVERY`` steps and at each epoch's end. The eval pass of a pack
(:func:`evaluate_members`: one pass per student over the split) keeps a member's failure there its own too.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from zoo_study.data.base import ImageSplit, raw_loader
from zoo_study.data.preprocess import ModelPreprocess
from zoo_study.transfer.config import TransferConfig
from zoo_study.transfer.loop import (
    EpochEval,
    PhaseResult,
    Progress,
    RouteStats,
    Runtime,
    TransferDiverged,
    _state_cpu,
    set_student_mode,
)

__all__ = ["FINITE_CHECK_EVERY", "PACK_WIDE", "Member", "RngState", "active", "attempt", "check_finite", "end_epoch_routes",
           "evaluate_members", "fail", "first_bad", "member_result", "record_eval", "released", "start_epoch"]

LOG = logging.getLogger("zoo_study.transfer")
FINITE_CHECK_EVERY = 50  # steps between host reads of the members' device-side finiteness flags
# failures that belong to the pack, not to one member: they end the pack (a caller may split it and retry)
PACK_WIDE: tuple[type[BaseException], ...] = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


class RngState:
    """The global torch RNG of one member (CPU, and CUDA when the phase runs there)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.save()

    def save(self) -> None:
        self.cpu = torch.get_rng_state()
        self.gpu = torch.cuda.get_rng_state() if self.cuda else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state(self.gpu)


@dataclass
class Member:
    """One student copy of a pack: its config, model, optimiser, method state, RNG and epoch sums."""

    config: TransferConfig
    side: Any  # the phase's StudentSide (its anchor, preprocessing and start predictions)
    model: nn.Module
    state: Any
    opt: torch.optim.Optimizer
    obj_gen: torch.Generator
    rng: RngState
    routes: RouteStats | None
    lr: float
    evals: list[EpochEval]
    best_epoch: int = 0
    best_correct: int = -1
    best_state: dict | None = None
    scaler: Any = None  # torch.amp.GradScaler under fp16 autocast
    sched: Any = None  # the lr schedule stepped after every optimiser step (None: constant lr)
    failed: BaseException | None = None
    loss_sum: Tensor | float = 0.0  # float64 on the device: the same sum as Python floats, without a sync
    bad_step: Tensor | None = None  # first step with a non-finite loss (-1: none yet), on the device
    bad_loss: Tensor | None = None  # that step's loss
    step_seconds: float = 0.0  # host time of its own steps (forward, objective, backward, update); on CUDA
    # the time to queue them (steps no longer wait for the device), so compare it on CPU
    batches: int = 0
    log_sums: dict[str, Tensor] = field(default_factory=dict)
    epoch_routes: RouteStats | None = None
    share: float | None = None  # the epoch's teacher share (routing methods)
    slot: int = 0  # the member's position in the pack's configs

    @property
    def obj(self):
        return self.config.method_spec

    def kept(self) -> nn.Module:
        return self.state.kept_model(self.model) if self.state is not None else self.model

    def track(self, loss: Tensor, step: int) -> None:
        """Remember the first non-finite loss on the device (no host read here)."""
        if self.bad_step is None:
            self.bad_step = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self.bad_loss = torch.zeros((), dtype=torch.float64, device=loss.device)
        first = ~torch.isfinite(loss) & (self.bad_step < 0)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_loss = torch.where(first, loss.double(), self.bad_loss)


def active(members: Sequence[Member]) -> list[Member]:
    """The members still training (not failed)."""
    return [m for m in members if m.failed is None]


def released(exc: BaseException) -> BaseException:
    """The exception, its traceback kept for the failure record but the frames' locals (the member's
    activations and graph) cleared, so a failed member holds no device memory."""
    traceback.clear_frames(exc.__traceback__)
    return exc


def fail(m: Member, exc: BaseException, *, phase: int, epoch: int, phase_teacher: str | None) -> None:
    """Drop ``m`` from the pack with ``exc`` (or with :class:`TransferDiverged` when its loss had already
    become non-finite: the root cause, not its consequence); remove its hooks and release its tensors."""
    bad = first_bad(m)
    if bad is not None:
        exc = TransferDiverged(bad[1], phase=phase, epoch=epoch, step=bad[0], method=m.obj.name,
                               teacher=phase_teacher)
    m.failed = released(exc)
    LOG.warning("transfer member %s failed at phase %d, epoch %d (the pack's other members go on): %s",
                m.config.method, phase, epoch, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if m.state is not None:
        try:
            m.state.close()
        except Exception:  # noqa: BLE001 - the first failure is the one recorded
            pass
    m.model = m.opt = m.state = m.best_state = m.scaler = None  # type: ignore[assignment]


def attempt(m: Member, fn: Callable[..., Any], *args: Any, where: dict[str, Any], **kwargs: Any) -> bool:
    """``fn(*args, **kwargs)`` as one member's work: an exception fails that member only (:func:`fail`);
    a pack-wide one (out of device memory) propagates."""
    try:
        fn(*args, **kwargs)
        return True
    except PACK_WIDE:
        raise
    except Exception as exc:  # noqa: BLE001 - one member's failure is that member's result
        fail(m, exc, **where)
        return False


def first_bad(m: Member) -> tuple[int, float] | None:
    """(step, loss) of ``m``'s first non-finite loss, or None (one host read)."""
    if m.bad_step is None:
        return None
    step, loss = torch.stack([m.bad_step.double(), m.bad_loss]).tolist()
    return (int(step), loss) if step >= 0 else None


def check_finite(live: Sequence[Member], *, phase: int, epoch: int, phase_teacher: str | None) -> None:
    """Fail the members whose loss became NaN / inf, reading all their device flags in one host copy."""
    tracked = [m for m in live if m.bad_step is not None]
    if not tracked:
        return
    flags = torch.stack([torch.stack([m.bad_step.double(), m.bad_loss]) for m in tracked]).tolist()
    for m, (step, loss) in zip(tracked, flags):
        if step >= 0:
            fail(m, TransferDiverged(loss, phase=phase, epoch=epoch, step=int(step), method=m.obj.name,
                                     teacher=phase_teacher), phase=phase, epoch=epoch, phase_teacher=phase_teacher)


def start_epoch(m: Member) -> None:
    """The member's modes and per-epoch sums at the start of an epoch, under its own RNG."""
    m.rng.restore()
    set_student_mode(m.model, m.config.student_mode)
    if m.state is not None:
        m.state.train()
    m.rng.save()
    m.loss_sum, m.batches, m.log_sums = 0.0, 0, {}
    m.epoch_routes = RouteStats() if m.routes is not None else None


def end_epoch_routes(m: Member) -> None:
    """Flush the epoch's routing counts (one read per epoch) into the member's totals and epoch share."""
    m.share = None
    if m.epoch_routes is not None:
        m.epoch_routes.flush()
        m.share = m.epoch_routes.shares()["teacher_share"]
        m.routes.merge(m.epoch_routes)


def record_eval(m: Member, pred: np.ndarray, labels_eval: np.ndarray, *, epoch: int, epochs: int, phase: int,
                phase_teacher: str | None, progress: Progress | None) -> None:
    """The member's epoch row (train loss and logs read from the device here, once per evaluation)."""
    train_loss = float(m.loss_sum) / m.batches if m.batches else None
    logs = {k: float(v) / m.batches for k, v in m.log_sums.items()}
    m.evals.append(EpochEval(phase, phase_teacher, epoch, pred, train_loss, m.share, logs))
    correct = int(np.count_nonzero(pred == labels_eval))
    if correct > m.best_correct:
        m.best_epoch, m.best_correct = epoch, correct
        m.best_state = _state_cpu(m.kept()) if m.config.keep_best else None
    if progress is not None:
        progress(f"phase {phase}{f' ({phase_teacher})' if phase_teacher else ''} {m.config.method} epoch "
                 f"{epoch}/{epochs}: loss {train_loss if train_loss is not None else float('nan'):.4f} "
                 f"acc {correct / len(labels_eval):.4f}")


def member_result(m: Member, batch: int, steps: int, where: dict[str, Any]) -> PhaseResult | BaseException:
    """The member's :class:`PhaseResult` (hooks off its models first), or the exception that ended it."""
    out: list[PhaseResult] = []

    def finish() -> None:
        if m.state is not None:
            m.state.close()  # hooks off the models before they are kept or dropped
        kept = m.kept()
        kept.eval()
        extra = {**(m.state.extra() if m.state is not None else {}), "step_seconds": m.step_seconds}
        out.append(PhaseResult(kept, m.evals, m.best_epoch, m.best_correct, m.best_state, m.routes, m.lr, batch,
                               steps, extra))

    return out[0] if attempt(m, finish, where=where) else m.failed


def evaluate_members(live: Sequence[Member], eval_split: ImageSplit, eval_batch: int, rt: Runtime,
                     labels_eval: np.ndarray, *, epoch: int, epochs: int, phase: int, phase_teacher: str | None,
                     progress: Progress | None) -> None:
    """One eval pass per student side over the split; each member's row, best epoch and best state. A
    member whose kept model fails in the pass (or in its bookkeeping) fails alone."""
    where = dict(phase=phase, epoch=epoch, phase_teacher=phase_teacher)
    for sd in {id(m.side): m.side for m in live}.values():  # one pass per student over the eval split
        group = [m for m in live if m.side is sd and attempt(m, m.kept, where=where)]
        preds = _predict_many([m.kept() for m in group], eval_split, sd.pre, eval_batch, rt)
        for m, pred in zip(group, preds):
            if isinstance(pred, BaseException):
                fail(m, pred, **where)
            else:
                attempt(m, record_eval, m, pred, labels_eval, epoch=epoch, epochs=epochs, phase=phase,
                        phase_teacher=phase_teacher, progress=progress, where=where)


@torch.inference_mode()
def _predict_many(models: Sequence[nn.Module], split: ImageSplit, pre: ModelPreprocess, batch_size: int,
                  rt: Runtime) -> list[np.ndarray | BaseException]:
    """Top-1 predictions of several students with one preprocessing, in one pass over the split; a model
    that raises gets its exception instead and leaves the pass (the others' predictions are unchanged)."""
    for model in models:
        model.eval()
    outs: list[list[Tensor]] = [[] for _ in models]
    failed: dict[int, BaseException] = {}
    with rt.eval_layout(models) as cl:
        for raw, _, _ in raw_loader(split, batch_size):
            with rt.autocast():
                x = rt.eval_inputs(pre, rt.to_device(raw), cl)  # preprocessed once for every student
                for i, (model, out) in enumerate(zip(models, outs)):
                    if i in failed:
                        continue
                    try:
                        out.append(rt.logits(model, x).argmax(-1).cpu())  # only [B] indices leave the device
                    except PACK_WIDE:
                        raise
                    except Exception as exc:  # noqa: BLE001 - that student's failure only
                        failed[i] = released(exc)
    return [failed[i] if i in failed else torch.cat(o).numpy().astype(np.int64) for i, o in enumerate(outs)]
