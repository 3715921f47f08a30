"""Talking Models (interactive-communication KD; METHOD.md section 6) as a per-job module.

What is trained: the student, and per model encoders (hidden state -> message in a shared space of
``msg_dim``) and decoders (message -> that model's hidden state). The teacher's weights are never
trained. What is kept: the plain student (its own forward, no teacher and no encoder/decoder at test
time).

Split point (hyper-parameter ``split``, the same depth counted from the top in both models):

- ``split = 0``: the last feature map (:func:`zoo_study.transfer.feature_maps.forward_map`: timm's
  ``forward_features`` in its declared layout, NCHW or Swin's NHWC; PiT's grid from its last stage). The
  "lower layers" are the feature extractor, the "upper layers" the head. States are exchanged as their
  spatial / token means (vectors of C channels); a decoded state is handed to the head in the form of
  ``forward_features`` (a 1x1 map in the declared layout, or every token), which the head's pooling reads
  as exactly that vector. The teacher's upper layers would only turn what it heard into logits no loss
  uses, so they are not run.
- ``split = k >= 1``: before the last k levels of each model's ``forward_intermediates`` (ResNet
  ``layer1-4``, ConvNeXt ``stages``, ViT / Mixer / XCiT ``blocks``, Swin ``layers``, Twins / CoaT stages,
  PiT ``transformers``). The split state is the output of the module that produces that level, found by a
  forward-hook probe of the modules that really run (:func:`feature_maps.split_point`), read as a grid in
  its own format (NCHW, NHWC or tokens without their prefix). Messages are per position (1x1
  convolutions) on the student's grid, resized to the teacher's grid where they differ. The teacher
  really runs its upper layers on the state it heard: a forward hook replaces its split module's output
  (tokens: patch tokens from the grid, prefix tokens set to the grid mean, so nothing of the teacher's
  own view of the input leaks in) and its frozen weights carry the gradient back to the messages.

One round r (N rounds, 1-3), ``split = k >= 1``:
    M_s = enc_s(H_s)                    the student speaks from its split state (grid)
    H_t' = dec_t(M_s) (+ noise)         the teacher hears it as its own split state
    u_t' = upper_t(H_t')                it runs its upper layers (pooled last features)
    m_t = enc_up_t(u_t')                and answers
    u_s' = dec_up_s(m_t) -> z_s'        the student hears the answer as its upper state and predicts
    H_s <- dec_s(m_t)                   (broadcast over its grid) the state it speaks from next round
    L_interact = T^2 KL(softmax(z_t / T) || softmax(z_s' / T))      (z_t: the teacher's real logits)
                 or CE(z_s', y) with interact = "label"          (y: the downstream labels)
    L_MC = MSE(M_s, enc_t(H_t))         both models' messages about the same input agree
    L_SC = MSE(H_t', H_t) + MSE(u_s', sg(u_s))   decoded states match the real ones
With ``split = 0`` the two levels coincide: H = u, the teacher's upper layers are the identity,
enc_up = enc and dec_up = dec, which is the vector protocol above. Total: CE(student) + w_interact *
sum_r L_interact + w_mc * sum_r L_MC + w_sc * sum_r L_SC.

sg(.): the real states are the decoders' targets and carry no gradient (the teacher's never could). The
student learns through CE, L_interact and L_MC; ``sc_student = 1`` lets L_SC pull its real state towards
the decoded one as well. That was the first implementation, and it cost a pretrained convnext_atto_p2
student 17 points on the embedded zoo (resnet10t_w24_ls teacher, demo budget: -17.4 pp, against +1.1 pp
with the targets held; w_sc = 0 gives +0.9 pp): its pooled features are about 3x the scale of a ResNet's
(mean square 5.2 vs 1.7), so a 64-d reconstruction of them pulls hardest there.

The objective (CE + the weighted round losses), the ``setup`` hook and the registration of
``talking_models`` are at the end of this module.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo_study.methods import losses as L
from zoo_study.methods.losses import cross_entropy
from zoo_study.methods.registry import (MethodState, ObjectiveInputs, ObjectiveOutput, Param, SetupContext,
                                        register_method)
from zoo_study.transfer.feature_maps import (
    MapFormat,
    ModelMaps,
    SplitPoint,
    forward_map,
    model_maps,
    split_point,
    vector_as_features,
)

__all__ = ["RoundLosses", "talking_round", "interact_loss", "INTERACT_TARGETS", "TalkingModule", "setup_talking",
           "head_on_vector", "grid_to_native"]


@dataclass
class RoundLosses:
    interact: Tensor
    mc: Tensor
    sc: Tensor
    h_s_next: Tensor


INTERACT_TARGETS = ("teacher", "label")


def _kl(z_t: Tensor, z_s: Tensor, t: float) -> Tensor:
    p_t = torch.softmax(z_t / t, dim=-1)
    return t * t * (p_t * (torch.log(p_t.clamp_min(1e-12)) - torch.log_softmax(z_s / t, dim=-1))).sum(-1).mean()


def interact_loss(z_s: Tensor, z_t: Tensor, labels: Tensor | None, temperature: float,
                  target: str = "teacher") -> Tensor:
    """L_interact of one round: the student's prediction ``z_s`` made from the teacher's decoded answer, scored
    against the teacher's real logits (``"teacher"``: T^2 KL(softmax(z_t / T) || softmax(z_s / T)), METHOD.md's
    "vs the teacher") or against the downstream labels (``"label"``: CE(z_s, y), the reading open to the
    paper's own setting, where the pre-trained teacher's classes are not the downstream task's; ``labels``
    are class indices [B] or a distribution [B, K]). docs/DESIGN_NOTES.md, "Talking Models and AMTML-KD
    against their papers", says why both are kept."""
    if target == "teacher":
        return _kl(z_t, z_s, temperature)
    if target == "label":
        if labels is None:
            raise ValueError("talking_models with interact = 'label' needs the batch's labels")
        return cross_entropy(z_s, labels)
    raise ValueError(f"talking_models interact = {target!r}: valid are {', '.join(INTERACT_TARGETS)}")


