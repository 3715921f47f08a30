"""Transfer-time augmentation on raw uint8 batches (METHOD.md section 2).

Applied once to the raw batch, before each model's own resize/normalise, so the teacher, the frozen
student and the student all see the same augmented image. Vectorised over the batch: horizontal flip
(p 0.5), colour distortion (p 0.8: brightness, contrast, saturation factors in [1-s, 1+s]) and grayscale
(p 0.2), each decided per sample from a seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_GRAY = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


@dataclass
class TransferAugment:
    flip_p: float = 0.5
    color_p: float = 0.8
    gray_p: float = 0.2
    strength: float = 0.4

    def __call__(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [B,3,H,W] -> augmented uint8 [B,3,H,W]. Same generator state -> same result."""
        if raw.dtype != torch.uint8:
            raise TypeError(f"TransferAugment expects a uint8 batch, got {raw.dtype}")
        b = raw.shape[0]
        dev = raw.device

        gen_dev = generator.device if generator is not None else None

        def draw(*shape: int) -> torch.Tensor:  # on the generator's device (the batch's, in a transfer)
            return torch.rand(*shape, generator=generator, device=gen_dev).to(dev)

        x = raw.float() / 255.0
        flip = draw(b) < self.flip_p
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)

        color = (draw(b) < self.color_p).view(b, 1, 1, 1)
        s = self.strength
        bright = (1 - s + 2 * s * draw(b)).view(b, 1, 1, 1)
        contrast = (1 - s + 2 * s * draw(b)).view(b, 1, 1, 1)
        sat = (1 - s + 2 * s * draw(b)).view(b, 1, 1, 1)
        y = (x * bright).clamp(0, 1)
        m = _gray(y).mean(dim=(2, 3), keepdim=True)
        y = ((y - m) * contrast + m).clamp(0, 1)
        g = _gray(y)
        y = ((y - g) * sat + g).clamp(0, 1)
        x = torch.where(color, y, x)

        gray = (draw(b) < self.gray_p).view(b, 1, 1, 1)
        x = torch.where(gray, _gray(x).expand_as(x), x)
        return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)
