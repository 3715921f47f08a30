"""Contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020) as a per-job module.

Both networks' penultimate features are projected to a shared ``feat_dim`` (128) sphere by trainable
linear heads. Each sample's student embedding is contrasted against the *teacher's* memory-bank
embedding of the same sample (the positive) and ``nce_k`` (16384, Tian et al.'s default) memory entries of
*other classes* drawn uniformly with replacement (negatives; their code's ``cls_negative`` sampling), and
symmetrically for the teacher embedding against the student memory. Scores ``exp(<u, v> / nce_t)``
(nce_t = 0.07) are divided by a normalisation constant Z, estimated once from the first batch as
``mean(score) * N`` (N = memory size), and fed to the NCE loss with a uniform noise distribution
Pn = 1/N: ``-log(P_pos / (P_pos + K Pn)) - sum_neg log(K Pn / (P_neg + K Pn))``, averaged over the batch.
Memory rows of the batch's samples move towards the new embeddings with momentum ``nce_m`` (0.5) and
are renormalised. Everything here runs in float32, also under autocast, because exp(1/0.07) ~ 1.6e6.
The drawn rows' dot products come from one [B, d] x [d, N] product when the memory is at most 8x the
contrast set (``_scores``): the same numbers as gathering [B, K+1, d] rows, at a fraction of the memory
traffic (the demo's CRD step went from 3.83x a plain student step to 1.11x, ``bench_pack.py``).

Why a module: the heads are trained with the student (the loop adds this module's parameters to the
optimiser) and the memory bank persists across batches of one job. The method's objective (CE + beta *
the NCE loss), its ``setup`` hook and its registration are at the end of this module.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo_study.methods import losses as L
from zoo_study.methods.registry import (MethodState, ObjectiveInputs, ObjectiveOutput, Param, SetupContext,
                                        register_method)

_EPS = 1e-7
# memory sizes up to this many times the contrast set (K + 1) score every row with one matrix product
# and pick the drawn ones: B x N x d dense multiply-adds beat gathering B x (K + 1) rows of d floats
_DENSE_FACTOR = 8


class CRDState(nn.Module):
    def __init__(self, student_dim: int, teacher_dim: int, n_data: int, *, feat_dim: int = 128,
                 nce_k: int = 16384, nce_t: float = 0.07, nce_m: float = 0.5, labels=None) -> None:
        super().__init__()
        if n_data < 1:
            raise ValueError(f"CRD needs a non-empty transfer set, got n_data={n_data}")
        self._other_class = None
        if labels is not None:  # negatives from other classes (Tian et al.): per class, the rows not in it
            labels = torch.as_tensor(labels, dtype=torch.int64)
            if labels.shape != (n_data,):
                raise ValueError(f"CRD labels must have one entry per memory row ({n_data}), got {tuple(labels.shape)}")
            order = torch.argsort(labels, stable=True)  # rows grouped by class
            classes, counts = torch.unique(labels, return_counts=True)
            if len(classes) < 2:
                raise ValueError("CRD negatives come from other classes, but the transfer set has one class")
            start = torch.zeros(int(labels.max()) + 1, dtype=torch.int64)
            count = torch.zeros_like(start)
            start[classes] = torch.cumsum(counts, 0) - counts
            count[classes] = counts
            self.register_buffer("_order", order, persistent=False)
            self.register_buffer("_labels", labels, persistent=False)
            self.register_buffer("_start", start, persistent=False)
            self.register_buffer("_count", count, persistent=False)
            self._other_class = True
        self.embed_s = nn.Linear(student_dim, feat_dim)
        self.embed_t = nn.Linear(teacher_dim, feat_dim)
        self.n_data, self.nce_k, self.nce_t, self.nce_m = int(n_data), int(nce_k), float(nce_t), float(nce_m)
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z_s", torch.tensor(-1.0))  # < 0: not estimated yet
        self.register_buffer("z_t", torch.tensor(-1.0))

    def _nce(self, scores: Tensor) -> Tensor:
        """NCE loss of [B, K+1] normalised scores, column 0 the positive."""
        k_pn = self.nce_k / self.n_data
        pos = scores[:, 0]
        neg = scores[:, 1:]
        log_d1 = torch.log(pos / (pos + k_pn + _EPS))
        log_d0 = torch.log(k_pn / (neg + k_pn + _EPS))
        return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]

    def _negatives(self, index: Tensor, b: int, generator: torch.Generator | None) -> Tensor:
        """[B, K] memory rows: uniform over all rows, or (with labels) uniform over the rows of the other
        classes: draw r in [0, N - n_c) and skip the anchor class's block in the class-sorted order. Drawn
        on the memory's device (``generator`` must live there: the loop gives each member one on its
        device), so a GPU step neither copies draws from the host nor reads anything back."""
        dev = self.memory_s.device
        if self._other_class is None:
            return torch.randint(0, self.n_data, (b, self.nce_k), generator=generator, device=dev)
        cls = self._labels[index.to(dev)]
        start, count = self._start[cls].unsqueeze(1), self._count[cls].unsqueeze(1)
        u = torch.rand((b, self.nce_k), generator=generator, dtype=torch.float64, device=dev)
        r = (u * (self.n_data - count)).long()
        return self._order[torch.where(r >= start, r + count, r)]

    def _scores(self, v: Tensor, memory: Tensor, idx: Tensor) -> Tensor:
        """``exp(<memory[idx[b, j]], v[b]> / nce_t)`` as [B, K+1]. The same dot products either way: for a
        memory of at most ``_DENSE_FACTOR * (K + 1)`` rows, one [B, d] x [d, N] product and a gather (the
        demo: 1,200 rows, 4,097 drawn per sample; ImageNet 10%: 128k rows, 16,385 drawn), otherwise the
        gathered [B, K+1, d] rows times v (Tian et al.'s bmm), whose memory traffic is what a CRD step
        costs when it is used on a small memory."""
        if self.n_data <= _DENSE_FACTOR * idx.shape[1]:  # a copy: the memory update after it is in place
            dots = (v @ memory.clone().t()).gather(1, idx)
        else:
            dots = torch.bmm(memory[idx], v.unsqueeze(-1)).squeeze(-1)
        return torch.exp(dots / self.nce_t)

    @torch.no_grad()
    def _estimate_z(self, z: Tensor, scores: Tensor) -> None:
        """Z <- mean(scores) * N on the first batch (while Z < 0), kept on the device: no host read per
        step. The product is rounded once to float32, as the former ``float(mean) * N`` was (N < 2**24)."""
        z.copy_(torch.where(z < 0, scores.mean() * self.n_data, z))

    def forward(self, f_s: Tensor, f_t: Tensor, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        dev = f_s.device
        with torch.autocast(device_type=dev.type, enabled=False):
            v_s = F.normalize(self.embed_s(f_s.float()), dim=-1)
            v_t = F.normalize(self.embed_t(f_t.detach().float()), dim=-1)
            b = v_s.shape[0]
            neg = self._negatives(index, b, generator)
            idx = torch.cat([index.view(b, 1).to(dev), neg], dim=1)  # [B, K+1], positive first
            out_s = self._scores(v_s, self.memory_t.detach(), idx)  # teacher memory for student anchors
            out_t = self._scores(v_t, self.memory_s.detach(), idx)
            self._estimate_z(self.z_s, out_s)
            self._estimate_z(self.z_t, out_t)
            loss = self._nce(out_s / self.z_s) + self._nce(out_t / self.z_t)
            with torch.no_grad():
                pos = index.to(dev)
                m = self.nce_m
                self.memory_s[pos] = F.normalize(self.memory_s[pos] * m + v_s.detach() * (1 - m), dim=-1)
                self.memory_t[pos] = F.normalize(self.memory_t[pos] * m + v_t.detach() * (1 - m), dim=-1)
        return loss


class _CRDMethodState(MethodState):
    """CRD's hooks in the transfer loop: its heads train with the student; the objective calls :meth:`loss`."""

    def __init__(self, module: CRDState) -> None:
        self.module = module

    def parameters(self) -> list:
        return list(self.module.parameters())

    def train(self) -> None:
        self.module.train()

    def loss(self, f_s: Tensor, f_t: Tensor, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.module(f_s, f_t, index, generator)


def setup_crd(ctx: SetupContext) -> MethodState:
    """The ``setup`` hook of ``crd``: heads sized by a probe of the two models' penultimate features."""
    student_dim, teacher_dim = ctx.feature_dims()
    p = ctx.params
    module = CRDState(student_dim, teacher_dim, ctx.n_data, feat_dim=p["feat_dim"], nce_k=p["nce_k"],
                      nce_t=p["nce_t"], nce_m=p["nce_m"], labels=ctx.labels).to(ctx.device)
    return _CRDMethodState(module)


@register_method("crd", label="CRD", needs_labels=True, needs_features=True, needs_index=True,
                 params={"beta": Param(0.8, float, 0.0, None, doc="weight of the CRD term (CE has weight 1)"),
                         "feat_dim": Param(128, int, 1, None, doc="projection dimension"),
                         "nce_k": Param(16384, int, 1, None, doc="negatives from other classes (Tian et al.)"),
                         "nce_t": Param(0.07, float, 0.0, None, low_open=True, doc="NCE temperature"),
                         "nce_m": Param(0.5, float, 0.0, 1.0, high_open=True, doc="memory-bank momentum")},
                 setup=setup_crd)
def crd(inp: ObjectiveInputs, p: Mapping[str, Any]) -> ObjectiveOutput:
    """CRD (Tian et al. 2020): 128-d projection heads, NCE against a memory bank (16384 negatives of
    other classes), + CE."""
    if inp.state is None or inp.index is None:
        raise ValueError("crd needs its state (projection heads, memory bank) and sample indices")
    if inp.student_features is None or inp.teacher_features is None:
        raise ValueError("crd needs penultimate features of the student and the teacher")
    crd_ = inp.state.loss(inp.student_features.flatten(1), inp.teacher_features.flatten(1), inp.index, inp.generator)
    ce = L.cross_entropy(inp.student, inp.targets)
    return ObjectiveOutput(ce + p["beta"] * crd_, logs={"crd": crd_.detach(), "ce": ce.detach()})
