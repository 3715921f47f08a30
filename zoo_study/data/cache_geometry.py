"""What the decoded-image cache stores for a model: its eval geometry, rendered with timm's PIL operations.

Why a module of its own: which pixels are cached decides whether a cached input is bit for bit timm's
input, so the geometry types and the rendering are kept apart from the build and read machinery of
:mod:`zoo_study.data.cache` (which re-exports every name here).

Geometry (what is stored). timm's eval transform is: resize the short side to
``floor(img_size / crop_pct)`` with the model's interpolation (PIL, antialiased), centre-crop
``img_size``, ``ToTensor``, ``Normalize``. Everything before ``ToTensor`` depends only on the
:class:`~zoo_study.data.preprocess.EvalGeometry` (resize, crop, interpolation), not on mean/std. So the
cache stores, per split, **one uint8 array per distinct geometry among the requesting models' data
configs**, each produced from the decoded original image with exactly timm's PIL operations; a model's
input is then that array's batch divided by 255 and normalised (:meth:`ModelPreprocess.normalize`), bit
for bit timm's input. No image is ever upsampled from a smaller cached copy or resampled twice: a
384-pixel model reads a 384 crop made from the original JPEG, a 224/0.95 model its own 235 -> 224 crop.
Zoo models share few geometries (224/0.875 bicubic covers most of timm's ImageNet models), so a job with
a student and a teacher typically needs one or two arrays. A lower-storage alternative (one large square
per split, resampled per model on the fly) is exactly what the lazy path does and what loses accuracy
on real photographs; it is still available as ``geometry='raw'`` (:class:`RawGeometry`): the lazy
path's ``raw_size`` squares, pixel-identical to :func:`~zoo_study.data.imagefolder.load_raw_image`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np

from zoo_study.data.preprocess import EvalGeometry, ModelPreprocess

__all__ = ["RawGeometry", "EvalGeometry", "Geometry", "geometry_of", "distinct_geometries", "render", "render_all"]


@dataclass(frozen=True)
class RawGeometry:
    """The lazy path's raw square: bicubic short-side resize to ``size`` and centre crop (legacy)."""

    size: int

    @property
    def key(self) -> str:
        return f"raw{self.size}"

    @property
    def crop(self) -> tuple[int, int]:
        return (self.size, self.size)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "raw", "size": self.size}


Geometry = Union[EvalGeometry, RawGeometry]


def geometry_of(config: Mapping[str, Any] | ModelPreprocess | EvalGeometry | RawGeometry) -> Geometry:
    """The cached geometry a model needs, from its timm data config, a ModelPreprocess or a geometry."""
    if isinstance(config, (EvalGeometry, RawGeometry)):
        return config
    pre = config if isinstance(config, ModelPreprocess) else ModelPreprocess.from_data_config(config)
    return pre.geometry


def distinct_geometries(configs: Sequence[Any]) -> list[Geometry]:
    """The distinct geometries of ``configs`` (data configs, ModelPreprocess or geometries), in order."""
    out: list[Geometry] = []
    for c in configs:
        g = geometry_of(c)
        if g not in out:
            out.append(g)
    return out


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
    from PIL import Image

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
    from zoo_study.data.imagefolder import raw_square

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
