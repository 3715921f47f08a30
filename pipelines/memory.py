"""Per-model estimates of a transfer's accelerator memory, to size packs on a GPU (``ray.pack_gpu_memory_gb``).

Why: a pack trains one copy of its student per member on one device; how many copies fit depends on
the student's size and its activations at the batch size, which vary over a zoo by orders of magnitude
(a ViT-L student needs ~100x what a ResNet-18 does). The planner gives every packable transfer job a
:attr:`~pipelines.jobs.Job.pack_cost` and the runner keeps each pack's sum within the budget.

The estimate of one member (float32, the conservative case; autocast roughly halves the activations):

    weights + gradients + SGD momentum   3 x parameters x 4 bytes
    activations kept for backward        sum over leaf modules of their output sizes at the batch x 4 bytes

measured by building the model on PyTorch's ``meta`` device (shapes only, no memory, no weights) and
running one forward there with hooks. The shared teacher and frozen student are not in a member's cost:
leave headroom for them and the CUDA context when setting the budget (e.g. 80% of the card). Models
whose forward cannot run on ``meta`` fall back to 12 x their parameter bytes (said in the log).
Planning imports torch only when the budget is set.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any, Sequence

__all__ = ["train_memory_bytes", "model_memory_bytes", "GB"]

LOG = logging.getLogger(__name__)
GB = 1e9
_FALLBACK_FACTOR = 12.0  # x parameter bytes when the meta forward fails


@functools.lru_cache(maxsize=256)
def _estimate(arch: str, kwargs_json: str, num_classes: int, input_size: tuple[int, ...] | None,
              batch: int) -> float:
    import torch

    import zoo_study  # noqa: F401  (torchvision compat before timm)
    import timm

    import zoo_study.zoo.archs  # noqa: F401  (the embedded zoo's own architectures)

    kwargs = json.loads(kwargs_json)
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    state_bytes = 3.0 * 4 * n_params
    if input_size is None:
        input_size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    total = [0]

    def hook(_m, _inp, out) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * 4

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.device("meta"):
            model.train()(torch.empty(batch, *input_size, device="meta"))
    except Exception as exc:  # noqa: BLE001 - an op without a meta kernel: fall back to the parameter rule
        LOG.info("memory estimate of %s: forward on the meta device failed (%s); using %gx its parameter bytes",
                 arch, exc, _FALLBACK_FACTOR)
        return _FALLBACK_FACTOR * 4 * n_params
    finally:
        for h in handles:
            h.remove()
    return state_bytes + float(total[0])


def train_memory_bytes(arch: str, model_kwargs: dict[str, Any] | None, num_classes: int,
                       input_size: Sequence[int] | None, batch: int) -> float:
    """Estimated bytes to train one copy of ``arch`` at ``batch`` (see the module docstring)."""
    if batch < 1 or num_classes < 1:
        raise ValueError(f"batch and num_classes must be >= 1, got {batch} and {num_classes}")
    size = tuple(int(x) for x in input_size) if input_size else None
    return _estimate(arch, json.dumps(model_kwargs or {}, sort_keys=True), int(num_classes), size, int(batch))


def model_memory_bytes(kind: str, spec: dict[str, Any], num_classes: int, batch: int) -> float:
    """:func:`train_memory_bytes` of a study model (a :class:`~pipelines.stages.ModelPlan`'s kind and spec:
    an embedded recipe, a model reference with its timm arch, or a noise-floor arch)."""
    if kind == "adapted":  # the base model's size: adapting keeps the architecture
        return model_memory_bytes(spec["base"]["kind"], spec["base"]["spec"], num_classes, batch)
    if kind == "embedded":
        return train_memory_bytes(spec["arch"], spec.get("model_kwargs"), num_classes,
                                  [3, spec["input_size"], spec["input_size"]], batch)
    if kind == "random":
        dc = spec.get("data_config") or {}
        return train_memory_bytes(spec["arch"], spec.get("model_kwargs"), num_classes, dc.get("input_size"), batch)
    return train_memory_bytes(spec["arch"], None, num_classes, None, batch)
