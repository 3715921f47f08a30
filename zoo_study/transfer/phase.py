"""One training phase of a transfer, for one student copy or for a *pack* of them sharing every input.

A phase trains a copy of the student against a frozen anchor and K teachers for ``epochs`` epochs and
evaluates it (see :mod:`zoo_study.transfer.loop` for the guarantees). A pack is several phases of the
same (teachers, student) pair that differ only in method and hyper-parameters: the transfers of one
pair in a study. They see the very same batches (same seed, transfer set, batch size, augmentation), so
the work they share is done once per batch: drawing and augmenting the batch, each model's
preprocessing, the teacher forward (with penultimate features when any member needs them) and the
frozen-anchor forward; evaluation of all members runs in one pass over the eval split.

Exactness: a packed member gives bit-identical results on CPU to the same phase run alone. Its random
streams are its own: shuffling and augmentation come from seeded generators shared by construction
(equal seeds), the objective's generator is per member, and the global torch RNG (module init, dropout)
is saved and restored around each member's work, so interleaving members changes nothing.

A member's failure is its own: an exception in its setup, its step, its epoch bookkeeping or its part of
the eval pass drops that member from the pack with the exception as its result (its hooks removed, its
model and optimiser released); the others go on and finish exactly as in a pack without it. A loss that
becomes NaN / inf ends its member with :class:`TransferDiverged` naming the first such step: finiteness
is tracked on the device and read every ``FINITE_CHECK_EVERY`` steps and at each epoch's end, so a step
never waits for the host. Failures of the shared work (data, teacher or anchor forwards) and running out
of device memory (``torch.OutOfMemoryError``: the pack's size, not a member's fault) end the whole pack.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from zoo_study.data.augment import TransferAugment
from zoo_study.data.base import ImageSplit, raw_loader
from zoo_study.data.cache import augment_batch
from zoo_study.data.preprocess import ModelPreprocess
from zoo_study.methods.registry import ObjectiveInputs, SetupContext
from zoo_study.transfer.config import TransferConfig, check_pack
from zoo_study.transfer.mixup import draw_mix_plan
from zoo_study.transfer.loop import (
    EpochEval,
    PhaseResult,
    Progress,
    RouteStats,
    Runtime,
    TeacherModel,
    as_grid,
    forward_levels,
    forward_parts,
    phase_seeds,
    teacher_forwards,
)
from zoo_study.transfer.members import (
    FINITE_CHECK_EVERY,
    PACK_WIDE,
    Member,
    RngState,
    active,
    attempt,
    check_finite,
    end_epoch_routes,
    evaluate_members,
    member_result,
    released,
    start_epoch,
)

__all__ = ["StudentSide", "run_phase", "run_phase_pack", "FINITE_CHECK_EVERY"]

@dataclass(eq=False)
class StudentSide:
    """One student of a pack: the model its copies start from, its frozen anchor, its preprocessing and
    its predictions at the start. Members with the same side share the anchor forward and one eval pass;
    a pack may hold several sides (students of one teacher), each with its own."""

    start: nn.Module
    anchor: nn.Module
    pre: ModelPreprocess
    start_pred: np.ndarray


def _setup(config: TransferConfig, side: StudentSide, *, teachers: Sequence[TeacherModel], train: ImageSplit,
           rt: Runtime, seeds: dict[str, int], batch: int, phase: int, phase_teacher: str | None) -> Member:
    start, student_pre = side.start, side.pre
    obj = config.method_spec
    torch.manual_seed(seeds["torch"])
    model = rt.prepare(copy.deepcopy(start))
    for p in model.parameters():
        p.requires_grad_(True)

    def sample_inputs() -> tuple[Tensor, list[Tensor]]:
        # two copies of one training image, preprocessed for the student and for each teacher
        raw0 = train[0][0].unsqueeze(0).expand(2, -1, -1, -1).to(rt.device)
        return rt.inputs(student_pre, raw0), [rt.inputs(t.pre, raw0) for t in teachers]

    @functools.cache
    def probe() -> list[tuple[tuple[int, ...], tuple[int, ...], int]]:
        # per model (student, then each teacher): shapes of forward_features, of its grid, and the
        # pre-logits size, from one pass over the sample inputs in eval mode (no state changes);
        # run only when a method's setup asks
        x_s, x_ts = sample_inputs()
        out = []
        with torch.no_grad(), rt.autocast():
            model.eval()
            for module, x in [(model, x_s)] + [(t.module, x_t) for t, x_t in zip(teachers, x_ts)]:
                f = module.forward_features(x)
                pre_logits = module.forward_head(f, pre_logits=True)
                out.append((tuple(f.shape[1:]), tuple(as_grid(f, module, x).shape[1:]), pre_logits.flatten(1).shape[1]))
        return out

    def feature_dims() -> tuple[int, int]:
        return probe()[0][2], probe()[1][2]

    def map_shapes():
        return probe()[0][1], [p[1] for p in probe()[1:]]

    def native_shapes():
        return probe()[0][0], [p[0] for p in probe()[1:]]

    def level_shapes() -> list[tuple[int, int, int]]:
        with torch.no_grad(), rt.autocast():
            model.eval()
            _, _, _, levels = forward_levels(model, sample_inputs()[0], len(teachers))
        return [tuple(g.shape[1:]) for g in levels]

    params = config.resolved_hparams
    state = obj.make_state(SetupContext(model=model, params=params, n_data=len(train), device=rt.device,
                                        feature_dims=feature_dims, labels=train.labels, map_shapes=map_shapes,
                                        native_shapes=native_shapes, teachers=[t.module for t in teachers],
                                        level_shapes=level_shapes, sample_inputs=sample_inputs,
                                        total_steps=config.epochs * _steps_per_epoch(len(train), batch),
                                        protocol=config.protocol))
    trainable = list(model.parameters()) + (list(state.parameters()) if state is not None else [])
    lr = config.lr_for_batch(batch)
    opt = torch.optim.SGD(trainable, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    sched = lr_schedule(opt, config.lr_schedule, config.epochs * _steps_per_epoch(len(train), batch))
    # the objective's draws (CRD negatives, Talking Models' noise) happen on the device they are used on
    obj_gen = torch.Generator(device=rt.device).manual_seed(seeds["objective"])
    return Member(config=config, side=side, model=model, state=state, opt=opt, obj_gen=obj_gen,
                   rng=RngState(rt.device), routes=RouteStats() if obj.routes else None, lr=lr,
                   evals=[EpochEval(phase, phase_teacher, 0, side.start_pred)], scaler=rt.scaler(), sched=sched)


def lr_schedule(opt: torch.optim.Optimizer, kind: str, total_steps: int) -> Any:
    """The per-step lr schedule of one phase, or None for a constant lr. ``one_cycle`` is the zoo
    recipes' schedule (zoo_study/zoo/train.py: peak = the configured lr after 15% of the steps, then
    cosine annealing), without momentum cycling, so SGD's momentum stays the configured one."""
    if kind == "constant":
        return None
    if kind == "one_cycle":
        peak = opt.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=max(total_steps, 2),
                                                   pct_start=0.15, cycle_momentum=False)
    raise ValueError(f"lr_schedule={kind!r}; valid: constant, one_cycle")


