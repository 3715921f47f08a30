"""Contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020) as a per-job module.

Both networks' penultimate features are projected to a shared ``feat_dim`` (128) sphere by trainable
linear heads. Each sample's student embedding is contrasted against the *teacher's* memory-bank
embedding of the same sample (the positive) and ``nce_k`` (4096) random memory entries (negatives), and
symmetrically for the teacher embedding against the student memory. Scores ``exp(<u, v> / nce_t)``
(nce_t = 0.07) are divided by a normalisation constant Z, estimated once from the first batch as
``mean(score) * N`` (N = memory size), and fed to the NCE loss with a uniform noise distribution
Pn = 1/N: ``-log(P_pos / (P_pos + K Pn)) - sum_neg log(K Pn / (P_neg + K Pn))``, averaged over the batch.
Memory rows of the batch's samples move towards the new embeddings with momentum ``nce_m`` (0.5) and
are renormalised. Everything here runs in float32, also under autocast, because exp(1/0.07) ~ 1.6e6.

Why a module: the heads are trained with the student (the loop adds this module's parameters to the
optimiser) and the memory bank persists across batches of one job.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_EPS = 1e-7


class CRDState(nn.Module):
    def __init__(self, student_dim: int, teacher_dim: int, n_data: int, *, feat_dim: int = 128,
                 nce_k: int = 4096, nce_t: float = 0.07, nce_m: float = 0.5) -> None:
        super().__init__()
        if n_data < 1:
            raise ValueError(f"CRD needs a non-empty transfer set, got n_data={n_data}")
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

    def forward(self, f_s: Tensor, f_t: Tensor, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        dev = f_s.device
        with torch.autocast(device_type=dev.type, enabled=False):
            v_s = F.normalize(self.embed_s(f_s.float()), dim=-1)
            v_t = F.normalize(self.embed_t(f_t.detach().float()), dim=-1)
            b = v_s.shape[0]
            neg = torch.randint(0, self.n_data, (b, self.nce_k), generator=generator).to(dev)
            idx = torch.cat([index.view(b, 1).to(dev), neg], dim=1)  # [B, K+1], positive first
            w_t = self.memory_t[idx].detach()  # teacher memory for student anchors
            w_s = self.memory_s[idx].detach()
            out_s = torch.exp(torch.bmm(w_t, v_s.unsqueeze(-1)).squeeze(-1) / self.nce_t)
            out_t = torch.exp(torch.bmm(w_s, v_t.unsqueeze(-1)).squeeze(-1) / self.nce_t)
            if self.z_s < 0:
                self.z_s.fill_(float(out_s.mean().detach()) * self.n_data)
            if self.z_t < 0:
                self.z_t.fill_(float(out_t.mean().detach()) * self.n_data)
            loss = self._nce(out_s / self.z_s) + self._nce(out_t / self.z_t)
            with torch.no_grad():
                pos = index.to(dev)
                m = self.nce_m
                self.memory_s[pos] = F.normalize(self.memory_s[pos] * m + v_s.detach() * (1 - m), dim=-1)
                self.memory_t[pos] = F.normalize(self.memory_t[pos] * m + v_t.detach() * (1 - m), dim=-1)
        return loss