def talking_round(h_s: Tensor, h_t: Tensor, z_t: Tensor, *, enc_s: Callable, dec_s: Callable, enc_t: Callable,
                  dec_t: Callable, head_s: Callable, temperature: float = 1.0,
                  noise: float = 0.0, generator: torch.Generator | None = None,
                  sc_student: bool = False, labels: Tensor | None = None,
                  interact: str = "teacher") -> RoundLosses:
    """One exchange at ``split = 0`` (see the module docstring); ``h_*`` are state vectors [B, C_*],
    ``z_t`` [B, K]; ``interact`` / ``labels``: what L_interact scores against (:func:`interact_loss`)."""
    m_s = enc_s(h_s)
    h_t_heard = dec_t(m_s)
    if noise > 0:
        h_t_heard = h_t_heard + noise * torch.randn(h_t_heard.shape, generator=generator, device=h_t_heard.device)
    m_t = enc_t(h_t_heard)
    h_s_heard = dec_s(m_t)
    z_s = head_s(h_s_heard)
    inter = interact_loss(z_s, z_t, labels, temperature, interact)
    mc = F.mse_loss(m_s, enc_t(h_t))
    sc = F.mse_loss(h_t_heard, h_t) + F.mse_loss(h_s_heard, h_s if sc_student else h_s.detach())
    return RoundLosses(inter, mc, sc, h_s_heard)


def head_on_vector(model: nn.Module, v: Tensor, maps: ModelMaps) -> Tensor:
    """``model.forward_head`` on a state vector [B, C], handed over in the form of its ``forward_features``
    (:func:`feature_maps.vector_as_features`: a 1x1 map in the declared NCHW / NHWC layout, or ``v`` as every
    token), so that its pooling (average, class token, Swin's NHWC pool) reads back exactly ``v``."""
    return model.forward_head(vector_as_features(model, v, maps))