def _steps_per_epoch(n: int, batch: int) -> int:
    """Optimiser steps per epoch: full batches only, or the one batch when the set fits in it."""
    return n // batch if n > batch else 1


def _check_pack(configs: Sequence[TransferConfig], sides: Sequence[StudentSide] | None, start, anchor, student_pre,
                start_pred, teachers: Sequence[TeacherModel], train: ImageSplit) -> Sequence[StudentSide]:
    """One :class:`StudentSide` per config (built from ``start`` ... when ``sides`` is None), configs that
    can share batches (:func:`~zoo_study.transfer.config.check_pack`), teachers each method can take, and
    a non-empty transfer set; a clear error otherwise."""
    if not configs:
        raise ValueError("a pack needs at least one transfer config")
    if sides is None:
        if start is None or anchor is None or student_pre is None or start_pred is None:
            raise ValueError("a phase needs start, anchor, student_pre and start_pred, or one StudentSide per config")
        sides = [StudentSide(start, anchor, student_pre, start_pred)] * len(configs)
    if len(sides) != len(configs):
        raise ValueError(f"a pack needs one student side per config, got {len(sides)} for {len(configs)} configs")
    check_pack(configs)
    if not teachers:
        raise ValueError("a transfer phase needs at least one teacher")
    for c in configs:
        if len(teachers) > 1 and not c.method_spec.multi_teacher:
            raise ValueError(f"method {c.method!r} takes one teacher per phase, got {len(teachers)}")
    if len(train) == 0:
        raise ValueError("the transfer set is empty; raise transfer_fraction")
    return sides


