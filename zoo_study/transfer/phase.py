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
is saved and restored around each member's work, so interleaving members changes nothing. A member
whose loss becomes NaN / inf is dropped from the pack with its :class:`TransferDiverged`; the others
finish.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from zoo_study.data.augment import TransferAugment
from zoo_study.data.base import ImageSplit, raw_loader
from zoo_study.data.cache import augment_batch
from zoo_study.data.preprocess import ModelPreprocess
from zoo_study.methods.registry import ObjectiveInputs, SetupContext
from zoo_study.transfer.config import PACK_SHARED as _SHARED, TransferConfig, pack_key
from zoo_study.transfer.mixup import draw_mix_plan
from zoo_study.transfer.loop import (
    EpochEval,
    PhaseResult,
    Progress,
    RouteStats,
    Runtime,
    TeacherModel,
    TransferDiverged,
    _state_cpu,
    as_grid,
    forward_levels,
    forward_parts,
    phase_seeds,
    set_student_mode,
)

__all__ = ["StudentSide", "run_phase", "run_phase_pack", "pack_key"]

class _RngState:
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


@dataclass(eq=False)
class StudentSide:
    """One student of a pack: the model its copies start from, its frozen anchor, its preprocessing and
    its predictions at the start. Members with the same side share the anchor forward and one eval pass;
    a pack may hold several sides (students of one teacher), each with its own."""

    start: nn.Module
    anchor: nn.Module
    pre: ModelPreprocess
    start_pred: np.ndarray


@dataclass
class _Member:
    config: TransferConfig
    side: StudentSide
    model: nn.Module
    state: Any
    opt: torch.optim.Optimizer
    obj_gen: torch.Generator
    rng: _RngState
    routes: RouteStats | None
    lr: float
    evals: list[EpochEval]
    best_epoch: int = 0
    best_correct: int = -1
    best_state: dict | None = None
    failed: BaseException | None = None
    loss_sum: float = 0.0
    step_seconds: float = 0.0  # wall time of this member's own steps (forward, objective, backward, update)
    batches: int = 0
    log_sums: dict[str, Tensor] = field(default_factory=dict)
    epoch_routes: RouteStats | None = None
    share: float | None = None  # the epoch's teacher share (routing methods)

    @property
    def obj(self):
        return self.config.method_spec

    def kept(self) -> nn.Module:
        return self.state.kept_model(self.model) if self.state is not None else self.model


