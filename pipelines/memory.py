"""Per-model estimates of a transfer's accelerator memory, to size packs on a GPU (``ray.pack_gpu_memory_gb``).

Why: a pack trains one copy of its student per member on one device; how many copies fit depends on
the student's size and its activations at the batch size, which vary over a zoo by orders of magnitude
(a ViT-L student needs ~100x what a ResNet-18 does). The planner gives every packable transfer job a
:class:`MemoryEstimate` (:attr:`~pipelines.jobs.Job.pack_cost` and friends) and the runner keeps each
pack's :func:`pack_bytes` within the budget.

One member (float32, the conservative case; autocast roughly halves the activations):

    state        weights + gradients + SGD momentum       3 x parameters x 4 bytes
    activations  kept for backward                        sum over leaf modules of their output sizes x 4 bytes

A pack's members step one after another on the shared batch (``zoo_study.transfer.phase``: forward,
backward, update, then the next member), so their states are all resident but only one member's
activations are alive at a time. The shared teacher runs once per batch under ``no_grad``:

    pack = shared teacher forward + sum of the members' states + the largest member's activations
    teacher forward = its weights (parameters x 4 bytes) + its largest leaf output x 2 (input and output alive)

Shapes come from building the model on PyTorch's ``meta`` device (no memory, no weights) and running one
forward there with hooks. Models whose forward cannot run on ``meta`` fall back to 12 x their parameter
bytes (3 of state, 9 of activations; said in the log). Leave headroom for the CUDA context and the
allocator's fragmentation (the default budget is 80% of the card). Planning imports torch only for GPU jobs.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from zoo_study.zoo.study_model import RandomModel, StudyModel

__all__ = ["GB", "MemoryEstimate", "model_memory", "model_memory_bytes", "pack_bytes", "train_memory_bytes"]

LOG = logging.getLogger(__name__)
GB = 1e9
_FALLBACK_FACTOR = 12.0  # x parameter bytes when the meta forward fails
_STATE_FACTOR = 3.0  # weights, gradients, momentum


@dataclass(frozen=True)
class MemoryEstimate:
    """One model at one batch size, in bytes (see the module docstring)."""

    weights: float  # parameters x 4
    activations: float  # every leaf output at the batch x 4 (what training keeps for backward)
    peak_output: float  # the largest single leaf output at the batch x 4

    @property
    def state(self) -> float:
        """Weights, gradients and momentum of a trained copy."""
        return _STATE_FACTOR * self.weights

    @property
    def train(self) -> float:
        """Training one copy alone: its state plus its activations."""
        return self.state + self.activations

    @property
    def forward(self) -> float:
        """A ``no_grad`` forward (a shared teacher): weights plus the largest layer's input and output."""
        return self.weights + 2.0 * self.peak_output


def pack_bytes(members: Iterable[tuple[float, float]], shared: float = 0.0) -> float:
    """Memory of a pack whose members (``(train bytes, activation bytes)`` each) step one after another:
    ``shared`` once, every member's state (train - activations), and the largest member's activations."""
    members = list(members)
    if not members:
        return float(shared)
    return float(shared) + sum(t - a for t, a in members) + max(a for _, a in members)


@functools.lru_cache(maxsize=256)
def _estimate(arch: str, kwargs_json: str, num_classes: int, input_size: tuple[int, ...] | None,
              batch: int) -> MemoryEstimate:
    import torch

    import zoo_study  # noqa: F401  (torchvision compat before timm)
    import timm

    import zoo_study.zoo.archs  # noqa: F401  (the embedded zoo's own architectures)

    kwargs = json.loads(kwargs_json)
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    weights = 4.0 * sum(p.numel() for p in model.parameters())
    if input_size is None:
        input_size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    sizes: list[int] = []

    def hook(_m, _inp, out) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                sizes.append(t.numel() * 4)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.device("meta"):
            model.train()(torch.empty(batch, *input_size, device="meta"))
    except Exception as exc:  # noqa: BLE001 - an op without a meta kernel: fall back to the parameter rule
        LOG.info("memory estimate of %s: forward on the meta device failed (%s); using %gx its parameter bytes",
                 arch, exc, _FALLBACK_FACTOR)
        act = (_FALLBACK_FACTOR - _STATE_FACTOR) * weights
        return MemoryEstimate(weights, act, act / 2)
    finally:
        for h in handles:
            h.remove()
    return MemoryEstimate(weights, float(sum(sizes)), float(max(sizes, default=0)))


def model_memory(model: StudyModel, num_classes: int, batch: int) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of a study model at ``batch`` (its architecture, kwargs and input size:
    :meth:`StudyModel.arch_args`)."""
    if batch < 1 or num_classes < 1:
        raise ValueError(f"batch and num_classes must be >= 1, got {batch} and {num_classes}")
    arch, kwargs, size = model.arch_args()
    size = tuple(int(x) for x in size) if size else None
    return _estimate(arch, json.dumps(kwargs or {}, sort_keys=True), int(num_classes), size, int(batch))


def train_memory_bytes(arch: str, model_kwargs: dict[str, Any] | None, num_classes: int,
                       input_size: Sequence[int] | None, batch: int) -> float:
    """Estimated bytes to train one copy of ``arch`` alone at ``batch`` (state plus activations)."""
    model = RandomModel(arch, {"arch": arch, "model_kwargs": model_kwargs, "data_config": {"input_size": input_size}})
    return model_memory(model, num_classes, batch).train


def model_memory_bytes(model: StudyModel, num_classes: int, batch: int) -> float:
    """:attr:`MemoryEstimate.train` of a study model (training one copy alone)."""
    return model_memory(model, num_classes, batch).train