def _setup_or_fail(config: TransferConfig, side: StudentSide, **kwargs: Any) -> Member | BaseException:
    """A member, or the exception its setup raised (that member's failure: the others still run)."""
    try:
        return _setup(config, side, **kwargs)
    except PACK_WIDE:
        raise
    except Exception as exc:  # noqa: BLE001 - this member's result
        return released(exc)


def run_phase_pack(
    *,
    teachers: Sequence[TeacherModel],
    train: ImageSplit,
    eval_split: ImageSplit,
    configs: Sequence[TransferConfig],
    rt: Runtime,
    phase: int,
    seed_phase: int,
    start: nn.Module | None = None,
    anchor: nn.Module | None = None,
    student_pre: ModelPreprocess | None = None,
    start_pred: np.ndarray | None = None,
    sides: Sequence[StudentSide] | None = None,
    phase_teacher: str | None = None,
    progress: Progress | None = None,
) -> list[PhaseResult | BaseException]:
    """Train one copy of a student per config, sharing every input (see the module docstring).

    One student for all configs (``start``, ``anchor``, ``student_pre``, ``start_pred``), or ``sides``:
    one :class:`StudentSide` per config (several students of the same teachers; configs with the same
    side object share its anchor forward and eval pass). Returns, per config, its :class:`PhaseResult`
    or the exception that ended it (in its setup, a step, its evaluation, or a diverged loss). The
    configs must agree on :func:`~zoo_study.transfer.config.pack_key`.
    """
    sides = _check_pack(configs, sides, start, anchor, student_pre, start_pred, teachers, train)
    first = configs[0]
    n = len(train)
    batch = min(first.batch_size, n)
    seeds = phase_seeds(first.seed, seed_phase)
    for sd in {id(sd): sd for sd in sides}.values():
        sd.anchor.eval()
    for t in teachers:
        t.module.eval()
    results: list[PhaseResult | BaseException | None] = [None] * len(configs)
    members: list[Member] = []
    for slot, (c, sd) in enumerate(zip(configs, sides)):
        m = _setup_or_fail(c, sd, teachers=teachers, train=train, rt=rt, seeds=seeds, batch=batch, phase=phase,
                           phase_teacher=phase_teacher)
        if isinstance(m, BaseException):
            results[slot] = m
            continue
        m.slot = slot
        members.append(m)
    run = _PackRun(first, teachers, rt, members, train, seeds, phase, phase_teacher)
    # full batches only (BatchNorm cannot train on a batch of one): _steps_per_epoch
    loader = raw_loader(train, batch, shuffle=True, seed=seeds["shuffle"], drop_last=n > batch)
    for epoch in range(1, first.epochs + 1):
        if not active(members):
            break
        run.train_epoch(loader, epoch)
        if (epoch == first.epochs or epoch % first.eval_every == 0) and active(members):
            # evaluated every eval_every epochs and always after the last
            evaluate_members(active(members), eval_split, first.eval_batch_size, rt, eval_split.labels, epoch=epoch,
                      epochs=first.epochs, phase=phase, phase_teacher=phase_teacher, progress=progress)
    for m in members:
        results[m.slot] = m.failed if m.failed is not None else member_result(m, batch, run.step, run.where(first.epochs))
    return results  # type: ignore[return-value]


