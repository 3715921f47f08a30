"""Decoding an image file into the pixels a model looks at, with timm's own PIL operations.

Why a module of its own: the on-the-fly path (an ImageFolder split read by DataLoader workers) and the
decoded-image cache's builder must produce the very same pixels, so both call these functions: decode
as timm's dataset does (``Image.open(f).convert('RGB')``), then per geometry timm's eval resize and
torchvision's centre crop (:func:`render_all`), or the legacy raw square (:func:`raw_square`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from zoo_study.data.geometry import EvalGeometry, Geometry, RawGeometry, Views, distinct_geometries

__all__ = ["decode_rgb", "raw_square", "load_raw_image", "render", "render_all", "RenderLoader",
           "UNREADABLE_HINT"]

UNREADABLE_HINT = ("set data.on_bad_image = 'skip' (with the image cache on) to drop and count unreadable images "
                   "when the cache is built, or fix or remove the file")


def decode_rgb(path: str | Path):
    """Decode an image file as timm's dataset does: ``Image.open(f).convert('RGB')`` (CMYK, grayscale,
    palette and RGBA files all become RGB; the file's suffix is not trusted, PIL reads its header)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def raw_square(im, raw_size: int) -> np.ndarray:
    """An RGB PIL image -> uint8 [raw_size, raw_size, 3]: bicubic short-side resize, centre crop."""
    w, h = im.size
    s = raw_size / min(w, h)
    nw, nh = max(raw_size, round(w * s)), max(raw_size, round(h * s))
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - raw_size) // 2, (nh - raw_size) // 2
    im = im.crop((left, top, left + raw_size, top + raw_size))
    return np.asarray(im, dtype=np.uint8)


def _unreadable(path: str | Path, exc: BaseException) -> OSError:
    return OSError(f"unreadable image {str(path)!r}: {exc}; {UNREADABLE_HINT}")


def load_raw_image(path: str | Path, raw_size: int) -> torch.Tensor:
    """Decode an image file to uint8 [3, raw_size, raw_size] (short-side resize, centre crop)."""
    try:
        arr = raw_square(decode_rgb(path), raw_size).copy()
    except (OSError, SyntaxError, ValueError) as exc:  # truncated, corrupt or not an image
        raise _unreadable(path, exc) from exc
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


_PIL_MODES = {"nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC", "area": "BOX",
              "box": "BOX", "lanczos": "LANCZOS", "hamming": "HAMMING"}


def _resized_size(w: int, h: int, g: EvalGeometry) -> tuple[int, int]:
    """(new_w, new_h) of timm's eval resize for an image of w x h."""
    rh, rw = g.resize
    if rh == rw:  # torchvision Resize(int): the short side becomes rh, the long side is truncated
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = rh, int(rh * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)
    # timm ResizeKeepRatio(longest=0): scale so that the image covers the target, sides rounded
    ratio = min(h / rh, w / rw)
    return round(w / ratio), round(h / ratio)


def _resize(im, g: EvalGeometry):
    """timm's eval resize (torchvision returns the image unchanged when the size already matches)."""
    size = _resized_size(*im.size, g)
    return im if size == im.size else im.resize(size, getattr(Image, _PIL_MODES[g.interpolation]))


def _centre_crop(im, crop: tuple[int, int]) -> np.ndarray:
    """torchvision CenterCrop (zero padding when the crop is larger, else offsets round(diff / 2))."""
    nw, nh = im.size
    ch, cw = crop
    left = -((cw - nw) // 2) if cw > nw else int(round((nw - cw) / 2.0))
    top = -((ch - nh) // 2) if ch > nh else int(round((nh - ch) / 2.0))
    if (left, top, cw, ch) != (0, 0, nw, nh):
        im = im.crop((left, top, left + cw, top + ch))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def render(im, geometry: Geometry) -> np.ndarray:
    """A decoded RGB PIL image -> uint8 [3, H, W] at ``geometry``, with timm's (PIL) operations."""
    return render_all(im, [geometry])[0]


def render_all(im, geometries: Sequence[Geometry]) -> list[np.ndarray]:
    """:func:`render` for several geometries of one image; geometries sharing a resize share its work."""
    resized: dict[tuple, Any] = {}
    out = []
    for g in geometries:
        if isinstance(g, RawGeometry):
            out.append(raw_square(im, g.size).transpose(2, 0, 1))
            continue
        k = (_resized_size(*im.size, g), g.interpolation)
        if k not in resized:
            resized[k] = _resize(im, g)
        out.append(_centre_crop(resized[k], g.crop))
    return out


class RenderLoader:
    """An on-disk split's loader at model geometries: ``(path, raw_size) -> Views`` (or a plain tensor for
    one raw geometry), each geometry rendered from the decoded original as timm's eval transform does.

    Picklable (DataLoader workers receive it); ``raw_size`` is ignored (the geometries say the sizes)."""

    def __init__(self, geometries: Sequence[Geometry]):
        self.geometries = tuple(distinct_geometries(list(geometries)))
        self.plain = len(self.geometries) == 1 and isinstance(self.geometries[0], RawGeometry)

    def __call__(self, path: str | Path, raw_size: int = 0) -> Any:
        try:
            arrays = render_all(decode_rgb(path), self.geometries)
        except (OSError, SyntaxError, ValueError) as exc:
            raise _unreadable(path, exc) from exc
        tensors = {g: torch.from_numpy(np.ascontiguousarray(a)) for g, a in zip(self.geometries, arrays)}
        return next(iter(tensors.values())) if self.plain else Views(tensors)
