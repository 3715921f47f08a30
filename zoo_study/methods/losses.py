"""The tensor maths of the built-in objectives (METHOD.md section 2), each checkable on tiny tensors.

Conventions shared by all objectives:

- ``KL(p || q) = sum_c p_c (log p_c - log q_c)`` with p, q softmaxes at temperature T; every KL term is
  ``T^2 * mean over the batch`` (Hinton's T^2 keeps gradient magnitudes comparable across T).
- Cross-entropy is a plain CE on the student's logits (the reference code applies softmax twice); label
  smoothing smooths the *targets* (eps spread uniformly over all C classes), not the predictions.
- Data partitioning (DP) routes each sample to one source: the frozen initial student (index 0) or a
  teacher (index k >= 1). The confidence used for routing is the plain softmax (T = 1) at the label
  (supervised) or the max-probability (unsupervised); the highest confidence wins and ties go to the
  lowest index, i.e. to the student (``torch.argmax`` returns the first maximum). Ties are exact float
  ties, as an identical teacher produces; no tolerance is applied. Single-teacher KL+DP is the K = 1
  case of the parallel multi-teacher rule, so both share one implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["kl_rows", "kl_term", "cross_entropy", "route_sources", "routed_targets", "topk_kl",
           "similarity_kl", "standardise_logits", "log_softmax"]


def kl_rows(target_logits: Tensor, student_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-row KL( softmax(target/T) || softmax(student/T) ), [B]. Log-space, so no 0 * log 0 issue."""
    log_p = F.log_softmax(target_logits / temperature, dim=-1)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def kl_term(target_logits: Tensor, student_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 * mean_i KL_i``: the KL term every objective uses."""
    return temperature**2 * kl_rows(target_logits, student_logits, temperature).mean()


def log_softmax(logits: Tensor) -> Tensor:
    """Row-wise log-softmax over classes."""
    return F.log_softmax(logits, dim=-1)


def standardise_logits(logits: Tensor, eps: float = 1e-6) -> Tensor:
    """Temperature-free rescaling (Choi et al.): each sample's logits divided by their standard deviation
    over classes (population std; softmax is shift-invariant, so centring would change nothing)."""
    return logits / logits.std(dim=-1, keepdim=True, unbiased=False).clamp_min(eps)


def cross_entropy(student_logits: Tensor, labels: Tensor | None, label_smoothing: float = 0.0) -> Tensor:
    """Plain CE on logits; with smoothing the targets are (1 - eps) one_hot + eps / C. ``labels`` are
    class indices [B] or a distribution [B, C] (mixed labels under batch mixup)."""
    if labels is None:
        raise ValueError("this objective needs labels (cross-entropy term), but none were given")
    log_q = F.log_softmax(student_logits, dim=-1)
    c = student_logits.shape[-1]
    target = labels.to(log_q.dtype) if labels.is_floating_point() else F.one_hot(labels, c).to(log_q.dtype)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / c
    return -(target * log_q).sum(-1).mean()


def route_sources(frozen: Tensor, teachers: Tensor, labels: Tensor | None, supervised: bool) -> Tensor:
    """Per sample, the source to distil from: 0 = frozen student, k = teacher k (1-based).

    Confidence = softmax probability of the label (supervised) or the max probability (unsupervised)
    at T = 1, in float32 whatever the logits' dtype; the highest wins and ties go to the lowest index
    (the student first). Vectorised.
    """
    logits = torch.cat([frozen.unsqueeze(0), teachers], dim=0).float()  # [K+1, B, C]
    probs = logits.softmax(dim=-1)
    if supervised:
        if labels is None:
            raise ValueError("supervised data partitioning needs labels; use kl_dp_unsup for no labels")
        conf = probs.gather(-1, labels.view(1, -1, 1).expand(probs.shape[0], -1, 1)).squeeze(-1)
    else:
        conf = probs.amax(dim=-1)
    return conf.argmax(dim=0)  # [B]; first maximum -> ties to the student


def routed_targets(frozen: Tensor, teachers: Tensor, route: Tensor) -> Tensor:
    """[B, C]: per sample the logits of its chosen source (0 = frozen student, k = teacher k)."""
    sources = torch.cat([frozen.unsqueeze(0), teachers], dim=0)  # [K+1, B, C]
    return sources[route, torch.arange(route.shape[0], device=route.device)]


def topk_kl(teacher: Tensor, student: Tensor, k: int, temperature: float) -> Tensor:
    """KL over the teacher's k most likely classes, both distributions renormalised over them."""
    k = min(int(k), teacher.shape[-1])
    idx = teacher.topk(k, dim=-1).indices  # the same classes for any T > 0
    # log_softmax over the gathered logits = both distributions renormalised over those k classes
    return kl_term(teacher.gather(-1, idx), student.gather(-1, idx), temperature)


def similarity_kl(student_features: Tensor, teacher_features: Tensor, temperature: float) -> Tensor:
    """Row-wise KL(softmax(S_t) || softmax(S_s)) of in-batch cosine-similarity matrices, mean over rows.

    The two models' feature sizes may differ: only the [B, B] similarity matrices are compared.
    """
    fs = F.normalize(student_features.flatten(1), dim=-1)
    ft = F.normalize(teacher_features.flatten(1), dim=-1)
    return kl_term(ft @ ft.t(), fs @ fs.t(), temperature)