class _PackRun:
    """The training loop of one pack phase: what its members need of each shared batch (teacher features
    and maps, frozen-anchor logits, sample positions), drawn once per batch, and every member's step."""

    def __init__(self, first: TransferConfig, teachers: Sequence[TeacherModel], rt: Runtime, members: list[Member],
                 train: ImageSplit, seeds: dict[str, int], phase: int, phase_teacher: str | None) -> None:
        self.first, self.teachers, self.rt, self.members = first, teachers, rt, members
        self.phase, self.phase_teacher = phase, phase_teacher
        self.step = 0
        self.need_features = any(m.obj.needs_features for m in members)
        self.need_maps = any(m.obj.needs_maps for m in members)
        self.frozen_sides = list({id(m.side): m.side for m in members if m.obj.needs_frozen}.values())
        self.need_index = any(m.obj.needs_index for m in members)
        # per-sample positions in the transfer set (CRD memory bank rows)
        self.order = np.argsort(train.sample_ids, kind="stable")
        self.sorted_ids = train.sample_ids[self.order]
        self.augment = {"paper": TransferAugment(), "flip": TransferAugment(color_p=0.0, gray_p=0.0),
                        "none": None}[first.augment]
        # augmentation draws on the device of the batch (every geometry of a cached batch redraws them)
        self.aug_gen = torch.Generator(device=rt.device).manual_seed(seeds["augment"])
        self.mix_rng = np.random.default_rng(seeds["mixup"])  # its own stream: the other draws are unchanged

    def where(self, epoch: int) -> dict[str, Any]:
        return dict(phase=self.phase, epoch=epoch, phase_teacher=self.phase_teacher)

    def positions(self, sample_ids: Tensor) -> Tensor:
        return torch.from_numpy(self.order[np.searchsorted(self.sorted_ids, sample_ids.numpy())])

    def train_epoch(self, loader, epoch: int) -> None:
        """One epoch of every live member over the shared batches; a diverged member is never evaluated."""
        members, where = self.members, self.where(epoch)
        for m in active(members):
            attempt(m, start_epoch, m, where=where)
        for raw, labels, sample_ids in loader:
            self.step += 1
            live = active(members)
            if not live:
                break
            self.train_batch(live, raw, labels, sample_ids, where)
            if self.step % FINITE_CHECK_EVERY == 0:
                check_finite(active(members), **where)
        check_finite(active(members), **where)
        for m in active(members):
            attempt(m, end_epoch_routes, m, where=where)

    def train_batch(self, live: list[Member], raw, labels: Tensor, sample_ids: Tensor, where: dict[str, Any]) -> None:
        """The batch's shared work (augmentation, mixing, each preprocessing, teacher and anchor forwards)
        once, then each live member's own step on it."""
        rt, first = self.rt, self.first
        raw = augment_batch(self.augment, rt.to_device(raw), self.aug_gen)  # cached Views: same draws per geometry
        labels = rt.to_device(labels)
        plan = draw_mix_plan(first.mixup, first.mixup_share, first.mixup_alpha, len(labels), self.mix_rng)
        if plan is not None:  # its [B] mask and partners copied once, not per model input
            plan = dataclasses.replace(plan, mask=rt.to_device(plan.mask), partner=rt.to_device(plan.partner))
        cache: dict[ModelPreprocess, Tensor] = {}

        def x_for(pre: ModelPreprocess) -> Tensor:
            if pre not in cache:  # mixing the preprocessed input = preprocessing the mixed picture
                x = rt.inputs(pre, raw)
                cache[pre] = plan.images(x) if plan is not None else x
            return cache[pre]

        teacher_logits, t_feat, t_maps = teacher_forwards(self.teachers, x_for, rt, features=self.need_features,
                                                           maps=self.need_maps)
        with torch.no_grad(), rt.autocast():  # shared per student: its frozen anchor's forward
            frozen = {id(sd): sd.anchor(x_for(sd.pre)).float()
                      for sd in self.frozen_sides if any(m.side is sd for m in live)}
        index = rt.to_device(self.positions(sample_ids)) if self.need_index else None
        soft = None
        if plan is not None:  # CE terms see the mixed labels, routing the larger component's label
            soft = plan.soft_targets(labels, teacher_logits.shape[-1])
            labels = plan.hard_labels(labels)
        t_inputs = [x_for(t.pre) for t in self.teachers]  # cached: what the teachers saw
        for m in live:
            t0 = time.perf_counter()
            attempt(m, _member_step, m, rt, x_for(m.side.pre), teacher_logits, t_feat, frozen.get(id(m.side)),
                    labels, index, step=self.step, soft_targets=soft, teacher_maps=t_maps, teacher_inputs=t_inputs,
                    where=where)
            m.step_seconds += time.perf_counter() - t0


