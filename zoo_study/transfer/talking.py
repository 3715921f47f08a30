"""Talking Models (interactive-communication KD; METHOD.md section 6) as a per-job module.

What is trained: the student, and per model an encoder (hidden state -> message in a shared space of
``msg_dim``) and a decoder (message -> that model's hidden state). The teacher's weights are never
trained. What is kept: the plain student (its own forward, no teacher and no encoder/decoder at test
time).

Split point: the last feature map (timm's ``forward_features``): the "lower layers" are the feature
extractor, the "upper layers" the classifier head (``forward_head``), for CNNs and token models alike.
Hidden states are exchanged as their spatial / token means (vectors of C channels); a decoded state is
handed to a head as a 1x1 map (CNN) or a single token (token models), which the head's pooling reads
as exactly that vector. Deeper split points (timm intermediates) are not built yet.

One round r (N rounds, 1-3):
    m_s = enc_s(h_s)                    the student speaks
    h_t' = dec_t(m_s) (+ noise)         the teacher hears it as its own state
    m_t = enc_t(h_t')                   the teacher answers (at this split its upper layers, the head,
                                        would only turn h_t' into logits no loss uses: not computed)
    h_s' = dec_s(m_t)                   the student hears the answer, runs its head: z_s'
    L_interact = T^2 KL(softmax(z_t / T) || softmax(z_s' / T))      (z_t: the teacher's real logits)
    L_MC = MSE(m_s, enc_t(h_t))         both models' messages about the same input agree
    L_SC = MSE(h_t', h_t) + MSE(h_s', h_s)   decoded states match the real ones
and h_s <- h_s' for the next round. Total: CE(student) + w_interact * sum_r L_interact + w_mc * sum_r
L_MC + w_sc * sum_r L_SC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo_study.methods.registry import MethodState, SetupContext

__all__ = ["RoundLosses", "talking_round", "TalkingModule", "setup_talking", "head_on_vector"]


@dataclass
class RoundLosses:
    interact: Tensor
    mc: Tensor
    sc: Tensor
    h_s_next: Tensor


def talking_round(h_s: Tensor, h_t: Tensor, z_t: Tensor, *, enc_s: Callable, dec_s: Callable, enc_t: Callable,
                  dec_t: Callable, head_s: Callable, temperature: float = 1.0,
                  noise: float = 0.0, generator: torch.Generator | None = None) -> RoundLosses:
    """One exchange (see the module docstring); ``h_*`` are state vectors [B, C_*], ``z_t`` [B, K]."""
    m_s = enc_s(h_s)
    h_t_heard = dec_t(m_s)
    if noise > 0:
        h_t_heard = h_t_heard + noise * torch.randn(h_t_heard.shape, generator=generator).to(h_t_heard.device)
    m_t = enc_t(h_t_heard)
    h_s_heard = dec_s(m_t)
    z_s = head_s(h_s_heard)
    t = temperature
    p_t = torch.softmax(z_t / t, dim=-1)
    interact = t * t * (p_t * (torch.log(p_t.clamp_min(1e-12)) - torch.log_softmax(z_s / t, dim=-1))).sum(-1).mean()
    mc = F.mse_loss(m_s, enc_t(h_t))
    sc = F.mse_loss(h_t_heard, h_t) + F.mse_loss(h_s_heard, h_s)
    return RoundLosses(interact, mc, sc, h_s_heard)


def head_on_vector(model: nn.Module, v: Tensor, native_shape: tuple[int, ...]) -> Tensor:
    """``model.forward_head`` on a state vector: as a 1x1 map for CNN features ``(C, H, W)``, as every token
    of a token sequence ``(N, D)`` (so class-token and mean pooling both read back exactly ``v``)."""
    if len(native_shape) == 3:
        x = v.view(*v.shape, 1, 1)
    elif len(native_shape) == 2:
        x = v.unsqueeze(1).expand(-1, native_shape[0], -1)
    else:
        x = v
    return model.forward_head(x)


class TalkingModule(nn.Module):
    def __init__(self, c_student: int, c_teacher: int, msg_dim: int) -> None:
        super().__init__()
        self.enc_s, self.dec_s = nn.Linear(c_student, msg_dim), nn.Linear(msg_dim, c_student)
        self.enc_t, self.dec_t = nn.Linear(c_teacher, msg_dim), nn.Linear(msg_dim, c_teacher)


class _TalkingState(MethodState):
    def __init__(self, module: TalkingModule, student: nn.Module, native: tuple[int, ...]) -> None:
        self.module, self.student, self.native = module, student, native  # native: the student's feature shape

    def parameters(self) -> list:
        return list(self.module.parameters())

    def train(self) -> None:
        self.module.train()

    def losses(self, student: nn.Module, s_map: Tensor, t_map: Tensor, z_t: Tensor, *, rounds: int,
               temperature: float, noise: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """Summed round losses from the loop's feature grids (:func:`zoo_study.transfer.loop.as_grid`)."""
        m = self.module
        h_s, h_t = s_map.mean((2, 3)), t_map.mean((2, 3)).detach()  # spatial / token means of the grids
        total = [h_s.new_zeros(()) for _ in range(3)]
        for _ in range(rounds):
            r = talking_round(h_s, h_t, z_t, enc_s=m.enc_s, dec_s=m.dec_s, enc_t=m.enc_t, dec_t=m.dec_t,
                              head_s=lambda v: head_on_vector(student, v, self.native),
                              temperature=temperature, noise=noise, generator=generator)
            total = [total[0] + r.interact, total[1] + r.mc, total[2] + r.sc]
            h_s = r.h_s_next
        return total[0], total[1], total[2]


def setup_talking(ctx: SetupContext) -> MethodState:
    """The ``setup`` hook of ``talking_models``: encoders / decoders sized by a probe of the last features."""
    if ctx.map_shapes is None or ctx.teachers is None or ctx.native_shapes is None:
        raise ValueError("talking_models needs the loop's feature probe and its teacher (SetupContext)")
    if len(ctx.teachers) != 1:
        raise ValueError(f"talking_models talks with one teacher at a time, got {len(ctx.teachers)}")
    (c_s, _, _), ((c_t, _, _),) = ctx.map_shapes()
    s_shape, _ = ctx.native_shapes()
    module = TalkingModule(c_s, c_t, int(ctx.params["msg_dim"])).to(ctx.device)
    return _TalkingState(module, ctx.model, s_shape)
