"""Adversarial robustness and feature-clustering quality of a classifier (METHOD.md section 5).

Why here: Choi et al. judge mixup in distillation not only by clean accuracy but by how the student
resists small worst-case perturbations and how well its penultimate features cluster by class. The
functions take a model, its preprocessing and a split, so a zoo model and a transferred student are
measured the same way.

Units. ``eps`` is given in *pixel* units of images scaled to [0, 1] (8/255 ~ 0.031 is the common choice)
and the attack acts on the model's input after resizing, so the perturbation is bounded per pixel of
what the model sees. In the model's normalised input space ``x_n = (x - mean) / std`` that is a budget
of ``eps / std_c`` per channel and the valid range is ``[(0 - mean_c) / std_c, (1 - mean_c) / std_c]``;
both are computed here from the model's data config and applied exactly.

- FGSM (Goodfellow et al.): ``x' = clip(x + eps * sign(grad_x CE(f(x), y)))``, one step.
- I-FGSM (Kurakin et al.): ``steps`` steps of ``eps / steps``, each followed by projection onto the
  L-inf ball of radius eps around x and onto the valid range (10 steps of eps/10 by default).
- V-measure (Rosenberg & Hirschberg) of k-means clusters (k = number of classes) of the penultimate
  features against the labels, from scikit-learn. V-measure is *not* 0 at chance: with few points per
  cluster a random clustering scores high (0.74 for 300 points in 100 clusters, 0.12 at 10,000), so it is
  reported with its chance level (the mean V-measure of the same clusters randomly re-assigned to the
  points, which keeps the cluster sizes) and with the adjusted mutual information, which is 0 at chance
  by construction (Vinh, Epps and Bailey 2010). Cluster on all eval images or >= 20 per class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo_study.data.base import ImageSplit, raw_loader
from zoo_study.data.preprocess import ModelPreprocess

__all__ = ["InputBounds", "fgsm", "ifgsm", "RobustnessResult", "evaluate_robustness", "ClusteringScores",
           "clustering_scores", "feature_clustering", "stratified_subset"]


@dataclass(frozen=True)
class InputBounds:
    """Per-channel scale of the normalised input space: pixel eps -> normalised eps, valid range."""

    mean: Tensor  # [1, C, 1, 1]
    std: Tensor  # [1, C, 1, 1]

    @classmethod
    def from_data_config(cls, data_config: dict, device: torch.device | str = "cpu") -> "InputBounds":
        mean = torch.tensor(data_config["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(data_config["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return cls(mean, std)

    def eps(self, eps_pixels: float) -> Tensor:
        return eps_pixels / self.std

    @property
    def low(self) -> Tensor:
        return (0.0 - self.mean) / self.std

    @property
    def high(self) -> Tensor:
        return (1.0 - self.mean) / self.std


def _input_grad_sign(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x).float(), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad.sign()


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps_pixels: float, bounds: InputBounds) -> Tensor:
    """One signed-gradient step of size eps (pixel units) from the normalised input ``x``."""
    eps = bounds.eps(eps_pixels)
    adv = x + eps * _input_grad_sign(model, x, y)
    return torch.max(torch.min(adv, bounds.high), bounds.low).detach()


def ifgsm(model: nn.Module, x: Tensor, y: Tensor, eps_pixels: float, bounds: InputBounds, steps: int = 10) -> Tensor:
    """``steps`` steps of eps/steps, projected onto the eps-ball around ``x`` and the valid range."""
    if steps < 1:
        raise ValueError(f"I-FGSM steps={steps}; must be >= 1")
    eps = bounds.eps(eps_pixels)
    step = eps / steps
    lo, hi = torch.max(x - eps, bounds.low), torch.min(x + eps, bounds.high)
    adv = x.detach().clone()
    for _ in range(steps):
        adv = adv + step * _input_grad_sign(model, adv, y)
        adv = torch.max(torch.min(adv, hi), lo).detach()
    return adv


def stratified_subset(labels: np.ndarray, per_class: int | None, seed: int = 0) -> np.ndarray:
    """Positions of up to ``per_class`` samples of every class (seeded, sorted); all when None."""
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picks.append(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
    return np.sort(np.concatenate(picks)) if picks else np.arange(0)


@dataclass
class RobustnessResult:
    n: int
    clean_acc: float
    fgsm_acc: dict[float, float]
    ifgsm_acc: dict[float, float]


def evaluate_robustness(model: nn.Module, split: ImageSplit, pre: ModelPreprocess, data_config: dict, *,
                        eps: Sequence[float], steps: int = 10, batch_size: int = 256,
                        device: torch.device | str = "cpu") -> RobustnessResult:
    """Clean, FGSM and I-FGSM accuracy of ``model`` (eval mode, float32) on ``split``, per eps."""
    model = model.to(device).eval()
    bounds = InputBounds.from_data_config(data_config, device)
    n = clean = 0
    f_ok = {e: 0 for e in eps}
    i_ok = {e: 0 for e in eps}
    for raw, labels, _ in raw_loader(split, batch_size):
        x, y = pre(raw.to(device)).float(), labels.to(device)
        with torch.no_grad():
            clean += int((model(x).argmax(-1) == y).sum())
        for e in eps:
            with torch.no_grad():
                f_ok[e] += int((model(fgsm(model, x, y, e, bounds)).argmax(-1) == y).sum())
                i_ok[e] += int((model(ifgsm(model, x, y, e, bounds, steps)).argmax(-1) == y).sum())
        n += len(y)
    if n == 0:
        raise ValueError("robustness: the split is empty")
    return RobustnessResult(n, clean / n, {e: v / n for e, v in f_ok.items()}, {e: v / n for e, v in i_ok.items()})


@dataclass(frozen=True)
class ClusteringScores:
    """How well clusters match labels: V-measure with its chance level, and AMI (0 at chance)."""

    n: int
    v_measure: float
    v_chance: float  # mean V-measure of the clusters shuffled over the points (same sizes)
    ami: float  # adjusted mutual information


def clustering_scores(labels: np.ndarray, clusters: np.ndarray, *, permutations: int = 20,
                      seed: int = 0) -> ClusteringScores:
    """V-measure, its chance level (``permutations`` seeded shuffles of the cluster assignment) and AMI."""
    from sklearn.metrics import adjusted_mutual_info_score, v_measure_score

    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if labels.shape != clusters.shape or labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels and clusters must be equal-length, non-empty 1-D arrays; got shapes "
                         f"{labels.shape} and {clusters.shape}")
    rng = np.random.default_rng(seed)
    chance = [v_measure_score(labels, rng.permutation(clusters)) for _ in range(max(1, permutations))]
    return ClusteringScores(int(labels.size), float(v_measure_score(labels, clusters)), float(np.mean(chance)),
                            float(adjusted_mutual_info_score(labels, clusters)))


@torch.inference_mode()
def feature_clustering(model: nn.Module, split: ImageSplit, pre: ModelPreprocess, *, num_classes: int, seed: int = 0,
                       batch_size: int = 256, device: torch.device | str = "cpu") -> ClusteringScores:
    """k-means (k = num_classes, seeded) on the penultimate features, scored against the labels."""
    from sklearn.cluster import KMeans

    from zoo_study.transfer.loop import _forward

    model = model.to(device).eval()
    feats, labels = [], []
    for raw, y, _ in raw_loader(split, batch_size):
        _, f = _forward(model, pre(raw.to(device)), True)
        feats.append(f.float().flatten(1).cpu().numpy())
        labels.append(y.numpy())
    x = np.concatenate(feats)
    km = KMeans(n_clusters=min(num_classes, len(x)), n_init=3, random_state=seed).fit(x)
    return clustering_scores(np.concatenate(labels), km.labels_, seed=seed)