def _member_step(m: Member, rt: Runtime, x: Tensor, teacher_logits: Tensor, t_feat: Tensor | None,
                 frozen: Tensor | None, labels: Tensor, index: Tensor | None, *, step: int,
                 soft_targets: Tensor | None = None, teacher_maps: list[Tensor] | None = None,
                 teacher_inputs: list[Tensor] | None = None) -> None:
    """One optimiser step of one member on the shared batch, under the member's own RNG. Nothing here
    reads a device value on the host: the loss's finiteness and sum stay on the device."""
    obj, config = m.obj, m.config
    m.rng.restore()
    s_levels = None
    with rt.autocast():
        if obj.needs_levels:  # one forward_intermediates pass: logits, last map and the K hint levels
            s_logits, s_feat, s_map, s_levels = forward_levels(m.model, x, teacher_logits.shape[0],
                                                               features=obj.needs_features)
            s_levels = [g.float() for g in s_levels]
        else:
            s_logits, s_feat, s_map = forward_parts(m.model, x, features=obj.needs_features, grid=obj.needs_maps)
    inputs = ObjectiveInputs(
        student=s_logits.float(),
        teachers=teacher_logits,
        frozen=frozen if obj.needs_frozen else None,
        labels=labels,
        soft_targets=soft_targets,
        temperature=config.resolved_temperature,
        student_features=s_feat.float() if s_feat is not None else None,
        teacher_features=t_feat if obj.needs_features else None,
        index=index if obj.needs_index else None,
        student_map=s_map.float() if s_map is not None else None,
        teacher_maps=teacher_maps if obj.needs_maps else None,
        student_levels=s_levels,
        teacher_inputs=teacher_inputs,
        state=m.state,
        generator=m.obj_gen,
    )
    out = obj.fn(inputs, config.resolved_hparams)
    loss = out.loss.detach()
    m.track(loss, step)  # a non-finite loss ends the member at the next check (its later steps are moot)
    m.opt.zero_grad(set_to_none=True)
    if m.scaler is None:
        out.loss.backward()
        m.opt.step()
    else:  # fp16: scaled gradients; the scaler skips steps with inf gradients
        m.scaler.scale(out.loss).backward()
        m.scaler.step(m.opt)
        m.scaler.update()
    if m.sched is not None:
        m.sched.step()
    if m.state is not None:
        m.state.after_step(m.model)
    m.loss_sum = m.loss_sum + loss.double()  # float64, as the Python float sum it replaces
    m.batches += 1
    for key, value in out.logs.items():  # device tensors: summed without a sync per step
        m.log_sums[key] = m.log_sums[key] + value if key in m.log_sums else value
    if m.epoch_routes is not None and out.route is not None:
        m.epoch_routes.add(out.route, frozen, teacher_logits, labels)
    m.rng.save()


def run_phase(*, config: TransferConfig, **kwargs: Any) -> PhaseResult:
    """One phase of one transfer (a pack of one); raises :class:`TransferDiverged` on a NaN / inf loss."""
    result = run_phase_pack(configs=[config], **kwargs)[0]
    if isinstance(result, BaseException):
        raise result
    return result