def _state_tensor(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def grid_to_native(grid: Tensor, like: Any, fmt: MapFormat) -> Any:
    """A [B, C, H, W] grid back in the form of a module output ``like`` read with ``fmt`` (the split point's
    format): a map in its declared layout; a token sequence with the grid as its patch tokens and the grid
    mean in each prefix token; a tuple with its first element replaced."""
    if isinstance(like, (tuple, list)):
        return type(like)([grid_to_native(grid, like[0], fmt), *like[1:]])
    return fmt.native(grid, like)


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Run a frozen model with gradients to its inputs only: its parameters' flags off, then restored."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _run_with_state(model: nn.Module, where: SplitPoint, x: Tensor, state: Tensor | None) -> tuple[Tensor, Any]:
    """The last map of ``model`` on ``x`` (:func:`feature_maps.forward_map`) while the output of the split
    point ``where`` is captured and, given ``state`` (a grid), replaced by it. Returns (the last map, what
    ``where`` produced before any replacement)."""
    seen: list[Any] = []

    def hook(_m, _inp, out):
        seen.append(out)
        return grid_to_native(state, out, where.fmt) if state is not None else None

    handle = where.module.register_forward_hook(hook)
    try:
        _, grid = forward_map(model, x)
    finally:
        handle.remove()
    return grid, seen[0]


class TalkingModule(nn.Module):
    """Encoders and decoders. At ``split = 0`` linear maps on state vectors; deeper, 1x1 convolutions on the
    split grids (``enc_s``, ``dec_s``, ``enc_t``, ``dec_t``) and linear maps on the pooled last features for
    the teacher's answer (``enc_up_t``) and the student's reading of it (``dec_up_s``)."""

    def __init__(self, c_student: int, c_teacher: int, msg_dim: int, *, up_student: int | None = None,
                 up_teacher: int | None = None) -> None:
        super().__init__()
        deep = up_student is not None
        make = (lambda i, o: nn.Conv2d(i, o, kernel_size=1)) if deep else nn.Linear
        self.enc_s, self.dec_s = make(c_student, msg_dim), make(msg_dim, c_student)
        self.enc_t, self.dec_t = make(c_teacher, msg_dim), make(msg_dim, c_teacher)
        if deep:
            self.enc_up_t, self.dec_up_s = nn.Linear(up_teacher, msg_dim), nn.Linear(msg_dim, up_student)


class _TalkingState(MethodState):
    def __init__(self, module: TalkingModule, student: nn.Module, maps: ModelMaps, split: int = 0,
                 teacher: nn.Module | None = None, points: tuple[SplitPoint, SplitPoint] | None = None) -> None:
        self.module, self.student, self.maps = module, student, maps  # maps: how the student's features read
        self.split, self.teacher = split, teacher
        self.captured: Any = None
        self._hook = None
        if split > 0:  # the student's split state, from the loop's own forward (with its gradients)
            if points is None:
                raise ValueError("talking_models with split > 0 needs the student's and teacher's split points")
            self.s_where, self.t_where = points
            self._hook = self.s_where.module.register_forward_hook(self._capture)

    def _capture(self, _m, _inp, out) -> None:
        self.captured = out

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.captured = None

    def parameters(self) -> list:
        return list(self.module.parameters())

    def train(self) -> None:
        self.module.train()

    def losses(self, student: nn.Module, s_map: Tensor, t_map: Tensor, z_t: Tensor, *, rounds: int,
               temperature: float, noise: float, generator: torch.Generator | None,
               teacher_input: Tensor | None = None, sc_student: bool = False, labels: Tensor | None = None,
               interact: str = "teacher") -> tuple[Tensor, Tensor, Tensor]:
        """Summed round losses from the loop's last maps as NCHW grids (:func:`feature_maps.forward_map`);
        ``interact`` / ``labels``: what L_interact scores against (:func:`interact_loss`)."""
        if self.split > 0:
            if teacher_input is None or self.captured is None:
                raise ValueError("talking_models with split > 0 needs the teacher's input and the student's split state")
            return self._deep_losses(s_map, z_t, teacher_input, rounds=rounds, temperature=temperature,
                                     noise=noise, generator=generator, sc_student=sc_student, labels=labels,
                                     interact=interact)
        m = self.module
        h_s, h_t = s_map.mean((2, 3)), t_map.mean((2, 3)).detach()  # spatial / token means of the grids
        total = [h_s.new_zeros(()) for _ in range(3)]
        for _ in range(rounds):
            r = talking_round(h_s, h_t, z_t, enc_s=m.enc_s, dec_s=m.dec_s, enc_t=m.enc_t, dec_t=m.dec_t,
                              head_s=lambda v: head_on_vector(student, v, self.maps),
                              temperature=temperature, noise=noise, generator=generator, sc_student=sc_student,
                              labels=labels, interact=interact)
            total = [total[0] + r.interact, total[1] + r.mc, total[2] + r.sc]
            h_s = r.h_s_next
        return total[0], total[1], total[2]

    def _deep_losses(self, s_map: Tensor, z_t: Tensor, x_t: Tensor, *, rounds: int, temperature: float,
                     noise: float, generator: torch.Generator | None, sc_student: bool = False,
                     labels: Tensor | None = None, interact: str = "teacher") -> tuple[Tensor, Tensor, Tensor]:
        m, teacher = self.module, self.teacher
        h_s = self.s_where.fmt.grid(_state_tensor(self.captured)).float()
        u_s = s_map.mean((2, 3))  # the student's real upper state (pooled last features)
        with torch.no_grad():  # the teacher's real split state
            _, real = _run_with_state(teacher, self.t_where, x_t, None)
        h_t = self.t_where.fmt.grid(_state_tensor(real)).float()
        t_grid = h_t.shape[-2:]

        def to(grid: Tensor, size) -> Tensor:
            return grid if grid.shape[-2:] == size else F.interpolate(grid, size=size, mode="bilinear",
                                                                       align_corners=False)

        total = [u_s.new_zeros(()) for _ in range(3)]
        for _ in range(rounds):
            msg = m.enc_s(h_s)
            h_t_heard = m.dec_t(to(msg, t_grid))
            if noise > 0:
                h_t_heard = h_t_heard + noise * torch.randn(h_t_heard.shape, generator=generator,
                                                            device=h_t_heard.device)
            with _frozen(teacher):
                t_last, _ = _run_with_state(teacher, self.t_where, x_t, h_t_heard.to(x_t.dtype))
            u_t_heard = t_last.float().mean((2, 3))
            m_t = m.enc_up_t(u_t_heard)
            u_s_heard = m.dec_up_s(m_t)
            z_s = head_on_vector(self.student, u_s_heard, self.maps)
            inter = interact_loss(z_s, z_t, labels, temperature, interact)
            mc = F.mse_loss(msg, to(m.enc_t(h_t), h_s.shape[-2:]))
            sc = F.mse_loss(h_t_heard, h_t) + F.mse_loss(u_s_heard, u_s if sc_student else u_s.detach())
            total = [total[0] + inter, total[1] + mc, total[2] + sc]
            h_s = m.dec_s(m_t.view(*m_t.shape, 1, 1)).expand(-1, -1, *h_s.shape[-2:])
        return total[0], total[1], total[2]


def setup_talking(ctx: SetupContext) -> MethodState:
    """The ``setup`` hook of ``talking_models``: encoders / decoders sized by a probe of the models' states
    (:mod:`zoo_study.transfer.feature_maps`: last maps in the declared format, split points at modules
    that really run)."""
    if ctx.map_shapes is None or ctx.teachers is None or ctx.sample_inputs is None:
        raise ValueError("talking_models needs the loop's feature probe, sample inputs and its teacher (SetupContext)")
    if len(ctx.teachers) != 1:
        raise ValueError(f"talking_models talks with one teacher at a time, got {len(ctx.teachers)}")
    (c_s, _, _), ((c_t, _, _),) = ctx.map_shapes()
    split = int(ctx.params.get("split", 0))
    msg_dim = int(ctx.params["msg_dim"])
    x_s, (x_t,) = ctx.sample_inputs()
    s_maps = model_maps(ctx.model, x_s)
    if split == 0:
        module = TalkingModule(c_s, c_t, msg_dim).to(ctx.device)
        return _TalkingState(module, ctx.model, s_maps)
    teacher = ctx.teachers[0]
    points = (split_point(ctx.model, x_s, split, "student"), split_point(teacher, x_t, split, "teacher"))
    module = TalkingModule(points[0].shape[0], points[1].shape[0], msg_dim, up_student=c_s,
                           up_teacher=c_t).to(ctx.device)
    return _TalkingState(module, ctx.model, s_maps, split, teacher, points)


@register_method("talking_models", label="Talking Models", needs_labels=True, needs_maps=True,
                 params={"rounds": Param(1, int, 1, 3, doc="interaction rounds N"),
                         "split": Param(1, int, 0, 8, doc="split point: 0 = the last feature map (upper layers = "
                                        "the head); k = before the last k levels of timm's forward_intermediates"),
                         "msg_dim": Param(64, int, 1, None, doc="size of the shared message space"),
                         "w_interact": Param(1.0, float, 0.0, None, doc="weight of L_interact"),
                         "w_mc": Param(1.0, float, 0.0, None, doc="weight of L_MC (message consistency)"),
                         "w_sc": Param(1.0, float, 0.0, None, doc="weight of L_SC (state consistency)"),
                         "noise": Param(0.0, float, 0.0, None, doc="std of Gaussian noise on the state the teacher hears"),
                         "sc_student": Param(0, int, 0, 1, doc="1: L_SC also pulls the student's real state towards "
                                             "the decoded one (the first implementation; it cost a pretrained ConvNeXt "
                                             "student 17 points); 0: real states are only the decoders' targets"),
                         "interact_labels": Param(0, int, 0, 1, doc="0: L_interact = T^2 KL to the teacher's logits "
                                                  "(METHOD.md); 1: CE of the interactive prediction with the labels "
                                                  "(the paper's setting, where the teacher's labels are not the task's)")},
                 setup=setup_talking,
                 doc="Talking Models (METHOD.md section 6): student and teacher exchange messages through learned "
                     "encoders / decoders at a split point (default: before each model's last feature level; the "
                     "teacher runs its upper layers on what it heard); CE + the interaction, message- and "
                     "state-consistency losses. The kept model is the plain student.")
def talking_models(inp: ObjectiveInputs, p: Mapping[str, Any]) -> ObjectiveOutput:
    if inp.state is None or inp.student_map is None or not inp.teacher_maps or inp.teachers is None:
        raise ValueError("talking_models needs its state and the student's and teacher's feature maps")
    model = inp.state.student
    inter, mc, sc = inp.state.losses(model, inp.student_map, inp.teacher_maps[0], inp.teacher, rounds=p["rounds"],
                                     temperature=inp.temperature, noise=p["noise"], generator=inp.generator,
                                     teacher_input=inp.teacher_inputs[0] if inp.teacher_inputs else None,
                                     sc_student=bool(p["sc_student"]), labels=inp.targets,
                                     interact="label" if p["interact_labels"] else "teacher")
    ce = L.cross_entropy(inp.student, inp.targets)
    loss = ce + p["w_interact"] * inter + p["w_mc"] * mc + p["w_sc"] * sc
    return ObjectiveOutput(loss, logs={"ce": ce.detach(), "interact": inter.detach(), "mc": mc.detach(),
                                       "sc": sc.detach()})
