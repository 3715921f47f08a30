"""Momentum weight interpolation (the "MCL" of XE-KL + MCL), and weight averaging for model soups.

MCL keeps *slow* weights that start as a copy of the pretrained student and, every N optimiser steps,
move towards the trained (*fast*) weights: ``theta_slow <- tau * theta_slow + (1 - tau) * theta_fast``,
over parameters and floating-point buffers (BatchNorm running statistics). Integer buffers
(``num_batches_tracked``) have no meaningful average and are copied from the fast model. The slow model
is the one evaluated and kept. The reference code initialises the slow weights as an *alias* of the live
weights (so they are simply the fast weights); :class:`SlowWeights` deep-copies instead, which a test
checks by identity of the storage.

The method ``xe_kl_mcl`` (XE-KL's loss with MCL's slow weights as its state) is registered at the end of
this module.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from zoo_study.methods.builtin import xe_kl
from zoo_study.methods.registry import (MethodState, ObjectiveInputs, ObjectiveOutput, Param, SetupContext,
                                        register_method)
from zoo_study.transfer.protocol import scaled_tau, slow_share

__all__ = ["SlowWeights", "interpolate_", "soup_state_dicts", "setup_slow_weights"]


@torch.no_grad()
def interpolate_(slow: nn.Module, fast: nn.Module, tau: float) -> None:
    """In place: slow <- tau * slow + (1 - tau) * fast for floating tensors; integer buffers copied."""
    fast_state = fast.state_dict()
    for name, s in slow.state_dict().items():
        f = fast_state[name]
        if s.is_floating_point():
            s.mul_(tau).add_(f.detach().to(s.dtype), alpha=1.0 - tau)
        else:
            s.copy_(f)


class SlowWeights:
    """The slow copy of a model for MCL; call :meth:`step` after every optimiser step."""

    def __init__(self, fast: nn.Module, tau: float, every: int) -> None:
        if not (0.0 <= tau <= 1.0):
            raise ValueError(f"MCL tau must be in [0, 1], got {tau}")
        if int(every) < 1:
            raise ValueError(f"MCL N (steps between interpolations) must be >= 1, got {every}")
        self.model = copy.deepcopy(fast)  # a copy, never an alias of the live weights
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tau = float(tau)
        self.every = int(every)
        self.steps = 0
        self.updates = 0

    def step(self, fast: nn.Module) -> bool:
        """Count one optimiser step; interpolate on every N-th. Returns whether it interpolated."""
        self.steps += 1
        if self.steps % self.every:
            return False
        interpolate_(self.model, fast, self.tau)
        self.updates += 1
        return True


@torch.no_grad()
def soup_state_dicts(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Uniform average of floating tensors of several state dicts of one architecture (a model soup).

    Integer tensors (``num_batches_tracked``) are copied from the first state, not averaged. The
    average is accumulated in float64 and cast back, so a soup of identical states equals the state.
    """
    if not states:
        raise ValueError("a soup needs at least one state dict")
    keys = list(states[0].keys())
    for i, s in enumerate(states[1:], 1):
        if list(s.keys()) != keys:
            diff = sorted(set(keys) ^ set(s.keys()))
            raise ValueError(f"state dict {i} does not match state dict 0 (keys differ: {diff[:5]})")
    out: dict[str, Tensor] = {}
    for k in keys:
        first = states[0][k]
        if first.is_floating_point():
            acc = torch.zeros_like(first, dtype=torch.float64)
            for s in states:
                acc += s[k].to(torch.float64)
            out[k] = (acc / len(states)).to(first.dtype)
        else:
            out[k] = first.clone()
    return out


def _norms(model: nn.Module) -> list[float]:
    return [float(p.detach().float().norm()) for p in model.parameters()]


class _SlowWeightsState(MethodState):
    """MCL's hooks in the transfer loop: interpolate after every step, evaluate and keep the slow model.

    What it reports (``extra``, the summary's ``method_info_json``): the tau given and the tau used, the
    planned interpolations and the share of the fast trajectory the slow model takes (1 - tau^I), and how far
    the fast weights moved: the per-tensor norm ratio fast / pretrained (median and max). A fast model whose
    stem grew 15x shows here even when the kept slow model hides it."""

    def __init__(self, slow: SlowWeights, fast: nn.Module, tau_given: float, interpolations: int | None) -> None:
        self.slow = slow
        self.fast = fast
        self.tau_given = tau_given
        self.interpolations = interpolations
        self.start_norms = _norms(fast)

    def after_step(self, model: nn.Module) -> None:
        self.slow.step(model)

    def kept_model(self, model: nn.Module) -> nn.Module:
        return self.slow.model

    def extra(self) -> dict:
        ratios = [n / s for n, s in zip(_norms(self.fast), self.start_norms) if s > 0]
        out = {"mcl_updates": self.slow.updates, "mcl_tau_given": self.tau_given, "mcl_tau_used": self.slow.tau,
               "mcl_fast_norm_ratio_median": float(np.median(ratios)) if ratios else None,
               "mcl_fast_norm_ratio_max": max(ratios) if ratios else None}
        if self.interpolations is not None:
            out["mcl_interpolations_planned"] = self.interpolations
            out["mcl_slow_share"] = slow_share(self.slow.tau, self.interpolations)
        return out


def setup_slow_weights(ctx: SetupContext) -> MethodState:
    """The ``setup`` hook of ``xe_kl_mcl`` (params ``tau`` and ``N``). Under ``protocol = 'paper_ratios'``
    tau is rescaled so that the slow model takes the paper's share of the fast trajectory over this stage's
    interpolations (:func:`zoo_study.transfer.protocol.scaled_tau`)."""
    tau, every = float(ctx.params["tau"]), int(ctx.params["N"])
    interpolations = max(1, ctx.total_steps // every) if ctx.total_steps else None
    used = scaled_tau(tau, interpolations) if ctx.protocol == "paper_ratios" and interpolations else tau
    return _SlowWeightsState(SlowWeights(ctx.model, used, every), ctx.model, tau, interpolations)


# MCL keeps the paper's tuned lambda 0.7 (XE-KL's default is 0.5: zoo_study/methods/builtin.py)
_LAMBDA_MCL = Param(0.7, float, 0.0, 1.0, doc="weight of the KL term; 1 - lambda weighs the CE term")


@register_method("xe_kl_mcl", label="XE-KL + MCL", lr=0.01, needs_labels=True, paper_success_rate="~80%",
                 params={"lambda": _LAMBDA_MCL,
                         "tau": Param(0.9999, float, 0.0, 1.0, doc="slow-weight momentum"),
                         "N": Param(2, int, 1, None, doc="optimiser steps between interpolations")},
                 grid={"base_lr": [1e-2, 1e-3], "lambda": [0.5, 0.7, 0.9], "tau": [0.99, 0.999, 0.9999],
                       "N": [2, 10, 50, 100]},
                 setup=setup_slow_weights,
                 doc="XE-KL + momentum weight interpolation: slow weights (a copy of the pretrained student) "
                     "follow theta_slow <- tau theta_slow + (1 - tau) theta_fast every N steps; the slow "
                     "model is kept.")
def xe_kl_mcl(inp: ObjectiveInputs, p: Mapping[str, Any]) -> ObjectiveOutput:
    return xe_kl(inp, p)  # the loss is XE-KL's; the slow weights live in the method's state
