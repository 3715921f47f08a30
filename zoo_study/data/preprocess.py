"""Per-model preprocessing: one raw batch -> the input each model expects (its timm data config)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "area": "area"}


@dataclass(frozen=True)
class EvalGeometry:
    """The pixel geometry of timm's eval transform (``crop_mode='center'``), without the normalisation.

    ``resize`` is timm's ``scale_size`` (h, w) = floor(input / crop_pct): a square ``resize`` resizes the
    image's short side to it (torchvision ``Resize(int)``), a non-square one keeps the aspect ratio so the
    image covers it (timm ``ResizeKeepRatio``). ``crop`` (h, w) is the centre crop, i.e. the model input
    size. Two models with equal geometries see identical uint8 pixels, whatever their mean/std: the
    decoded-image cache stores one array per distinct geometry (:mod:`zoo_study.data.cache`).
    """

    resize: tuple[int, int]
    crop: tuple[int, int]
    interpolation: str = "bicubic"

    @property
    def key(self) -> str:
        """A file-name-safe name, e.g. ``r256-c224-bicubic`` (``r256x292-c224x256-...`` if not square)."""
        def side(v: tuple[int, int]) -> str:
            return str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"

        return f"r{side(self.resize)}-c{side(self.crop)}-{self.interpolation}"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "eval", "resize": list(self.resize), "crop": list(self.crop),
                "interpolation": self.interpolation}


@dataclass(frozen=True)
class ModelPreprocess:
    """Resize + centre crop + normalise, as timm's eval transform does, but on whole tensor batches.

    timm's eval pipeline resizes the short side to ``floor(size / crop_pct)`` and centre-crops ``size``
    (offsets rounded as torchvision's ``CenterCrop`` does). Raw batches are square [B, 3, R, R], so the
    same steps are one ``interpolate`` (antialiased when shrinking, like torchvision's ``Resize``) and one
    slice, which run on the GPU and let a teacher and a student take the very same (augmented) batch.
    Bicubic results are clamped to [0, 1], as timm's usual PIL path does.
    """

    input_size: tuple[int, int, int]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.interpolation not in _MODES:
            raise ValueError(f"interpolation {self.interpolation!r} is not supported; valid: {sorted(_MODES)}")
        if not (0.0 < self.crop_pct <= 1.0):
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if len(self.input_size) != 3 or self.input_size[0] != 3:
            raise ValueError(f"input_size must be (3, H, W), got {self.input_size}")

    @classmethod
    def from_data_config(cls, cfg: Mapping[str, Any]) -> "ModelPreprocess":
        """Build from a timm data config (``timm.data.resolve_data_config`` output or a catalog row)."""
        interp = str(cfg.get("interpolation", "bilinear"))
        if interp not in _MODES:  # timm also knows 'random' etc. for training; fall back sensibly
            interp = "bicubic" if "cubic" in interp else "bilinear"
        return cls(
            input_size=tuple(int(v) for v in cfg["input_size"]),
            crop_pct=float(cfg.get("crop_pct", 1.0) or 1.0),
            interpolation=interp,
            mean=tuple(float(v) for v in cfg.get("mean", cls.mean)),
            std=tuple(float(v) for v in cfg.get("std", cls.std)),
        )

    @property
    def resize_size(self) -> tuple[int, int]:
        """timm's eval ``scale_size``: each side of ``input_size`` divided by ``crop_pct``, floored."""
        _, h, w = self.input_size
        return int(math.floor(h / self.crop_pct)), int(math.floor(w / self.crop_pct))

    @property
    def geometry(self) -> EvalGeometry:
        """The uint8 pixels this model looks at before normalisation (the decoded-image cache's key)."""
        _, h, w = self.input_size
        return EvalGeometry(resize=self.resize_size, crop=(h, w), interpolation=self.interpolation)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in [0, 1]) [B,3,H,W] already at this model's geometry -> normalised float32.

        The same operations, in the same order, as timm's ``ToTensor`` + ``Normalize`` (divide by 255,
        subtract the mean, divide by the std), so a cached uint8 crop gives timm's input bit for bit.
        """
        mean = torch.tensor(self.mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
        if x.dtype == torch.uint8:  # a fresh float tensor: normalise in place (half the memory traffic)
            return x.float().div_(255.0).sub_(mean).div_(std).contiguous()
        x = x.float()
        return ((x - mean.to(x.dtype)) / std.to(x.dtype)).contiguous()

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,R,R] (or float in [0,1]) -> normalised float32 [B,3,H,W] on the same device.

        ``raw`` may also be a :class:`zoo_study.data.cache.Views` batch (a cached split read at several
        geometries): the view at this model's :attr:`geometry` is only normalised, no resampling.
        """
        view_for = getattr(raw, "view_for", None)
        if view_for is not None:
            raw, exact = view_for(self.geometry)
            if exact:
                return self.normalize(raw)
        if raw.ndim != 4 or raw.shape[1] != 3:
            raise ValueError(f"expected a raw batch [B, 3, H, W], got shape {tuple(raw.shape)}")
        x = raw.float().div_(255.0) if raw.dtype == torch.uint8 else raw.float()
        if x.shape[-2] != x.shape[-1]:
            raise ValueError(f"raw batches are square [B, 3, R, R], got {tuple(raw.shape)}")
        return self.normalize(_resize_crop(x, self.geometry))


def _resize_crop(x: torch.Tensor, geometry: EvalGeometry) -> torch.Tensor:
    """A square float batch in [0, 1] at ``geometry``: timm's eval resize, then torchvision's centre crop.

    timm resizes the short side to scale_size (square target) or, for a non-square target, keeps the
    aspect ratio so that both sides cover it: a square raw image becomes max(scale_h, scale_w)."""
    h, w = geometry.crop
    scale = max(geometry.resize)
    if x.shape[-2:] != (scale, scale):
        mode = _MODES[geometry.interpolation]
        kwargs: dict[str, Any] = {"mode": mode}
        if mode in ("bilinear", "bicubic"):
            kwargs.update(align_corners=False, antialias=scale < x.shape[-1])
        x = F.interpolate(x, size=(scale, scale), **kwargs)
        if mode == "bicubic":
            x = x.clamp_(0.0, 1.0)
    # torchvision's CenterCrop: offset int(round(diff / 2)) (Python's round, half to even)
    top = int(round((x.shape[-2] - h) / 2.0))
    left = int(round((x.shape[-1] - w) / 2.0))
    return x[..., top : top + h, left : left + w]


def preprocess_from_row(row: Mapping[str, Any]) -> ModelPreprocess:
    """From a zoo catalog row (MODEL_SCHEMA columns)."""
    return ModelPreprocess.from_data_config(row)


def same_batch_for_models(raw: torch.Tensor, preprocessors: Sequence[ModelPreprocess]) -> list[torch.Tensor]:
    """Turn one raw batch into each model's input: teacher and student see the same image."""
    return [p(raw) for p in preprocessors]
