"""Device and precision choice: the one place that decides how a device runs models.

CUDA: autocast in bf16 where the GPU supports it natively (Ampere and later), else fp16 with a gradient
scaler (bf16 is emulated and slow on V100 / T4, and fp16 gradients underflow unscaled); cuDNN autotuning
and TF32 matmuls on. Other devices: unchanged (no autocast unless asked, then bf16; no scaler), so CPU
results stay bitwise reproducible. Evaluation logits are fp32 even under autocast (:func:`fp32_logits`):
bf16 logits flip near-ties of the top-1.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager

import torch
from torch import Tensor, nn

__all__ = ["Precision", "choose_precision", "enable_fast_kernels", "fp32_logits"]


@dataclass(frozen=True)
class Precision:
    """How a device runs models: the autocast dtype (None: full fp32), whether fp16's gradients need a
    :class:`torch.amp.GradScaler`, and whether cuDNN autotuning and TF32 are switched on."""

    device_type: str
    amp_dtype: torch.dtype | None
    grad_scaler: bool = False
    fast_kernels: bool = False

    def autocast(self) -> ContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.amp_dtype)


def choose_precision(device: str | torch.device, amp: bool | None = None) -> Precision:
    """The precision of ``device``: ``amp`` None means autocast on CUDA only; False turns it off."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return Precision(dev.type, torch.bfloat16 if amp else None)
    if amp is False:
        return Precision("cuda", None, fast_kernels=True)
    if torch.cuda.is_bf16_supported():
        return Precision("cuda", torch.bfloat16, fast_kernels=True)
    return Precision("cuda", torch.float16, grad_scaler=True, fast_kernels=True)


def enable_fast_kernels() -> None:
    """cuDNN autotuning (fixed input shapes within a run) and TF32 for fp32 matmuls and convolutions: what
    autocast leaves in fp32 (objectives, fp32 heads) runs on tensor cores."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def fp32_logits(model: nn.Module, x: Tensor, precision: Precision) -> Tensor:
    """fp32 logits of an evaluation forward. Under autocast the body runs in the autocast dtype and timm's
    head in fp32 on fp32 features; without autocast ``model(x)``, exactly as before."""
    if precision.amp_dtype is None:
        return model(x).float()
    with precision.autocast():
        if not hasattr(model, "forward_head"):
            return model(x).float()
        f = model.forward_features(x)
    with torch.autocast(device_type=precision.device_type, enabled=False):
        return model.forward_head(f.float()).float()