def _setup(config: TransferConfig, side: StudentSide, *, teachers: Sequence[TeacherModel], train: ImageSplit,
           rt: Runtime, seeds: dict[str, int], batch: int, phase: int, phase_teacher: str | None) -> _Member:
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
                                        level_shapes=level_shapes, sample_inputs=sample_inputs))
    trainable = list(model.parameters()) + (list(state.parameters()) if state is not None else [])
    lr = config.lr_for_batch(batch)
    opt = torch.optim.SGD(trainable, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return _Member(config=config, side=side, model=model, state=state, opt=opt,
                   obj_gen=torch.Generator().manual_seed(seeds["objective"]), rng=_RngState(rt.device),
                   routes=RouteStats() if obj.routes else None, lr=lr,
                   evals=[EpochEval(phase, phase_teacher, 0, side.start_pred)])


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
    or the exception that ended it (a diverged loss). The configs must agree on :func:`pack_key`.
    """
    if not configs:
        raise ValueError("a pack needs at least one transfer config")
    if sides is None:
        if start is None or anchor is None or student_pre is None or start_pred is None:
            raise ValueError("a phase needs start, anchor, student_pre and start_pred, or one StudentSide per config")
        one = StudentSide(start, anchor, student_pre, start_pred)
        sides = [one] * len(configs)
    if len(sides) != len(configs):
        raise ValueError(f"a pack needs one student side per config, got {len(sides)} for {len(configs)} configs")
    keys = {pack_key(c) for c in configs}
    if len(keys) > 1:
        raise ValueError(f"configs of one pack must share {', '.join(_SHARED)} and mode; got {sorted(keys)}")
    first = configs[0]
    if not teachers:
        raise ValueError("a transfer phase needs at least one teacher")
    for c in configs:
        if len(teachers) > 1 and not c.method_spec.multi_teacher:
            raise ValueError(f"method {c.method!r} takes one teacher per phase, got {len(teachers)}")
    n = len(train)
    if n == 0:
        raise ValueError("the transfer set is empty; raise transfer_fraction")
    batch = min(first.batch_size, n)
    drop_last = n > batch  # full batches only (BatchNorm cannot train on a batch of one)
    seeds = phase_seeds(first.seed, seed_phase)
    distinct_sides = list({id(sd): sd for sd in sides}.values())
    for sd in distinct_sides:
        sd.anchor.eval()
    for t in teachers:
        t.module.eval()
    members = [_setup(c, sd, teachers=teachers, train=train, rt=rt, seeds=seeds, batch=batch, phase=phase,
                      phase_teacher=phase_teacher) for c, sd in zip(configs, sides)]
    need_features = any(m.obj.needs_features for m in members)
    need_maps = any(m.obj.needs_maps for m in members)
    frozen_sides = list({id(m.side): m.side for m in members if m.obj.needs_frozen}.values())
    need_index = any(m.obj.needs_index for m in members)

    # per-sample positions in the transfer set (CRD memory bank rows)
    order = np.argsort(train.sample_ids, kind="stable")
    sorted_ids = train.sample_ids[order]

    def positions(sample_ids: Tensor) -> Tensor:
        return torch.from_numpy(order[np.searchsorted(sorted_ids, sample_ids.numpy())])

    loader = raw_loader(train, batch, shuffle=True, seed=seeds["shuffle"], drop_last=drop_last)
    augment = {"paper": TransferAugment(), "flip": TransferAugment(color_p=0.0, gray_p=0.0), "none": None}[first.augment]
    aug_gen = torch.Generator().manual_seed(seeds["augment"])
    mix_rng = np.random.default_rng(seeds["mixup"])  # its own stream: the other draws are unchanged by mixing
    labels_eval = eval_split.labels
    step = 0
    for epoch in range(1, first.epochs + 1):
        active = [m for m in members if m.failed is None]
        if not active:
            break
        for m in active:
            m.rng.restore()
            set_student_mode(m.model, m.config.student_mode)
            if m.state is not None:
                m.state.train()
            m.rng.save()
            m.loss_sum, m.batches, m.log_sums = 0.0, 0, {}
            m.epoch_routes = RouteStats() if m.routes is not None else None
        for raw, labels, sample_ids in loader:
            step += 1
            active = [m for m in members if m.failed is None]
            if not active:
                break
            raw = augment_batch(augment, raw.to(rt.device), aug_gen)  # cached Views: same draws per geometry
            labels = labels.to(rt.device)
            plan = draw_mix_plan(first.mixup, first.mixup_share, first.mixup_alpha, len(labels), mix_rng)
            cache: dict[ModelPreprocess, Tensor] = {}

            def x_for(pre: ModelPreprocess) -> Tensor:
                if pre not in cache:  # mixing the preprocessed input = preprocessing the mixed picture
                    x = rt.inputs(pre, raw)
                    cache[pre] = plan.images(x) if plan is not None else x
                return cache[pre]

            with torch.no_grad(), rt.autocast():  # shared: the teachers' and the anchor's forwards
                t_logits, t_feat, t_maps = [], None, None
                for i, t in enumerate(teachers):
                    logits, feat, grid = forward_parts(t.module, x_for(t.pre), features=need_features and i == 0,
                                                       grid=need_maps)
                    if grid is not None:
                        t_maps = (t_maps or []) + [grid.float()]
                    t_logits.append(logits.float())
                    if feat is not None:
                        t_feat = feat.float()
                teacher_logits = torch.stack(t_logits)
                frozen = {id(sd): sd.anchor(x_for(sd.pre)).float() for sd in frozen_sides}  # per student
            index = positions(sample_ids).to(rt.device) if need_index else None
            soft = None
            if plan is not None:  # CE terms see the mixed labels, routing the larger component's label
                soft = plan.soft_targets(labels, teacher_logits.shape[-1])
                labels = plan.hard_labels(labels)
            t_inputs = [x_for(t.pre) for t in teachers]  # cached: what the teachers saw
            for m in active:
                t0 = time.perf_counter()
                _member_step(m, rt, x_for(m.side.pre), teacher_logits, t_feat, frozen.get(id(m.side)), labels, index,
                             phase=phase, epoch=epoch, step=step, phase_teacher=phase_teacher, soft_targets=soft,
                             teacher_maps=t_maps, teacher_inputs=t_inputs)
                m.step_seconds += time.perf_counter() - t0
        evaluate = epoch == first.epochs or epoch % first.eval_every == 0
        active = [m for m in members if m.failed is None]
        for m in active:
            m.share = None
            if m.epoch_routes is not None:
                m.epoch_routes.flush()
                m.share = m.epoch_routes.shares()["teacher_share"]
                m.routes.merge(m.epoch_routes)
        if not evaluate or not active:
            continue  # evaluated every eval_every epochs and always after the last
        preds: dict[int, np.ndarray] = {}
        for sd in {id(m.side): m.side for m in active}.values():  # one pass per student over the eval split
            group = [m for m in active if m.side is sd]
            for m, pred in zip(group, _predict_many([m.kept() for m in group], eval_split, sd.pre,
                                                    first.eval_batch_size, rt)):
                preds[id(m)] = pred
        for m in active:
            pred = preds[id(m)]
            train_loss = m.loss_sum / m.batches if m.batches else None
            logs = {k: float(v) / m.batches for k, v in m.log_sums.items()}
            m.evals.append(EpochEval(phase, phase_teacher, epoch, pred, train_loss, m.share, logs))
            correct = int(np.count_nonzero(pred == labels_eval))
            if correct > m.best_correct:
                m.best_epoch, m.best_correct = epoch, correct
                m.best_state = _state_cpu(m.kept()) if m.config.keep_best else None
            if progress is not None:
                progress(f"phase {phase}{f' ({phase_teacher})' if phase_teacher else ''} {m.config.method} epoch "
                         f"{epoch}/{first.epochs}: loss {train_loss if train_loss is not None else float('nan'):.4f} "
                         f"acc {correct / len(labels_eval):.4f}")
    out: list[PhaseResult | BaseException] = []
    for m in members:
        if m.state is not None:
            m.state.close()  # hooks off the models before they are kept or dropped
        if m.failed is not None:
            out.append(m.failed)
            continue
        kept = m.kept()
        kept.eval()
        extra = {**(m.state.extra() if m.state is not None else {}), "step_seconds": m.step_seconds}
        out.append(PhaseResult(kept, m.evals, m.best_epoch, m.best_correct, m.best_state, m.routes, m.lr, batch, step,
                               extra))
    return out


def _member_step(m: _Member, rt: Runtime, x: Tensor, teacher_logits: Tensor, t_feat: Tensor | None,
                 frozen: Tensor | None, labels: Tensor, index: Tensor | None, *, phase: int, epoch: int, step: int,
                 phase_teacher: str | None, soft_targets: Tensor | None = None,
                 teacher_maps: list[Tensor] | None = None, teacher_inputs: list[Tensor] | None = None) -> None:
    """One optimiser step of one member on the shared batch, under the member's own RNG."""
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
    loss_value = float(out.loss.detach())
    if not math.isfinite(loss_value):
        m.failed = TransferDiverged(loss_value, phase=phase, epoch=epoch, step=step, method=obj.name,
                                    teacher=phase_teacher)
        m.rng.save()
        return
    m.opt.zero_grad(set_to_none=True)
    out.loss.backward()
    m.opt.step()
    if m.state is not None:
        m.state.after_step(m.model)
    m.loss_sum += loss_value
    m.batches += 1
    for key, value in out.logs.items():  # device tensors: summed without a sync per step
        m.log_sums[key] = m.log_sums[key] + value if key in m.log_sums else value
    if m.epoch_routes is not None and out.route is not None:
        m.epoch_routes.add(out.route, frozen, teacher_logits, labels)
    m.rng.save()


@torch.inference_mode()
def _predict_many(models: Sequence[nn.Module], split: ImageSplit, pre: ModelPreprocess, batch_size: int,
                  rt: Runtime) -> list[np.ndarray]:
    """Top-1 predictions of several students with one preprocessing, in one pass over the split."""
    for model in models:
        model.eval()
    outs: list[list[Tensor]] = [[] for _ in models]
    with rt.eval_layout(models) as cl:
        for raw, _, _ in raw_loader(split, batch_size):
            with rt.autocast():
                x = rt.eval_inputs(pre, raw.to(rt.device), cl)  # preprocessed once for every student
                for model, out in zip(models, outs):
                    out.append(model(x).argmax(-1).cpu())
    return [torch.cat(o).numpy().astype(np.int64) for o in outs]


def run_phase(*, config: TransferConfig, **kwargs: Any) -> PhaseResult:
    """One phase of one transfer (a pack of one); raises :class:`TransferDiverged` on a NaN / inf loss."""
    result = run_phase_pack(configs=[config], **kwargs)[0]
    if isinstance(result, BaseException):
        raise result
    return result
